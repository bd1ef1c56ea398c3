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
from typing import Union

import numpy as np

from ..atomic import write_atomically
from . import store

PathLike = Union[str, os.PathLike]

# Measured with benchmarks/search.py on the 2-core CPU machine (128-d, one thread): exact
# search of one query takes about 4 ms at 100k windows and grows linearly (about 40 ms at 1M,
# most of the 50 ms budget); the IVF index answers in about 2 ms at 1M windows.
APPROXIMATE_ABOVE = 200_000
# Probes scanned per query; with nlist = 4 sqrt(N) this is about 2% of the lists.
IVF_PROBE_SHARE = 0.02
IVF_TRAIN_PER_LIST = 40
STAMP = "faiss.json"


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
    """The saved FAISS index; rebuilt in memory (and saved) when the rows changed since it was built."""
    import faiss

    folder = Path(folder)
    stamp_path = folder / STAMP
    stamp = json.loads(stamp_path.read_text()) if stamp_path.is_file() else None
    if stamp is None or stamp["generation"] != store.generation(db):
        return rebuild(folder, db, dim, approximate_above)
    index = faiss.read_index(str(folder / "faiss.index"))
    if stamp["kind"] == "ivf":
        index.nprobe = stamp["nprobe"]
    arrays = {name: np.load(folder / f"{name}.npy", mmap_mode="r") for name in ("vectors", "window_ids", "video_ids")}
    return AnnIndex(index, arrays["vectors"], np.asarray(arrays["window_ids"]), np.asarray(arrays["video_ids"]),
                    stamp["kind"], stamp["generation"])
