"""`lightning-frozen search`: rank an index's videos (or windows) for a text query.

    lightning-frozen search my_index "a dog catches a frisbee" -k 10 [--per video|clip] [--json]

A query reads only the index folder, read-only: the text tower and tokenizer the index
stores (``text.py``), its SQLite rows and its FAISS index. It never opens the training
checkpoint nor imports Lightning. Per-video ranking fetches more windows than k from FAISS
and rescores them exactly until the top k videos are certain (exact for a flat index;
within the approximate index's recall otherwise). A partial index (a run killed or still
running) is searched as it is, with a note naming the command that completes it.
"""
from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional, Sequence, Union

import numpy as np
import torch

from ..similarity import querybank_normalize, querybank_stats
from . import ann, store
from .arguments import Parser, positive_int
from .store import Manifest
from .text import QueryEncoder

PathLike = Union[str, os.PathLike]
Per = Literal["video", "clip"]
Aggregate = Literal["max", "mean"]
# QB-Norm scores every window for every query: offered up to this many windows (exact search's range).
QB_NORM_MAX_WINDOWS = ann.APPROXIMATE_ABOVE


def query_threads() -> None:
    """One thread per query for torch and FAISS, in processes that answer queries.

    One query is too small to split: more threads only add their start-up and contention (a
    server answers its queries side by side instead; figures in docs/search.md).
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
    """A search index folder opened for queries (read-only: nothing in the folder is written).

    ``notes`` says what is wrong with the folder that a query can live with (a partial index,
    a FAISS index rebuilt in memory), each with the command that repairs it.
    """

    def __init__(self, folder: PathLike):
        self.folder = Path(folder)
        self.manifest = Manifest.read(self.folder)
        self.db = store.open_readonly(self.folder, self.manifest)
        try:
            self.notes = self._partial_notes()
            self.encoder = QueryEncoder(self.folder, self.manifest)
            self.ann, wrong = ann.open_for_queries(self.folder, self.db, self.manifest.embedding_dim)
        except BaseException:
            self.db.close()
            raise
        if wrong is not None and not self.notes:
            self.notes.append(f"index '{self.folder}': its FAISS index is {wrong}, so it was built in memory for "
                              f"this run; running index again saves it: {self.manifest.repair_command(self.folder)}")
        ids = self.ann.video_ids
        starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]]) if len(ids) else np.zeros(0, np.int64)
        self._video_start = starts                                   # first position of each video
        self._video_of = np.repeat(np.arange(len(starts)), np.diff(np.r_[starts, len(ids)]))
        self.query_bank: Optional[QueryBank] = None

    def _partial_notes(self) -> list[str]:
        if store.is_complete(self.db):
            return []
        videos = store.count_videos(self.db)
        if store.writer_running(self.folder):
            return [f"index '{self.folder}' is being written by an `index` run right now: {videos} videos so far"]
        return [f"index '{self.folder}' is partial: {videos} videos were committed before its last `index` run "
                f"stopped (killed?); run it again to complete the index: {self.manifest.repair_command(self.folder)}"]

    def __len__(self) -> int:
        return len(self.ann.window_ids)

    def close(self) -> None:
        self.db.close()

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """L2-normalised text embeddings [len(texts), D] with the model and tokenizer the index stores."""
        return self.encoder.encode(texts)

    def thumbnail(self, window_id: int) -> Optional[bytes]:
        """The JPEG of a window (None for an id the index does not hold)."""
        row = self.db.execute("SELECT jpeg FROM thumbnails WHERE window_id = ?", (int(window_id),)).fetchone()
        return None if row is None else row[0]

    def set_query_bank(self, captions: Sequence[str], beta: float = 20.0, batch_size: int = 256) -> None:
        """Turn QB-Norm on with a bank of captions (None of them need be about these videos)."""
        bank = np.concatenate([self.encode(captions[i:i + batch_size]) for i in range(0, len(captions), batch_size)])
        self.query_bank = QueryBank(bank, self.ann.vectors, beta)

    def search(self, query: str, k: int = 10, per: Per = "video", aggregate: Aggregate = "max") -> list[Hit]:
        """The top ``k`` videos (their best window shown) or windows for ``query``, best first."""
        if not query.strip():
            raise ValueError("the query is empty: say what to look for, e.g. \"a dog catches a frisbee\"")
        return self.search_vector(self.encode([query])[0], k, per, aggregate)

    def search_vector(self, vector: np.ndarray, k: int = 10, per: Per = "video",
                      aggregate: Aggregate = "max") -> list[Hit]:
        """As ``search``, for a query already embedded (L2-normalised, [D])."""
        if per not in ("video", "clip") or aggregate not in ("max", "mean"):
            raise ValueError(f"per must be 'video' or 'clip' and aggregate 'max' or 'mean', got {per!r}, {aggregate!r}")
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        if len(self) == 0:
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
                for w, s in zip(self.ann.window_ids[positions], scores) if int(w) in rows]

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


def build_parser() -> Parser:
    parser = Parser(prog="lightning-frozen search", description=__doc__)
    parser.add_argument("index", help="index folder made by `lightning-frozen index`")
    parser.add_argument("query", help="what to look for, in words")
    parser.add_argument("-k", type=positive_int, default=10, help="number of results")
    parser.add_argument("--per", choices=("video", "clip"), default="video",
                        help="one result per video (its best window) or every window")
    parser.add_argument("--aggregate", choices=("max", "mean"), default="max",
                        help="a video's score from its windows' (per video)")
    parser.add_argument("--qb-norm-bank", help="text file of captions, one a line: QB-Norm with this query bank")
    parser.add_argument("--json", action="store_true", help='print [{"path", "start", "end", "score"}, ...]')
    return parser


def read_bank(path: PathLike) -> list[str]:
    if not Path(path).is_file():
        raise FileNotFoundError(f"--qb-norm-bank '{path}' not found (a text file of captions, one a line)")
    lines = [line.strip() for line in Path(path).read_text().splitlines() if line.strip()]
    if not lines:
        raise ValueError(f"query bank '{path}' holds no captions (one caption a line)")
    return lines


def open_index(folder: PathLike, bank: Optional[Sequence[str]] = None) -> Index:
    """An index for a command (`search`, `serve`): one thread per query, its notes on stderr, and
    QB-Norm when a bank of captions is given."""
    query_threads()
    index = Index(folder)
    try:
        for note in index.notes:
            print(f"note: {note}", file=sys.stderr)
        if bank:
            index.set_query_bank(bank)
    except BaseException:
        index.close()
        raise
    return index


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if not args.query.strip():  # said before the index is opened
        raise ValueError(f"the query is empty: say what to look for, e.g. lightning-frozen search {args.index} "
                         "\"a dog catches a frisbee\"")
    index = open_index(args.index, read_bank(args.qb_norm_bank) if args.qb_norm_bank else None)
    try:
        hits = index.search(args.query, args.k, args.per, args.aggregate)
    finally:
        index.close()
    print(json.dumps([h.as_json() for h in hits]) if args.json else format_hits(hits))
    return 0


if __name__ == "__main__":  # `python -m lightning_frozen.search.query INDEX "query"`: `search` without the dispatcher
    raise SystemExit(main())
