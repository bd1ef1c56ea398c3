"""A subcommand's `--help` text, kept between calls.

`fit --help` builds LightningCLI's parser (torch, Lightning, every model and data class) and
`index --help` imports torch: seconds for a text that changes only with this package's code, the
installed versions of what builds it and the terminal's width. The first call prints the help
and keeps the text under the user's cache folder ($XDG_CACHE_HOME or ~/.cache); later calls print
it without importing anything heavy. A cache that cannot be read or written is ignored.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import os
import shutil
import sys
from importlib import metadata
from pathlib import Path
from typing import Callable

from lightning_frozen.atomic import write_atomically

PACKAGE = Path(__file__).resolve().parent
# What the help text is built from, besides this package's own files.
BUILT_FROM = ("lightning-frozen", "pytorch-lightning", "jsonargparse", "torch", "transformers", "timm")


def cache_path(command: str) -> Path:
    """Where `command --help` is kept for this code, these versions and this terminal width."""
    digest = hashlib.sha256(f"{command}\0{shutil.get_terminal_size().columns}".encode())
    for name in BUILT_FROM:
        try:
            digest.update(f"\0{name}={metadata.version(name)}".encode())
        except metadata.PackageNotFoundError:
            digest.update(f"\0{name}=absent".encode())
    for path in sorted(PACKAGE.rglob("*.py")):
        stat = path.stat()
        digest.update(f"\0{path.relative_to(PACKAGE)}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return root / "lightning-frozen" / "help" / f"{command}-{digest.hexdigest()[:24]}.txt"


def print_help(command: str, build: Callable[[], object]) -> int:
    """Print `command --help`: the kept text, or what `build()` prints (kept when it ends with code 0)."""
    path = cache_path(command)
    with contextlib.suppress(OSError, UnicodeDecodeError):
        sys.stdout.write(path.read_text(encoding="utf-8"))
        return 0
    captured = io.StringIO()
    try:
        with contextlib.redirect_stdout(captured):
            result = build()
        code = result if isinstance(result, int) else 0
    except SystemExit as exit_:  # argparse ends a help with SystemExit(0)
        code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
    finally:
        sys.stdout.write(captured.getvalue())
    text = captured.getvalue()
    if code == 0 and text.startswith("usage:"):
        with contextlib.suppress(OSError):
            for stale in path.parent.glob(f"{command}-*.txt"):  # texts of earlier code or versions
                stale.unlink()
            write_atomically(path, lambda handle: handle.write(text.encode("utf-8")))
    return code
