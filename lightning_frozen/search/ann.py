"""The FAISS index over an index folder's embeddings, rebuilt from the SQLite rows.

Exact inner product (``IndexFlatIP``) up to ``APPROXIMATE_ABOVE`` windows; above it an
inverted-file index (``IndexIVFFlat``), whose centroids are trained afresh at each
rebuild, so they never drift as videos come and go (HNSW could not delete entries at all).
Vectors are L2-normalised, so inner product is cosine similarity.

Files (all replaced atomically, stamped with the SQLite ``generation`` they reflect):
``faiss.index``, ``vectors.npy`` (the embeddings in FAISS order, memory-mapped by search
for exact rescoring and per-video aggregation), ``window_ids.npy``, ``video_ids.npy`` and
``faiss.json``.
"""
from __future__ import annotations

import json
import math
import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

import numpy as np

from ..atomic import write_atomically
from . import store

PathLike = Union[str, os.PathLike]

# Exact search grows linearly with the windows; above this many the IVF index answers a query
# well within its budget (figures: docs/search.md, benchmarks/search.py).
APPROXIMATE_ABOVE = 200_000
# Probes scanned per query; with nlist = 4 sqrt(N) this is about 2% of the lists.
IVF_PROBE_SHARE = 0.02
IVF_TRAIN_PER_LIST = 40
STAMP = "faiss.json"
FILES = ("faiss.index", "vectors.npy", "window_ids.npy", "video_ids.npy", STAMP)


@dataclass
class AnnIndex:
    """A loaded FAISS index and the arrays that map its positions back to rows."""

    faiss_index: object
    vectors: np.ndarray        # [N, D] float32, FAISS order
    window_ids: np.ndarray     # [N] int64
    video_ids: np.ndarray      # [N] int64
    kind: str                  # "flat" or "ivf"
    generation: int


def make_faiss_index(vectors: np.ndarray, approximate_above: int = APPROXIMATE_ABOVE, seed: int = 0):
    """(faiss index holding ``vectors``, kind): flat up to ``approximate_above`` rows, else IVF."""
    import faiss

    count, dim = vectors.shape
    if count <= approximate_above:
        index = faiss.IndexFlatIP(dim)
        index.add(vectors)
        return index, "flat"
    nlist = int(4 * math.sqrt(count))
    quantizer = faiss.IndexFlatIP(dim)
    index = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
    sample = np.random.default_rng(seed).choice(count, min(count, nlist * IVF_TRAIN_PER_LIST), replace=False)
    index.cp.seed = seed
    index.train(vectors[np.sort(sample)])
    index.add(vectors)
    index.nprobe = max(1, round(nlist * IVF_PROBE_SHARE))
    return index, "ivf"


def rebuild(folder: PathLike, db: sqlite3.Connection, dim: int, approximate_above: int = APPROXIMATE_ABOVE) -> AnnIndex:
    """Build the FAISS index from the rows and save it with the arrays search needs."""
    import faiss

    folder = Path(folder)
    built_from = store.generation(db)
    window_ids, video_ids, vectors = store.load_embeddings(db, dim)
    index, kind = make_faiss_index(vectors, approximate_above)
    # Each file whole or not at all, the stamp last: a reader never sees a stamp over a half-written index.
    write_atomically(folder / "faiss.index",
                     lambda handle: faiss.write_index(index, faiss.PyCallbackIOWriter(handle.write)))
    for name, array in (("vectors", vectors), ("window_ids", window_ids), ("video_ids", video_ids)):
        write_atomically(folder / f"{name}.npy", lambda handle, array=array: np.save(handle, array))
    stamp = {"generation": built_from, "kind": kind, "count": int(len(vectors)), "nprobe": getattr(index, "nprobe", 0)}
    write_atomically(folder / STAMP, lambda handle: handle.write(json.dumps(stamp).encode()))
    return AnnIndex(index, vectors, window_ids, video_ids, kind, built_from)


def load(folder: PathLike, db: sqlite3.Connection, dim: int, approximate_above: int = APPROXIMATE_ABOVE) -> AnnIndex:
    """For the writer (`index`): the saved FAISS index, rebuilt and saved when the rows changed since."""
    saved = _read_saved(Path(folder), store.generation(db))
    return saved if saved is not None else rebuild(folder, db, dim, approximate_above)


def open_for_queries(folder: PathLike, db: sqlite3.Connection, dim: int) -> tuple[AnnIndex, Optional[str]]:
    """For readers: (the saved FAISS index, None), or when it is missing, damaged or older than the
    rows, (one built in memory from the rows, what was wrong). Readers never write the folder."""
    folder = Path(folder)
    saved = _read_saved(folder, store.generation(db))
    if saved is not None:
        return saved, None
    window_ids, video_ids, vectors = store.load_embeddings(db, dim)
    index, kind = make_faiss_index(vectors)
    return AnnIndex(index, vectors, window_ids, video_ids, kind, store.generation(db)), _what_is_wrong(folder, db)


def _what_is_wrong(folder: Path, db: sqlite3.Connection) -> str:
    if not all((folder / name).is_file() for name in FILES):
        return "missing"
    try:
        stale = json.loads((folder / STAMP).read_text())["generation"] != store.generation(db)
    except (OSError, ValueError, KeyError, TypeError):
        stale = False
    return "older than index.sqlite" if stale else "damaged"


def _read_saved(folder: Path, generation: int) -> Optional[AnnIndex]:
    """The saved index if every file is there, readable and stamped with ``generation``; else None."""
    import faiss

    try:
        stamp = json.loads((folder / STAMP).read_text())
        if stamp["generation"] != generation:
            return None
        index = faiss.read_index(str(folder / "faiss.index"))
        if stamp["kind"] == "ivf":
            index.nprobe = stamp["nprobe"]
        arrays = {name: np.load(folder / f"{name}.npy", mmap_mode="r")
                  for name in ("vectors", "window_ids", "video_ids")}
    except (OSError, ValueError, KeyError, RuntimeError):  # missing, truncated, not what it says (FAISS: RuntimeError)
        return None
    if not len(arrays["vectors"]) == len(arrays["window_ids"]) == len(arrays["video_ids"]) == index.ntotal:
        return None
    return AnnIndex(index, arrays["vectors"], np.asarray(arrays["window_ids"]), np.asarray(arrays["video_ids"]),
                    stamp["kind"], stamp["generation"])
