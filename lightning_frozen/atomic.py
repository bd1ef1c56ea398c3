"""Files that are either complete or absent: write a temporary file next to the target, fsync, rename.

A full disk, a kill or a crash mid-write then leaves the previous file (if any) as it was,
never a truncated file under the final name. The temporary file sits in the target's
folder so that the rename is one atomic step on one file system (not a copy across devices).
"""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, BinaryIO, Callable, Union

__all__ = ["free_space", "save_atomically", "write_atomically"]

PathLike = Union[str, os.PathLike]


def _default_mode() -> int:
    # mkstemp creates files 0600; give the file what a plain open() would (0666 minus the umask).
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


_MODE = _default_mode()


def free_space(folder: PathLike) -> str:
    """The free space of `folder`'s file system, for error messages ("12.3 GiB")."""
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return "unknown"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if free < 1024 or unit == "TiB":
            return f"{free:.1f} {unit}" if unit != "B" else f"{free} B"
        free /= 1024
    return "unknown"  # pragma: no cover


def _fsync_folder(folder: Path) -> None:
    # The rename itself must reach the disk too; some systems (Windows) cannot open a folder.
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_atomically(path: PathLike, write: Callable[[BinaryIO], Any]) -> None:
    """Call ``write(handle)`` on a temporary file next to `path`, fsync it and rename it to `path`.

    On any error the temporary file is removed and `path` keeps its previous content; an
    ``OSError`` (full disk, no permission) is raised again naming `path` and the free space.
    """
    path = Path(path)
    folder = path.parent
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, _MODE)
        os.replace(tmp, path)
    except BaseException as error:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(error, OSError):
            reason = error.strerror or str(error)
            raise OSError(error.errno, f"could not write {path}: {reason} ({free_space(folder)} free in "
                                       f"{folder}); the previous file, if any, is unchanged") from error
        raise
    _fsync_folder(folder)


def save_atomically(obj: Any, path: PathLike) -> None:
    """``torch.save(obj, path)`` through ``write_atomically``."""
    import torch

    write_atomically(path, lambda handle: torch.save(obj, handle))
