"""The query side of an index: the model's text tower and its tokenizer, stored in the index folder.

``index`` traces ``FrozenInTime.encode_text`` (text tower, pooling and projection) to
TorchScript and saves it with the tokenizer's files and the DataModule's tokenizer settings,
checksummed in the manifest. A query then loads a small file with torch alone: it never
reads the training checkpoint, nor imports Lightning or the Hugging Face model code (whose
imports take longer than torch's own), and the tokenizer loads as the generic fast tokenizer
(``AutoTokenizer``'s model tables take a second to import). Before it is kept, the stored
pair is checked against the model on one text and on a padded batch: the same tokens, and
embeddings equal to the model's. The trace runs without TorchScript's optimising executor,
so it computes exactly what the model does, with no warm-up on the first query.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import numpy as np
import torch

from ..atomic import write_atomically
from .store import DamagedIndexError, Manifest

PathLike = Union[str, os.PathLike]
TEXT_TOWER = "text_tower.pt"
TOKENIZER = "tokenizer"
# The trace may differ from the model only by float noise (it checks: a wrong trace differs by far more).
TRACE_TOLERANCE = 1e-5
_PROBES = (["a white circle moving to the left on a blue background", "a dog"],   # padded: the general path
           ["something red"])                                                      # one query, no padding


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _tokenize(tokenizer: Any, settings: dict, texts: Sequence[str]) -> dict[str, torch.Tensor]:
    """Tokens of ``texts`` with the DataModule's settings (its collator does the call)."""
    from ..data.collate import TextVideoCollator

    return TextVideoCollator(tokenizer, max_length=settings["max_length"], padding=settings["padding"]).tokenize(texts)


def save_text_side(folder: PathLike, model: torch.nn.Module, tokenizer: Any, settings: dict) -> dict[str, str]:
    """Write the traced text tower and the tokenizer into ``folder``; returns {relative path: sha256}.

    ``settings``: the DataModule's ``max_length`` and ``padding``. The model stays as it was.
    """
    folder = Path(folder)
    _save_tokenizer(folder, tokenizer)
    stored = load_tokenizer(folder)
    flags, training = [p.requires_grad for p in model.parameters()], model.training
    model.eval().requires_grad_(False)  # the weights enter the trace as constants: only the text side's are kept
    try:
        example = _tokenize(tokenizer, settings, _PROBES[0])
        with warnings.catch_warnings(), torch.no_grad(), torch.jit.optimized_execution(False):
            warnings.simplefilter("ignore")  # TracerWarnings on the text model's shape checks, the deprecation note
            traced = torch.jit.trace(lambda ids, mask: model.encode_text(ids, mask),
                                     (example["input_ids"], example["attention_mask"]), check_trace=False)
            for texts in _PROBES:
                tokens, again = _tokenize(tokenizer, settings, texts), _tokenize(stored, settings, texts)
                if any(not torch.equal(tokens[key], again[key]) for key in tokens):
                    raise RuntimeError(f"the tokenizer saved for queries ({type(stored).__name__}) does not give the "
                                       f"tokens of {type(tokenizer).__name__}: please report it")
                want = model.encode_text(tokens["input_ids"], tokens["attention_mask"])
                difference = float((want - traced(tokens["input_ids"], tokens["attention_mask"])).abs().max())
                if not difference <= TRACE_TOLERANCE:
                    raise RuntimeError(f"the text tower traced for queries differs from the model by {difference:.2e} "
                                       "on a probe text: this text model cannot be traced as it is; please report it")
            write_atomically(folder / TEXT_TOWER, lambda handle: torch.jit.save(traced, handle))
    finally:
        for param, flag in zip(model.parameters(), flags):
            param.requires_grad_(flag)
        model.train(training)
    files = [folder / TEXT_TOWER, *sorted(p for p in (folder / TOKENIZER).rglob("*") if p.is_file())]
    return {p.relative_to(folder).as_posix(): sha256(p) for p in files}


def load_tokenizer(folder: Path) -> Any:
    """The stored tokenizer, as the generic fast tokenizer (its files say all it does)."""
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast.from_pretrained(str(folder / TOKENIZER))


def _save_tokenizer(folder: Path, tokenizer: Any) -> None:
    """The tokenizer's files as one folder, replaced whole."""
    staging = Path(tempfile.mkdtemp(dir=folder, prefix=f".{TOKENIZER}."))
    try:
        tokenizer.save_pretrained(staging)
        shutil.rmtree(folder / TOKENIZER, ignore_errors=True)
        os.replace(staging, folder / TOKENIZER)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def damaged_file(folder: PathLike, files: dict[str, str]) -> Optional[str]:
    """The first of ``files`` that is missing or differs from its sha256, described; None when all are intact."""
    if TEXT_TOWER not in files:
        return f"{TEXT_TOWER} was never written (the first `index` run stopped early)"
    for name, digest in files.items():
        path = Path(folder) / name
        if not path.is_file():
            return f"{name} is missing"
        if sha256(path) != digest:
            return f"{name} changed since the index was built"
    return None


class QueryEncoder:
    """Texts -> L2-normalised embeddings, from the text side an index folder stores.

    Each file is checked against the manifest's sha256 first: a damaged or replaced file is
    refused, naming the command that rebuilds it.
    """

    def __init__(self, folder: PathLike, manifest: Manifest):
        folder = Path(folder)
        problem = damaged_file(folder, manifest.files)
        if problem is not None:
            raise DamagedIndexError(f"index '{folder}' is damaged: {problem}; rebuild it: "
                                    f"{manifest.repair_command(folder)}")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # TorchScript's deprecation note, on every load
            self._tower = torch.jit.load(str(folder / TEXT_TOWER), map_location="cpu")
        self.tokenizer = load_tokenizer(folder)
        self.settings = manifest.tokenizer
        self.embedding_dim = manifest.embedding_dim

    @torch.inference_mode()
    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """L2-normalised text embeddings [len(texts), D] (float32)."""
        if not texts:
            return np.zeros((0, self.embedding_dim), np.float32)
        tokens = _tokenize(self.tokenizer, self.settings, list(texts))
        with torch.jit.optimized_execution(False):
            embedded = self._tower(tokens["input_ids"], tokens["attention_mask"])
        return torch.nn.functional.normalize(embedded.float(), dim=-1).numpy()
