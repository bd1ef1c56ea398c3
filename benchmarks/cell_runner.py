"""Running benchmark cells so that a failing cell, a spent budget or a kill loses only that cell.

A *job* measures one cell (or a group of cells timed together) and returns one dict of figures
per cell. ``run_jobs`` starts them in order and

* starts none after ``budget_s`` (the first always runs); those left are listed under ``not_run``;
* isolates each: any exception is recorded on its cells (type, message, last frames), the
  ``cleanup`` callback frees what it left behind and the next job runs;
* on ``KeyboardInterrupt`` (the SIGINT of ``timeout -s INT``) marks its cells ``interrupted``,
  lists the rest under ``not_run`` and stops;
* rewrites the JSON atomically (``lightning_frozen.atomic``) before and after every job, so
  that a run killed outright leaves a whole file in which the job it died in reads ``running``.

A GPU is lent for minutes at a time: this is what makes such a run keep what it measured.
"""
from __future__ import annotations

import json
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from lightning_frozen.atomic import write_atomically  # noqa: E402

STATUSES = ("running", "ok", "failed", "interrupted")


@dataclass(frozen=True)
class Job:
    """Cells measured by one call of `run`, which returns one dict of figures per name, in order."""

    names: tuple[str, ...]
    kind: str
    run: Callable[[], list[dict[str, Any]]]


class Report:
    """The run's JSON: a header, then one record per cell; ``save`` replaces the file atomically."""

    def __init__(self, path: Path, header: dict[str, Any]):
        self.path = Path(path)
        self.data: dict[str, Any] = {**header, "cells": [], "not_run": []}

    def save(self) -> None:
        text = json.dumps(self.data, indent=1).encode()
        write_atomically(self.path, lambda handle: handle.write(text))

    def records(self, kind: Optional[str] = None) -> list[dict[str, Any]]:
        """The finished, successful cells (of one kind)."""
        return [r for r in self.data["cells"] if r["status"] == "ok" and kind in (None, r["kind"])]

    def find(self, name: str) -> Optional[dict[str, Any]]:
        """The successful cell called `name`, if any."""
        return next((r for r in self.records() if r["name"] == name), None)


def progress(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _short_path(filename: str) -> str:
    """Paths in the project relative to it, library paths from the package folder on."""
    for marker in (str(ROOT) + "/", "site-packages/", "dist-packages/"):
        if marker in filename:
            return filename.split(marker, 1)[1]
    return filename


def error_record(error: BaseException, frames: int = 8) -> dict[str, Any]:
    """What a failed cell keeps: the exception's type and message, and its last `frames` frames."""
    summary = traceback.extract_tb(error.__traceback__)[-frames:]
    return {"type": f"{type(error).__module__}.{type(error).__qualname__}",
            "message": str(error)[-4000:],
            "frames": [f"{_short_path(f.filename)}:{f.lineno} in {f.name}: {(f.line or '').strip()}"
                       for f in summary]}


def run_jobs(jobs: list[Job], report: Report, budget_s: Optional[float], cleanup: Callable[[], None]) -> bool:
    """Run `jobs` into `report` (see the module docstring); False when interrupted."""
    started = time.perf_counter()
    for i, job in enumerate(jobs):
        if i > 0 and budget_s is not None and time.perf_counter() - started > budget_s:
            report.data["not_run"] = [name for j in jobs[i:] for name in j.names]
            progress(f"budget of {budget_s:.0f} s spent: {len(report.data['not_run'])} cells not run")
            report.save()
            break
        records = [{"name": name, "kind": job.kind, "status": "running"} for name in job.names]
        report.data["cells"] += records
        report.save()
        start = time.perf_counter()
        failure: Optional[dict[str, Any]] = None
        try:
            for record, figures in zip(records, job.run(), strict=True):
                record.update(figures, status="ok")
        except KeyboardInterrupt as error:
            failure = {"status": "interrupted", "error": error_record(error)}
        except Exception as error:  # noqa: BLE001  any failure stays with its cell; the next one runs
            failure = {"status": "failed", "error": error_record(error)}
            progress(f"{' + '.join(job.names)}: {failure['error']['type']}: {str(error)[:300]}")
        for record in records:
            record.update(failure or {}, seconds=time.perf_counter() - start)
        report.data["elapsed_s"] = time.perf_counter() - started
        if failure is not None and failure["status"] == "interrupted":
            report.data["not_run"] = [name for j in jobs[i + 1:] for name in j.names]
            report.save()
            progress(f"interrupted in {' + '.join(job.names)}: {len(report.data['not_run'])} cells not run")
            return False
        cleanup()
        report.save()
    return True


def profile_summary(averages: Any, cuda: bool, steps: int, top: int = 12) -> dict[str, Any]:
    """Where the time of `steps` profiled steps went (``torch.profiler``'s ``key_averages()``): the
    `top` CPU operators and, on CUDA, the `top` GPU kernels (and copies) by self time, per step,
    with their share of the total."""
    def summary(self_us: Callable[[Any], float]) -> dict[str, Any]:
        timed = sorted((pair for pair in ((self_us(e), e) for e in averages) if pair[0] > 0), key=lambda p: -p[0])
        total = sum(t for t, _ in timed) or 1.0
        return {"total_ms_per_step": total / steps / 1000,
                "top": [{"name": e.key[:160], "calls_per_step": e.count / steps, "ms_per_step": t / steps / 1000,
                         "share": t / total} for t, e in timed[:top]]}

    def device_us(event: Any) -> float:
        value = getattr(event, "self_device_time_total", None)  # torch < 2.4: self_cuda_time_total
        return getattr(event, "self_cuda_time_total", 0.0) if value is None else value

    out = {"steps": steps, "cpu_operators": summary(lambda e: e.self_cpu_time_total)}
    if cuda:
        out["gpu_kernels"] = summary(device_us)
    return out
