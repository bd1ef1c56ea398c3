"""The hostile-user catalogue: each case is one row (a command, its exit code, the words its message must
hold, the files it must leave as they were), so the next careless or hostile input is one more row.

    CASES = [
        Case("search with k <= 0", lambda w: ["search", str(w.index), "a dog", "-k", "0"],
             code=2, says=["-k", ">= 1"], untouched=lambda w: [w.index]),
    ]

    @pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
    def test_catalogue(case, workspace):
        run_case(case, workspace)

A case runs `lightning-frozen` in this process (``lightning_frozen.cli.main``) unless ``subprocess``
is set (signals, a process that must really exit). Files are compared by content hash, and a folder
by the set of its files and their hashes.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence


@dataclass
class Case:
    """One hostile input: ``argv(workspace)`` must end with exit ``code``, its output holding every word of
    ``says`` (case-insensitive) and none of ``never_says``, and leave every path of ``untouched(workspace)``
    as it was (``prepare(workspace)`` runs first)."""

    name: str
    argv: Callable[[Any], Sequence[str]]
    code: int = 2
    says: Sequence[str] = ()
    never_says: Sequence[str] = ("Traceback (most recent call last)",)
    untouched: Callable[[Any], Sequence[Path]] = lambda workspace: ()
    prepare: Optional[Callable[[Any], None]] = None
    subprocess: bool = False
    max_lines: Optional[int] = 4  # a user's mistake is one message, not a page of usage
    env: dict = field(default_factory=dict)
    interrupt: Optional[Callable[[Any], bool]] = None  # Ctrl-C (SIGINT to the process group) once this holds


def fingerprint(path: Path) -> dict[str, str]:
    """Relative path -> sha256 of every file under ``path`` (or of ``path`` itself); {} when it does not exist."""
    path = Path(path)
    if path.is_file():
        return {".": hashlib.sha256(path.read_bytes()).hexdigest()}
    if not path.exists():
        return {}
    return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(path.rglob("*")) if p.is_file()}


def run_command(argv: Sequence[str], in_subprocess: bool = False, env: Optional[dict] = None,
                timeout: float = 240, interrupt: Optional[Callable[[], bool]] = None) -> tuple[int, str]:
    """(exit code, stdout + stderr) of ``lightning-frozen argv``; ``interrupt``: in a subprocess, press Ctrl-C
    (SIGINT to its process group, as a terminal does) once it holds."""
    if in_subprocess or interrupt is not None:
        process = subprocess.Popen([sys.executable, "-m", "lightning_frozen.cli", *argv], stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, text=True, env={**os.environ, **(env or {})},
                                   start_new_session=interrupt is not None)
        if interrupt is not None:
            deadline = time.monotonic() + timeout
            while process.poll() is None and not interrupt() and time.monotonic() < deadline:
                time.sleep(0.01)
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGINT)
        output, _ = process.communicate(timeout=timeout)
        return process.returncode, output
    from lightning_frozen.cli import main

    out = io.StringIO()
    code = 0
    saved = {key: os.environ.get(key) for key in (env or {})}
    os.environ.update(env or {})
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            try:
                main(list(argv))
            except SystemExit as exit_:
                code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    return code, out.getvalue()


def run_case(case: Case, workspace: Any) -> str:
    """Run one case and check it; returns its output (for extra assertions)."""
    if case.prepare is not None:
        case.prepare(workspace)
    watched = list(case.untouched(workspace))
    before = {str(path): fingerprint(path) for path in watched}
    interrupt = (lambda: case.interrupt(workspace)) if case.interrupt is not None else None
    code, output = run_command(case.argv(workspace), case.subprocess, case.env, interrupt=interrupt)
    shown = f"--- {case.name}: exit {code}\n{output[-3000:]}"
    assert code == case.code, shown
    lowered = output.lower()
    for word in case.says:
        assert word.lower() in lowered, f"missing {word!r}\n{shown}"
    for word in case.never_says:
        assert word.lower() not in lowered, f"unwanted {word!r}\n{shown}"
    if case.max_lines is not None:
        lines = [line for line in output.splitlines() if line.strip()]
        assert len(lines) <= case.max_lines, f"{len(lines)} lines, at most {case.max_lines}\n{shown}"
    for path in watched:
        assert fingerprint(path) == before[str(path)], f"{path} changed\n{shown}"
    return output
