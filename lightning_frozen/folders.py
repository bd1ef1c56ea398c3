"""Output folders that a command owns: a marker saying what made the folder and from which inputs, and a
lock held while a command writes there.

Every command that writes a folder follows one rule: check first, then write. A folder is
*ours* when it holds the marker (``.lightning-frozen.json``); a command writes only into a
folder that is absent, empty, or ours, and refuses any other, naming it, before it writes a
byte. The lock is an OS lock (``fcntl.flock``) on ``.lightning-frozen.lock``: the kernel drops it
when the process ends, however it ends, so a killed run never leaves a stale lock behind.
"""
from __future__ import annotations

import contextlib
import json
import os
import time
from pathlib import Path
from typing import Any, Iterator, Optional, Union

from .atomic import write_atomically

MARKER = ".lightning-frozen.json"
LOCK = ".lightning-frozen.lock"
OWN_FILES = (MARKER, LOCK)

PathLike = Union[str, os.PathLike]


def read_marker(folder: PathLike) -> Optional[dict[str, Any]]:
    """The folder's marker, or None when it has none (or an unreadable one, which is not ours either)."""
    try:
        marker = json.loads((Path(folder) / MARKER).read_text())
    except (OSError, ValueError):
        return None
    return marker if isinstance(marker, dict) and "made_by" in marker else None


def write_marker(folder: PathLike, made_by: str, inputs: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """Write (atomically) the marker of a folder `made_by` a command from `inputs`; returns it."""
    from . import __version__

    marker = {"made_by": made_by, "inputs": inputs, "version": __version__,
              "created": time.strftime("%Y-%m-%d %H:%M:%S"), **extra}
    text = json.dumps(marker, indent=1, default=str) + "\n"
    write_atomically(Path(folder) / MARKER, lambda handle: handle.write(text.encode()))
    return marker


def contents(folder: PathLike) -> list[str]:
    """Names in `folder` besides its lock file (empty for a folder that does not exist)."""
    folder = Path(folder)
    if not folder.exists():
        return []
    if not folder.is_dir():
        raise NotADirectoryError(f"{folder} exists and is not a folder; choose another path")
    return sorted(p.name for p in folder.iterdir() if p.name != LOCK)


def shown(names: list[str], limit: int = 5) -> str:
    """'a, b, c and 4 more'."""
    return ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")


def refuse_foreign(folder: PathLike, option: str) -> Optional[dict[str, Any]]:
    """The marker of `folder`; None when it is absent or empty. Raises when it holds files but no marker:
    a folder that is neither empty nor ours is never written into."""
    names = contents(folder)
    if not names:
        return None
    marker = read_marker(folder)
    if marker is None:
        raise FileExistsError(f"{folder} is neither empty nor made by lightning-frozen (it holds {shown(names)}); "
                              f"nothing there is overwritten: choose an empty or new {option}")
    return marker


def differing_inputs(recorded: dict[str, Any], wanted: dict[str, Any]) -> list[str]:
    """'key: recorded -> wanted' for every input that differs."""
    keys = sorted(set(recorded) | set(wanted))
    return [f"{key}: {recorded.get(key)!r} -> {wanted.get(key)!r}" for key in keys
            if recorded.get(key) != wanted.get(key)]


def refuse_other_inputs(folder: PathLike, marker: dict[str, Any], made_by: str, inputs: dict[str, Any],
                        option: str) -> None:
    """Raise unless `marker` says `folder` was made by `made_by` from these `inputs` (so a re-run continues it)."""
    if marker.get("made_by") != made_by:
        raise FileExistsError(f"{folder} was made by {marker.get('made_by')}, not {made_by}; choose an empty or "
                              f"new {option}")
    changes = differing_inputs(marker.get("inputs", {}), inputs)
    if changes:
        raise FileExistsError(f"{folder} holds the output of {made_by} with other inputs ({'; '.join(changes)}); "
                              f"run with the same inputs to continue it, or choose an empty or new {option}")


_held: set[int] = set()  # lock files this process holds open


def _close_inherited_locks() -> None:
    for fd in _held:
        with contextlib.suppress(OSError):
            os.close(fd)
    _held.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_close_inherited_locks)


class FolderLock:
    """An exclusive lock on `folder` for the duration of a run (``with FolderLock(folder, "shard"):``).

    The lock belongs to the process that took it: processes it forks (data loader workers) close
    their copy, so it ends with that process. Creates the folder when needed; ``release(keep=False)``
    undoes that when the run wrote nothing: the lock file goes, and so do the folders it created, so
    a refused run leaves the disk as it found it.
    """

    def __init__(self, folder: PathLike, command: str):
        self.folder, self.command = Path(folder), command
        self._fd: Optional[int] = None
        self._created: list[Path] = []
        self._lock_existed = False

    def acquire(self) -> "FolderLock":
        self._created = [p for p in [self.folder, *self.folder.parents] if not p.exists()][::-1]
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / LOCK
        self._lock_existed = path.exists()
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                import fcntl

                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except ImportError:  # no fcntl (Windows): runs are not guarded against each other
                break
            except BlockingIOError:
                holder = os.read(fd, 200).decode(errors="replace").strip() or "another process"
                os.close(fd)
                raise FileExistsError(f"{self.folder} is in use by {holder}; wait until it ends or choose another "
                                      "folder") from None
            except OSError:  # a file system without locks (some network mounts): go on unguarded
                break
            # The file may have been removed by a run that gave up between our open and our lock: lock the new one.
            if os.path.exists(path) and os.path.samestat(os.fstat(fd), os.stat(path)):
                break
            os.close(fd)
        _held.add(fd)
        os.ftruncate(fd, 0)
        os.write(fd, f"lightning-frozen {self.command} (pid {os.getpid()}, since {time.strftime('%H:%M:%S')})".encode())
        self._fd = fd
        return self

    def release(self, keep: bool = True) -> None:
        if self._fd is None:
            return
        if not keep:
            with contextlib.suppress(OSError):
                if not self._lock_existed:
                    (self.folder / LOCK).unlink()
                for folder in reversed(self._created):
                    folder.rmdir()  # only empty folders: anything written since stays
        _held.discard(self._fd)
        os.close(self._fd)  # closing drops the lock
        self._fd = None

    def __enter__(self) -> "FolderLock":
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()


@contextlib.contextmanager
def owned_folder(folder: PathLike, made_by: str, inputs: dict[str, Any], option: str) -> Iterator[bool]:
    """Check `folder` (absent, empty, or made by `made_by` from `inputs`), lock it and mark it ours;
    yields whether an earlier run of the same inputs was there (so this run continues it).

    The check runs before anything is written, and again once the lock is held (another run may
    have claimed the folder in between); a refusal then leaves the folder as it was.
    """

    def check() -> Optional[dict[str, Any]]:
        marker = refuse_foreign(folder, option)
        if marker is not None:
            refuse_other_inputs(folder, marker, made_by, inputs, option)
        return marker

    check()
    lock = FolderLock(folder, made_by.split()[-1]).acquire()
    claimed = False
    try:
        marker = check()
        if marker is None:
            write_marker(folder, made_by, inputs)
        claimed = True
        yield marker is not None
    finally:
        lock.release(keep=claimed)
