"""An index folder's source of truth: SQLite rows (videos, windows with their embeddings,
thumbnails), ``manifest.json`` (what made the folder and from which inputs, with checksums of
the files a query reads) and, while ``index`` writes, a lock.

Everything a batch of videos adds, changes or drops is written in one SQLite transaction,
so a kill at any moment leaves either all of a video or none of it. The FAISS index is
derived from these rows (``ann.py``) and stamped with the ``generation`` it was built from.
Readers (``search``, ``serve``) open the database read-only and never write into the folder.
"""
from __future__ import annotations

import fcntl
import json
import os
import sqlite3
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Optional, Union
from urllib.parse import quote

import numpy as np

from ..atomic import write_atomically

PathLike = Union[str, os.PathLike]
DATABASE = "index.sqlite"
MANIFEST = "manifest.json"
LOCK = ".lock"
FORMAT_VERSION = 2
MADE_BY = "lightning-frozen index"
# Several ranks commit into one database under DDP: a writer waits this long for another's commit.
BUSY_TIMEOUT_S = 120.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS videos (
    id INTEGER PRIMARY KEY,
    path TEXT NOT NULL UNIQUE,          -- relative to the indexed folder, '/'-separated
    size INTEGER NOT NULL,              -- -1 for a file refused without reading it (a link)
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
    """An index folder made by another model, with other settings or of another folder than asked for."""


class DamagedIndexError(ValueError):
    """An index folder whose files are missing or damaged; the message names the command that repairs it."""


class IndexBusyError(OSError):
    """Another ``index`` run holds the folder's lock."""


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
    """``manifest.json``: the folder's marker. What made it, from which inputs; the query side's checksums."""

    checkpoint: str                 # absolute path of the weights file ("" for a model given in memory)
    fingerprint: str                # sha256 over the loaded model's tensors
    model_config: dict              # the model's config (video, text, projection_dim)
    model_config_source: Optional[str]  # what --model-config named (a preset or a YAML file), if anything
    embedding_dim: int
    settings: EmbeddingSettings
    videos_root: str                # the indexed folder as given (absolute, links not resolved)
    follow_links: bool
    tokenizer: dict                 # the DataModule's tokenizer settings for queries: max_length, padding
    files: dict = field(default_factory=dict)  # file a query reads (relative path) -> sha256
    made_by: str = MADE_BY
    version: int = FORMAT_VERSION

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1, sort_keys=True)

    @classmethod
    def read(cls, folder: PathLike) -> "Manifest":
        """The manifest of an index folder; one clear error for a folder that is not one of ours."""
        path = Path(folder) / MANIFEST
        if not Path(folder).is_dir():
            raise FileNotFoundError(f"index folder '{folder}' does not exist; make one with "
                                    "`lightning-frozen index --ckpt CKPT --videos DIR --out INDEX_DIR`")
        if not path.is_file():
            raise FileNotFoundError(f"'{folder}' is not a search index (no {MANIFEST}); make one with "
                                    "`lightning-frozen index --ckpt CKPT --videos DIR --out INDEX_DIR`")
        try:
            data = json.loads(path.read_text())
        except (ValueError, UnicodeDecodeError) as error:
            raise DamagedIndexError(f"'{path}' is damaged ({error}); index into a new --out folder") from None
        if not isinstance(data, dict) or data.get("made_by") != MADE_BY:
            if isinstance(data, dict) and "fingerprint" in data and "settings" in data:  # format 1 had no marker
                raise DamagedIndexError(f"'{folder}' was made by an older lightning-frozen (index format 1, "
                                        f"now {FORMAT_VERSION}): index into a new --out folder")
            raise FileExistsError(f"'{path}' was not written by `{MADE_BY}`: '{folder}' is not a search index")
        if data.get("version") != FORMAT_VERSION:
            raise DamagedIndexError(f"'{folder}' holds index format {data.get('version')}, this lightning-frozen "
                                    f"reads {FORMAT_VERSION}: index into a new --out folder")
        try:
            data["settings"] = EmbeddingSettings(**data["settings"])
            return cls(**data)
        except (KeyError, TypeError) as error:
            raise DamagedIndexError(f"'{path}' is damaged ({error}); index into a new --out folder") from None

    def write(self, folder: PathLike) -> None:
        write_atomically(Path(folder) / MANIFEST, lambda handle: handle.write(self.to_json().encode()))

    def check_same(self, other: "Manifest", where: PathLike) -> None:
        """Refuse to mix embeddings of different models, settings or folders, naming both."""
        check_same_folder(self, other.videos_root, where)
        mine = (self.fingerprint, self.settings, self.embedding_dim)
        theirs = (other.fingerprint, other.settings, other.embedding_dim)
        if mine != theirs:
            raise IndexMismatchError(
                f"index '{where}' was built by {describe(self)}; asked for {describe(other)}. "
                "Use a new --out folder for another model or other settings (or delete the old index).")

    def repair_command(self, folder: PathLike) -> str:
        """The `index` command that made this folder: re-running it completes or repairs the index."""
        if not self.checkpoint:
            return "build_index(...) with the model this index was built by"
        parts = ["lightning-frozen index", "--ckpt", _quoted(self.checkpoint)]
        if self.model_config_source:
            parts += ["--model-config", _quoted(self.model_config_source)]
        s = self.settings
        parts += ["--videos", _quoted(self.videos_root), "--out", _quoted(str(folder)), "--window-seconds",
                  f"{s.window_seconds:g}", "--stride-seconds", f"{s.stride_seconds:g}", "--frames", str(s.frames)]
        return " ".join(parts + (["--follow-links"] if self.follow_links else []))


def _quoted(text: str) -> str:
    import shlex

    return shlex.quote(text)


def check_same_folder(manifest: Manifest, videos_root: str, where: PathLike) -> None:
    """An index holds one folder's videos: indexing another into it would drop the first folder's."""
    if Path(manifest.videos_root).resolve() != Path(videos_root).resolve():
        raise IndexMismatchError(
            f"index '{where}' holds the videos of '{manifest.videos_root}', not of '{videos_root}': indexing "
            "another folder into it would drop the first folder's videos. Use a new --out folder for it.")


def describe(manifest: Manifest) -> str:
    s = manifest.settings
    name = Path(manifest.checkpoint).name or "a model in memory"
    return (f"model {name} (weights sha256 {manifest.fingerprint[:12]}) with "
            f"{s.frames} frames per window, windows of {s.window_seconds:g} s every {s.stride_seconds:g} s, "
            f"{s.input_res} px")


# -- the database: one writer (`index`), read-only readers ------------------------------------

def connect(folder: PathLike) -> sqlite3.Connection:
    """The index's database for writing, created with its schema when new (an empty file included)."""
    path = Path(folder) / DATABASE
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=BUSY_TIMEOUT_S)
    try:
        db.execute("PRAGMA foreign_keys = ON")
        db.execute("PRAGMA journal_mode = WAL")   # readers (search, serve) never block the writer
        db.execute("PRAGMA synchronous = NORMAL")  # WAL + NORMAL: a kill loses no committed transaction
        db.executescript(_SCHEMA)
    except sqlite3.OperationalError:
        db.close()
        raise  # locked, busy, no permission: not damage
    except sqlite3.DatabaseError as error:  # not a database, malformed
        db.close()
        raise DamagedIndexError(f"'{path}' is damaged ({error}): delete it and run `lightning-frozen index` again "
                                "(the videos are embedded anew)") from None
    return db


def open_readonly(folder: PathLike, manifest: Manifest) -> sqlite3.Connection:
    """The database for reading: never written to, nor its journal mode changed.

    In a folder this process cannot write (read-only media, another user's index) SQLite is
    told the file is immutable, as its documentation advises: no lock or journal file is made.
    """
    folder = Path(folder)
    path = folder / DATABASE
    repair = f"rebuild it: {manifest.repair_command(folder)}"
    if not path.is_file():
        raise DamagedIndexError(f"index '{folder}' is damaged: {DATABASE} is missing; {repair}")
    if path.stat().st_size == 0:
        raise DamagedIndexError(f"index '{folder}' is damaged: {DATABASE} is empty (0 bytes); {repair}")
    uri = f"file:{quote(str(path.resolve()))}?mode=ro" + ("" if os.access(folder, os.W_OK) else "&immutable=1")
    db = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
    try:
        generation(db)
        db.execute("SELECT COUNT(*) FROM windows").fetchone()
    except sqlite3.DatabaseError as error:
        db.close()
        raise DamagedIndexError(f"index '{folder}' is damaged: {DATABASE} cannot be read ({error}); {repair}") from None
    return db


def _meta(db: sqlite3.Connection, key: str) -> Optional[str]:
    row = db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
    return row[0] if row else None


def generation(db: sqlite3.Connection) -> int:
    """Counts committed changes: the FAISS index is stale when built from an older one."""
    return int(_meta(db, "generation") or 0)


def bump_generation(db: sqlite3.Connection) -> None:
    db.execute("INSERT INTO meta(key, value) VALUES ('generation', '1') ON CONFLICT(key) "
               "DO UPDATE SET value = CAST(value AS INTEGER) + 1")


def set_complete(db: sqlite3.Connection, complete: bool) -> None:
    """An `index` run marks the index incomplete when it starts and complete when it ends."""
    db.execute("INSERT INTO meta(key, value) VALUES ('complete', ?) ON CONFLICT(key) DO UPDATE SET value = ?",
               (str(int(complete)), str(int(complete))))


def is_complete(db: sqlite3.Connection) -> bool:
    return _meta(db, "complete") == "1"


def settle(db: sqlite3.Connection) -> None:
    """At the end of a run: back to a rollback journal, so that readers of the finished index need no
    shared-memory file (and a read-only folder reads as it is). Skipped while a reader holds it open."""
    try:
        db.execute("PRAGMA journal_mode = DELETE")
    except sqlite3.OperationalError:
        pass  # a server reads it now: it stays in WAL mode, which readers handle as well


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


def count_videos(db: sqlite3.Connection) -> int:
    """Readable videos in the index."""
    return db.execute("SELECT COUNT(*) FROM videos WHERE error IS NULL").fetchone()[0]


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


# -- the lock: one `index` run per folder ------------------------------------------------------

class FolderLock:
    """An exclusive ``flock`` on ``<folder>/.lock`` for the run's duration.

    The kernel drops it when the process ends, however it ends, so a killed run never leaves
    a folder locked; the file itself stays (it holds the last run's pid, for messages).
    """

    def __init__(self, folder: PathLike):
        self.path = Path(folder) / LOCK
        self._fd: Optional[int] = None

    def acquire(self) -> "FolderLock":
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise IndexBusyError(f"'{self.path.parent}' is being written by another `lightning-frozen index` run "
                                 f"(pid {holder}); wait for it to finish, or index into another --out folder") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "FolderLock":
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()


def writer_running(folder: PathLike) -> bool:
    """Whether an `index` run holds the folder's lock right now (a reader's question: it holds a shared
    lock only for the instant of asking, and only about an index that is not complete)."""
    try:
        fd = os.open(Path(folder) / LOCK, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing drops a shared lock taken for the test
    return False
