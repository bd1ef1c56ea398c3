"""`lightning-frozen search`: rank an index's videos (or windows) for a text query.

    lightning-frozen search my_index "a dog catches a frisbee" -k 10 [--per video|clip] [--json]

The index names its checkpoint and the fingerprint of its weights; the text tower is loaded
from there, and a checkpoint changed since is refused. Per-video ranking fetches more
windows than k from FAISS and rescores them exactly until the top k videos are certain
(exact for a flat index; within the approximate index's recall otherwise).
"""
from __future__ import annotations

import argparse
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional, Sequence, Union

import numpy as np
import torch

from ..similarity import querybank_normalize, querybank_stats
from . import ann, store
from .encoder import Encoder, load_encoder
from .store import IndexMismatchError, Manifest

PathLike = Union[str, os.PathLike]
Per = Literal["video", "clip"]
Aggregate = Literal["max", "mean"]
# QB-Norm scores every window for every query: offered up to this many windows (exact search's range).
QB_NORM_MAX_WINDOWS = ann.APPROXIMATE_ABOVE


def query_threads() -> None:
    """One thread per query for torch and FAISS, in processes that answer queries.

    One query is too small to split: on the busy 2-core machine two threads took 70 ms to
    encode a query (MiniLM, 3 layers) against 14 ms on one, and FAISS's OpenMP threads 27 ms
    against 0.2 ms for a 10k flat search; a server runs its queries side by side instead.
    """
    import faiss

    torch.set_num_threads(1)
    faiss.omp_set_num_threads(1)


@dataclass(frozen=True)
class Hit:
    """One result: a window of a video (for per-video ranking, the video's best window)."""

    path: str
    start: float
    end: float
    score: float
    window_id: int

    def as_json(self) -> dict:
        return {"path": self.path, "start": round(self.start, 3), "end": round(self.end, 3),
                "score": round(self.score, 4)}


class QueryBank:
    """QB-Norm statistics of an index for a bank of captions (e.g. the training captions)."""

    def __init__(self, bank: np.ndarray, vectors: np.ndarray, beta: float = 20.0, chunk: int = 65536):
        if len(vectors) > QB_NORM_MAX_WINDOWS:
            raise ValueError(f"QB-Norm scores every window for every query; this index has {len(vectors)} windows, "
                             f"more than {QB_NORM_MAX_WINDOWS}: use it on smaller indexes (or for `test`)")
        bank_t = torch.from_numpy(np.ascontiguousarray(bank, dtype=np.float32))
        log_norms = []
        best = torch.full((len(bank),), -torch.inf)
        best_at = torch.zeros(len(bank), dtype=torch.long)
        for first in range(0, len(vectors), chunk):  # bank x gallery in slices: never [B, N] at once
            sims = bank_t @ torch.from_numpy(np.array(vectors[first:first + chunk])).T
            log_norms.append(querybank_stats(sims, beta)[0])
            top, at = sims.max(dim=1)
            better = top > best
            best[better], best_at[better] = top[better], at[better] + first
        self.log_norm = torch.cat(log_norms)
        self.activated = torch.zeros(len(vectors), dtype=torch.bool)
        self.activated[best_at] = True  # the items some bank query ranks first over the whole gallery
        self.beta = beta

    def apply(self, scores: np.ndarray) -> np.ndarray:
        out = querybank_normalize(torch.from_numpy(scores)[None], self.log_norm, self.activated, self.beta)
        return out[0].numpy()


class Index:
    """A search index folder opened for queries.

    ``encoder``: a loaded model to embed queries with (it must be the one the index was built
    with); None loads the checkpoint the index records, refusing it if its weights changed.
    """

    def __init__(self, folder: PathLike, encoder: Optional[Encoder] = None):
        self.folder = Path(folder)
        self.manifest = Manifest.read(self.folder)
        if encoder is None:
            if not Path(self.manifest.checkpoint).is_file():
                raise FileNotFoundError(f"the checkpoint this index was built with, '{self.manifest.checkpoint}', "
                                        "is gone; restore it or rebuild the index")
            encoder = load_encoder(self.manifest.checkpoint, self.manifest.model_config)
        if encoder.fingerprint != self.manifest.fingerprint:
            raise IndexMismatchError(
                f"index '{self.folder}' was built by {store.describe(self.manifest)}, but the model given has weights "
                f"sha256 {encoder.fingerprint[:12]} ({Path(encoder.checkpoint).name or 'in memory'}): the checkpoint "
                "changed since; rebuild the index with it, or search with the weights it was built by")
        self.encoder = encoder
        self.db = store.connect(self.folder)
        self.ann = ann.load(self.folder, self.db, self.manifest.embedding_dim)
        ids = self.ann.video_ids
        starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]]) if len(ids) else np.zeros(0, np.int64)
        self._video_start = starts                                   # first position of each video
        self._video_of = np.repeat(np.arange(len(starts)), np.diff(np.r_[starts, len(ids)]))
        self.query_bank: Optional[QueryBank] = None

    def __len__(self) -> int:
        return len(self.ann.window_ids)

    def close(self) -> None:
        self.db.close()

    def set_query_bank(self, captions: Sequence[str], beta: float = 20.0, batch_size: int = 256) -> None:
        """Turn QB-Norm on with a bank of captions (None of them need be about these videos)."""
        bank = np.concatenate([self.encoder.encode_text(captions[i:i + batch_size])
                               for i in range(0, len(captions), batch_size)])
        self.query_bank = QueryBank(bank, self.ann.vectors, beta)

    def search(self, query: str, k: int = 10, per: Per = "video", aggregate: Aggregate = "max") -> list[Hit]:
        """The top ``k`` videos (their best window shown) or windows for ``query``, best first."""
        return self.search_vector(self.encoder.encode_text([query])[0], k, per, aggregate)

    def search_vector(self, vector: np.ndarray, k: int = 10, per: Per = "video",
                      aggregate: Aggregate = "max") -> list[Hit]:
        """As ``search``, for a query already embedded (L2-normalised, [D])."""
        if per not in ("video", "clip") or aggregate not in ("max", "mean"):
            raise ValueError(f"per must be 'video' or 'clip' and aggregate 'max' or 'mean', got {per!r}, {aggregate!r}")
        if k < 1 or len(self) == 0:
            return []
        vector = np.ascontiguousarray(vector, dtype=np.float32).reshape(-1)
        if self.query_bank is not None:
            positions, scores = self._rank_all(vector, k, per, aggregate)
        elif per == "clip":
            positions, scores = self._rescored(vector, min(k, len(self)))
        else:
            positions, scores = self._top_videos(vector, k, aggregate)
        rows = store.window_rows(self.db, self.ann.window_ids[positions])
        return [Hit(score=float(s), window_id=int(w), **{f: rows[int(w)][f] for f in ("path", "start", "end")})
                for w, s in zip(self.ann.window_ids[positions], scores)]

    def _rescored(self, vector: np.ndarray, fetch: int) -> tuple[np.ndarray, np.ndarray]:
        """``fetch`` nearest windows from FAISS, rescored exactly, best first."""
        _, found = self.ann.faiss_index.search(vector[None], fetch)
        positions = found[0][found[0] >= 0]
        scores = np.asarray(self.ann.vectors[positions]) @ vector
        order = np.lexsort((positions, -scores))
        return positions[order], scores[order]

    def _mean_scores(self, vector: np.ndarray, videos: np.ndarray) -> np.ndarray:
        """Exact mean score over all windows of each of ``videos``."""
        ends = np.r_[self._video_start[1:], len(self)]
        return np.array([float(np.mean(np.asarray(self.ann.vectors[self._video_start[v]:ends[v]]) @ vector))
                         for v in videos], dtype=np.float32)

    def _top_videos(self, vector: np.ndarray, k: int, aggregate: Aggregate) -> tuple[np.ndarray, np.ndarray]:
        """Fetch more windows until the top k videos are settled.

        A video not among the fetched windows scores at most the lowest fetched score (its max,
        and its mean <= max), so once k videos score at least that, no unfetched one can beat them.
        """
        fetch = min(len(self), max(8 * k, 64))
        while True:
            positions, scores = self._rescored(vector, fetch)
            videos = self._video_of[positions]
            first = np.unique(videos, return_index=True)[1]       # each video's best fetched window
            best_positions, best_scores, best_videos = positions[first], scores[first], videos[first]
            if aggregate == "mean":
                best_scores = self._mean_scores(vector, best_videos)
            floor = scores[-1] if len(scores) else -np.inf
            settled = int(np.sum(best_scores >= floor))
            if settled >= k or fetch >= len(self):
                order = np.lexsort((best_positions, -best_scores))[:k]
                return best_positions[order], best_scores[order]
            fetch = min(len(self), fetch * 4)

    def _rank_all(self, vector: np.ndarray, k: int, per: Per, aggregate: Aggregate) -> tuple[np.ndarray, np.ndarray]:
        """Every window scored (QB-Norm needs them all), then per clip or per video."""
        scores = self.query_bank.apply(np.asarray(self.ann.vectors) @ vector)
        if per == "clip":
            order = np.lexsort((np.arange(len(scores)), -scores))[:k]
            return order, scores[order]
        reduce = np.maximum.reduceat if aggregate == "max" else np.add.reduceat
        video_scores = reduce(scores, self._video_start)
        if aggregate == "mean":
            video_scores = video_scores / np.diff(np.r_[self._video_start, len(scores)])
        order = np.lexsort((np.arange(len(video_scores)), -video_scores))[:k]
        ends = np.r_[self._video_start[1:], len(scores)]
        # the best window of the k videos shown only, not of every video in the index
        best_window = np.array([self._video_start[v] + int(np.argmax(scores[self._video_start[v]:ends[v]]))
                                for v in order], dtype=np.int64)
        return best_window, video_scores[order]


def format_hits(hits: list[Hit]) -> str:
    """A terminal table: rank, score, time range, path."""
    if not hits:
        return "no results"
    lines = []
    for rank, hit in enumerate(hits, 1):
        lines.append(f"{rank:>3}  {hit.score:7.4f}  {_clock(hit.start)}-{_clock(hit.end)}  {hit.path}")
    return "\n".join(lines)


def _clock(seconds: float) -> str:
    minutes, rest = divmod(seconds, 60)
    return f"{int(minutes):d}:{rest:05.2f}"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lightning-frozen search", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("index", help="index folder made by `lightning-frozen index`")
    parser.add_argument("query", help="what to look for, in words")
    parser.add_argument("-k", type=int, default=10, help="number of results")
    parser.add_argument("--per", choices=("video", "clip"), default="video",
                        help="one result per video (its best window) or every window")
    parser.add_argument("--aggregate", choices=("max", "mean"), default="max",
                        help="a video's score from its windows' (per video)")
    parser.add_argument("--qb-norm-bank", help="text file of captions, one a line: QB-Norm with this query bank")
    parser.add_argument("--json", action="store_true", help='print [{"path", "start", "end", "score"}, ...]')
    return parser


def read_bank(path: PathLike) -> list[str]:
    lines = [line.strip() for line in Path(path).read_text().splitlines() if line.strip()]
    if not lines:
        raise ValueError(f"query bank '{path}' holds no captions (one caption a line)")
    return lines


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    query_threads()
    index = Index(args.index)
    try:
        if args.qb_norm_bank:
            index.set_query_bank(read_bank(args.qb_norm_bank))
        hits = index.search(args.query, args.k, args.per, args.aggregate)
    finally:
        index.close()
    print(json.dumps([h.as_json() for h in hits]) if args.json else format_hits(hits))
    return 0
