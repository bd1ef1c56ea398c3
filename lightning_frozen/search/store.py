"""An index folder's source of truth: SQLite rows (videos, windows with their embeddings,
thumbnails) and ``manifest.json`` (the model's fingerprint and the embedding settings).

Everything a batch of videos adds, changes or drops is written in one SQLite transaction,
so a kill at any moment leaves either all of a video or none of it. The FAISS index is
derived from these rows (``ann.py``) and stamped with the ``generation`` it was built from.
"""
from __future__ import annotations

import json
import os
import sqlite3
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable, Optional, Union

import numpy as np

from ..atomic import write_atomically

PathLike = Union[str, os.PathLike]
DATABASE = "index.sqlite"
MANIFEST = "manifest.json"
FORMAT_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS videos (
    id INTEGER PRIMARY KEY,
    path TEXT NOT NULL UNIQUE,          -- relative to the indexed folder, '/'-separated
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    error TEXT,                         -- NULL: indexed; else why the file could not be read
    fps REAL, frames INTEGER, codec TEXT
);
CREATE TABLE IF NOT EXISTS windows (
    id INTEGER PRIMARY KEY,
    video_id INTEGER NOT NULL REFERENCES videos(id) ON DELETE CASCADE,
    position INTEGER NOT NULL,          -- 0, 1, ... in time order within the video
    start REAL NOT NULL, "end" REAL NOT NULL,
    embedding BLOB NOT NULL,            -- float32, L2-normalised
    UNIQUE (video_id, position)
);
CREATE TABLE IF NOT EXISTS thumbnails (
    window_id INTEGER PRIMARY KEY REFERENCES windows(id) ON DELETE CASCADE,
    jpeg BLOB NOT NULL
);
"""


class IndexMismatchError(ValueError):
    """An index folder made by another model or with other settings than the ones asked for."""


@dataclass(frozen=True)
class EmbeddingSettings:
    """What decides a window's embedding besides the weights: changing any means a new index."""

    window_seconds: float
    stride_seconds: float
    frames: int
    input_res: int
    decode_size: int
    thumb_size: int


@dataclass
class Manifest:
    """``manifest.json``: which weights and settings made the embeddings of this index."""

    checkpoint: str                 # absolute path of the weights file
    fingerprint: str                # sha256 over the loaded model's tensors
    model_config: Optional[dict]    # None: the checkpoint records its own (our .ckpt)
    embedding_dim: int
    settings: EmbeddingSettings
    videos_root: str                # absolute path of the indexed folder
    version: int = FORMAT_VERSION

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1, sort_keys=True)

    @classmethod
    def read(cls, folder: PathLike) -> "Manifest":
        path = Path(folder) / MANIFEST
        if not path.is_file():
            raise FileNotFoundError(f"'{folder}' is not a search index (no {MANIFEST}); "
                                    "make one with `lightning-frozen index --ckpt CKPT --videos DIR --out INDEX_DIR`")
        data = json.loads(path.read_text())
        if data.get("version") != FORMAT_VERSION:
            raise ValueError(f"{path}: index format {data.get('version')} is not {FORMAT_VERSION}; rebuild the index")
        data["settings"] = EmbeddingSettings(**data["settings"])
        return cls(**data)

    def write(self, folder: PathLike) -> None:
        write_atomically(Path(folder) / MANIFEST, lambda handle: handle.write(self.to_json().encode()))

    def check_same(self, other: "Manifest", where: PathLike) -> None:
        """Refuse to mix embeddings of different models or settings, naming both."""
        mine = (self.fingerprint, self.settings, self.embedding_dim)
        theirs = (other.fingerprint, other.settings, other.embedding_dim)
        if mine != theirs:
            raise IndexMismatchError(
                f"index '{where}' was built by {describe(self)}; asked for {describe(other)}. "
                "Use a new --out folder for another model or other settings (or delete the old index).")


def describe(manifest: Manifest) -> str:
    s = manifest.settings
    return (f"model {Path(manifest.checkpoint).name} (weights sha256 {manifest.fingerprint[:12]}) with "
            f"{s.frames} frames per window, windows of {s.window_seconds:g} s every {s.stride_seconds:g} s, "
            f"{s.input_res} px")


def connect(folder: PathLike) -> sqlite3.Connection:
    """The index's database, created with its schema when new."""
    db = sqlite3.connect(Path(folder) / DATABASE, isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA foreign_keys = ON")
    db.execute("PRAGMA journal_mode = WAL")   # readers (search, serve) never block the writer
    db.execute("PRAGMA synchronous = NORMAL")  # WAL + NORMAL: a kill loses no committed transaction
    db.executescript(_SCHEMA)
    return db


def generation(db: sqlite3.Connection) -> int:
    """Counts committed changes: the FAISS index is stale when built from an older one."""
    row = db.execute("SELECT value FROM meta WHERE key = 'generation'").fetchone()
    return int(row[0]) if row else 0


def bump_generation(db: sqlite3.Connection) -> None:
    db.execute("INSERT INTO meta(key, value) VALUES ('generation', '1') ON CONFLICT(key) "
               "DO UPDATE SET value = CAST(value AS INTEGER) + 1")


@dataclass
class VideoRecord:
    """One video's rows, ready to commit: its windows, their embeddings and thumbnails."""

    path: str
    size: int
    mtime_ns: int
    fps: Optional[float] = None
    frames: Optional[int] = None
    codec: Optional[str] = None
    error: Optional[str] = None
    spans: tuple = ()                   # (start, end) seconds per window
    embeddings: Optional[np.ndarray] = None
    thumbnails: tuple = ()              # JPEG bytes per window


def known_files(db: sqlite3.Connection) -> dict[str, tuple[int, int]]:
    """path -> (size, mtime_ns) of every file the index has seen (indexed or unreadable)."""
    return {path: (size, mtime) for path, size, mtime in db.execute("SELECT path, size, mtime_ns FROM videos")}


def commit_videos(db: sqlite3.Connection, records: Iterable[VideoRecord], drop: Iterable[str] = ()) -> None:
    """Replace the rows of ``records``' videos and delete those of ``drop``, all in one transaction."""
    db.execute("BEGIN IMMEDIATE")
    try:
        for path in drop:
            db.execute("DELETE FROM videos WHERE path = ?", (path,))
        for r in records:
            db.execute("DELETE FROM videos WHERE path = ?", (r.path,))
            video_id = db.execute(
                "INSERT INTO videos(path, size, mtime_ns, error, fps, frames, codec) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (r.path, r.size, r.mtime_ns, r.error, r.fps, r.frames, r.codec)).lastrowid
            for position, ((start, end), vector, jpeg) in enumerate(zip(r.spans, _rows(r.embeddings), r.thumbnails)):
                window_id = db.execute(
                    'INSERT INTO windows(video_id, position, start, "end", embedding) VALUES (?, ?, ?, ?, ?)',
                    (video_id, position, float(start), float(end), vector)).lastrowid
                db.execute("INSERT INTO thumbnails(window_id, jpeg) VALUES (?, ?)", (window_id, jpeg))
        bump_generation(db)
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise


def _rows(embeddings: Optional[np.ndarray]) -> list[bytes]:
    if embeddings is None:
        return []
    return [np.ascontiguousarray(row, dtype=np.float32).tobytes() for row in embeddings]


def load_embeddings(db: sqlite3.Connection, dim: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(window ids, video ids, embeddings [N, dim]) of every window, ordered by path then time.

    This order keeps each video's windows contiguous, which per-video ranking relies on.
    """
    rows = db.execute('SELECT w.id, w.video_id, w.embedding FROM windows w JOIN videos v ON v.id = w.video_id '
                      "ORDER BY v.path, w.position").fetchall()
    window_ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
    video_ids = np.fromiter((r[1] for r in rows), dtype=np.int64, count=len(rows))
    vectors = np.frombuffer(b"".join(r[2] for r in rows), dtype=np.float32).reshape(len(rows), dim)
    return window_ids, video_ids, vectors


def failures(db: sqlite3.Connection) -> list[tuple[str, str]]:
    """(path, reason) of every file the index could not read."""
    return db.execute("SELECT path, error FROM videos WHERE error IS NOT NULL ORDER BY path").fetchall()


def window_rows(db: sqlite3.Connection, window_ids: Iterable[int]) -> dict[int, dict[str, Any]]:
    """window id -> its path, start, end and the video's codec, for results."""
    ids = [int(i) for i in window_ids]
    out: dict[int, dict[str, Any]] = {}
    for chunk in range(0, len(ids), 500):
        part = ids[chunk:chunk + 500]
        marks = ",".join("?" * len(part))
        for wid, path, start, end, codec in db.execute(
                f'SELECT w.id, v.path, w.start, w."end", v.codec FROM windows w JOIN videos v ON v.id = w.video_id '
                f"WHERE w.id IN ({marks})", part):
            out[wid] = {"path": path, "start": start, "end": end, "codec": codec}
    return out
