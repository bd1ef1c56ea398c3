"""Metadata checks that run when a dataset is built, before the first step: every caption a
non-empty string, every split id known. They read the metadata tables only, never the video
files (WebVid-10M would stat ten million files); unreadable files are still found lazily.

Strict loading raises one error naming the file, the field, at most ten offenders and their
count; lax loading leaves the offenders out and reports them once.
"""
from __future__ import annotations

import logging
import math
from typing import Any, Sequence

import pandas as pd

log = logging.getLogger(__name__)

MAX_SHOWN = 10


def offender_list(offenders: Sequence[str]) -> str:
    """'a, b, c' for at most ten offenders, with the total when there are more."""
    shown = ", ".join(str(o) for o in offenders[:MAX_SHOWN])
    return shown + (f", ... ({len(offenders)} in all)" if len(offenders) > MAX_SHOWN else "")


def reject(owner: str, loading: str, problem: str, offenders: Sequence[str], fix: str) -> None:
    """Raise (strict) or warn once (lax) about `offenders`; nothing when there are none."""
    if not offenders:
        return
    message = f"{owner}: {len(offenders)} {problem}: {offender_list(offenders)}"
    if loading == "strict":
        raise ValueError(f"{message}. {fix}, or set loading: lax to leave them out")
    log.warning("%s (loading: lax: left out)", message)


def _caption_problem(caption: Any) -> str:
    if caption is None or (isinstance(caption, float) and math.isnan(caption)):
        return "missing"
    if not isinstance(caption, str):
        return f"not a string: {caption!r}"
    return "" if caption.strip() else "empty"


def clean_captions(records: pd.DataFrame) -> tuple[list[list[str]], list[str]]:
    """Each row's usable captions, and ``"<id> (<problem>)"`` for every row with an unusable one."""
    cleaned, offenders = [], []
    for record_id, captions in zip(records["id"], records["captions"]):
        captions = list(captions) if isinstance(captions, (list, tuple)) else [captions]
        problems = [_caption_problem(c) for c in captions] or ["no caption"]
        bad = [p for p in problems if p]
        if bad:
            offenders.append(f"{record_id} ({bad[0]})")
        cleaned.append([c for c, p in zip(captions, problems) if not p])
    return cleaned, offenders
