"""Text tower: any Hugging Face encoder, by hub id or local directory.

``build_text_model`` builds the architecture only (its config is read, no weights);
``pretrained_text_weights`` reads the weights, which ``create_model`` then loads. Nothing
downloads unless the user asks for pretrained weights by hub id; offline, that fails once
with an error that says how to point at a local directory instead.
"""
from __future__ import annotations

import contextlib
import logging
from typing import Any, Iterator

from torch import Tensor, nn

from ..tokenizer import is_local, offline_hint, resolve_name_or_path

log = logging.getLogger(__name__)

# Architectures the published checkpoints use, buildable without any download so that a
# published checkpoint that carries the text weights works offline.
_KNOWN_CONFIGS = {
    "distilbert-base-uncased": "DistilBertConfig",
    "distilbert/distilbert-base-uncased": "DistilBertConfig",
    "bert-base-uncased": "BertConfig",
    "google-bert/bert-base-uncased": "BertConfig",
}


def build_text_config(name_or_path: str, overrides: dict[str, Any] | None = None):
    """The encoder's config, from a directory, the hub cache, or a known default architecture."""
    import transformers

    overrides = dict(overrides or {})
    name_or_path = resolve_name_or_path(name_or_path)
    try:
        return transformers.AutoConfig.from_pretrained(name_or_path, **overrides)
    except OSError as err:
        if name_or_path in _KNOWN_CONFIGS and not is_local(name_or_path):
            log.info("building %s from its default architecture (no hub access)", name_or_path)
            return getattr(transformers, _KNOWN_CONFIGS[name_or_path])(**overrides)
        raise OSError(offline_hint(name_or_path, "config")) from err


def _without_pooler(model: nn.Module) -> nn.Module:
    # Only the token states are used; an unused pooler would make DDP fail on parameters
    # without gradients.
    if getattr(model, "pooler", None) is not None:
        model.pooler = None
    return model


def build_text_model(name_or_path: str, overrides: dict[str, Any] | None = None) -> nn.Module:
    """The encoder's architecture with freshly initialised weights (no weight file is read)."""
    import transformers

    return _without_pooler(transformers.AutoModel.from_config(build_text_config(name_or_path, overrides)))


def pretrained_text_weights(name_or_path: str, overrides: dict[str, Any] | None = None) -> dict[str, Tensor]:
    """The encoder's pretrained weights, keyed like ``build_text_model``'s state dict."""
    import transformers

    name_or_path = resolve_name_or_path(name_or_path)
    try:
        with quiet_transformers():
            model = transformers.AutoModel.from_pretrained(name_or_path, **(overrides or {}))
    except OSError as err:
        raise OSError(offline_hint(name_or_path, "pretrained weights")) from err
    return _without_pooler(model).state_dict()


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """No progress bar and no LOAD REPORT while reading weights.

    The report lists the layers that ``config_overrides`` cut away as "unexpected"; the
    caller loads the result strictly, so a real mismatch still fails, by name.
    """
    from transformers.utils import logging as hf_logging

    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def transformer_layers(text_model: nn.Module) -> nn.ModuleList:
    """The list of transformer layers of a BERT-family or DistilBERT encoder."""
    for path in ("encoder.layer", "transformer.layer", "encoder.layers", "layers"):
        module: Any = text_model
        for part in path.split("."):
            module = getattr(module, part, None)
            if module is None:
                break
        if isinstance(module, nn.ModuleList):
            return module
    raise TypeError(f"cannot find the transformer layers of {type(text_model).__name__}")
