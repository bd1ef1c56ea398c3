"""TextVideoDataset: the source side of every dataset of files under a root.

A subclass only says where its metadata is (``_load_metadata`` returns a DataFrame with
``id``, ``path`` relative to ``root``, and ``captions``, a list of strings per row); this class
checks the captions, keeps a seeded subset (``subsample``) or a fresh one per epoch
(``max_samples``), and answers ``record(position)``. Reading the item (frames, caption,
meta, lax replacement) is the dataset core's (``lightning_frozen.data.core``).
"""

from __future__ import annotations

import functools
import logging
import os
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import pandas as pd

from .core import Loading, Record, Split, TextMediaDataset
from .metadata_checks import clean_captions, reject

log = logging.getLogger(__name__)

__all__ = ["Loading", "Split", "TextVideoDataset", "find_file", "read_table"]


class TextVideoDataset(TextMediaDataset):
    """Samples listed in metadata files under ``root``; items as ``TextMediaDataset`` reads them.

    ``subsample`` keeps a fixed seeded subset (a fraction in (0, 1] or a count); ``max_samples``
    caps each epoch to a fresh seeded subset (drawn from the run state's epoch). The other
    arguments are the dataset core's (split, frame_size, fix_start, mode, num_threads,
    decode_backend, loading, seed, max_replace_attempts, name).
    """

    dataset_name = "base"
    images = False  # whether the files are still images (one-frame clips)

    def __init__(
        self,
        root: Union[str, os.PathLike],
        subsample: Union[float, int, None] = None,
        max_samples: Optional[int] = None,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(
                f"{type(self).__name__}: dataset root '{self.root}' is not a directory; "
                "pass the folder that holds the dataset"
            )
        if max_samples is not None and max_samples < 1:
            raise ValueError(f"max_samples must be >= 1 (or null for every sample), got {max_samples}")
        self.num_dropped = 0  # metadata records left out by lax loading (see _checked_captions)
        records = self._load_metadata()
        missing = {"id", "path", "captions"} - set(records.columns)
        if missing:
            raise RuntimeError(f"{type(self).__name__}._load_metadata lacks columns {missing}")
        records = self._checked_captions(records.reset_index(drop=True))
        self.records = self._subsample(records, subsample)
        if len(self.records) == 0:
            raise ValueError(
                f"{type(self).__name__}({self.root}, split={self.split!r}) has no samples; "
                "check the metadata files and the subsample setting"
            )
        self.max_samples = max_samples
        self._epoch_order: Optional[tuple[int, np.ndarray]] = None  # (epoch, order), per process

    # --- subclass hooks -------------------------------------------------------------
    # Where the captions come from, for error messages (subclasses set them in _load_metadata).
    metadata_file: Optional[Path] = None
    caption_field = "caption"

    def _load_metadata(self) -> pd.DataFrame:
        """Return a DataFrame with ``id``, ``path`` (relative to root) and ``captions``."""
        raise NotImplementedError

    def under_root(self, path: Union[str, os.PathLike]) -> Path:
        """A metadata file named in a config: as given when absolute, else relative to ``root``."""
        path = Path(path)
        return path if path.is_absolute() else self.root / path

    # --- metadata checks ------------------------------------------------------------
    def _reject(self, problem: str, offenders: list[str], fix: str) -> None:
        """Strict: one error naming the metadata file and the offenders. Lax: count them and warn once."""
        where = f"'{self.metadata_file}'" if self.metadata_file else f"the metadata under '{self.root}'"
        reject(f"{type(self).__name__} ({where})", self.loading, problem, offenders, fix)
        self.num_dropped += len(offenders)

    def _checked_captions(self, records: pd.DataFrame) -> pd.DataFrame:
        """Every caption a non-empty string: found at setup, not epochs later."""
        cleaned, offenders = clean_captions(records)
        self._reject(f"record(s) with a missing or empty {self.caption_field!r}", offenders,
                     f"Give every record a non-empty {self.caption_field!r}")
        records = records.assign(captions=cleaned)
        return records[records["captions"].map(len) > 0].reset_index(drop=True)

    # --- the source ---------------------------------------------------------------------
    def _subsample(self, records: pd.DataFrame, subsample: Union[float, int, None]) -> pd.DataFrame:
        if subsample is None:
            return records
        if isinstance(subsample, float) and not isinstance(subsample, bool):
            if not 0 < subsample <= 1:
                raise ValueError(f"subsample as a fraction must be in (0, 1], got {subsample}")
            count = max(1, round(len(records) * subsample))
        elif isinstance(subsample, int) and subsample >= 1:
            count = min(subsample, len(records))
        else:
            raise ValueError(f"subsample must be a fraction in (0, 1] or a count >= 1, got {subsample!r}")
        keep = np.random.default_rng(self.seed).permutation(len(records))[:count]
        return records.iloc[np.sort(keep)].reset_index(drop=True)

    def __len__(self) -> int:
        if self.max_samples is None:
            return len(self.records)
        return min(len(self.records), self.max_samples)

    def _record_index(self, position: int) -> int:
        if self.max_samples is None or self.max_samples >= len(self.records):
            return position
        epoch = self.epoch
        if self._epoch_order is None or self._epoch_order[0] != epoch:
            rng = np.random.default_rng([self.seed, epoch])
            self._epoch_order = (epoch, rng.permutation(len(self.records))[: self.max_samples])
        return int(self._epoch_order[1][position])

    def record(self, position: int) -> Record:
        row = self.records.iloc[self._record_index(position)]
        return Record(id=str(row["id"]), path=str(row["path"]), captions=row["captions"],
                      media=self.root / row["path"], image=self.images)

    @property
    def where(self) -> str:
        return f"'{self.root}'"

    @property
    def num_captions(self) -> int:
        """Captions an evaluation of every sample scores (k per item for multi-caption items)."""
        if self.multi_caption:
            return int(self.records["captions"].map(len).sum())
        return len(self)

    @functools.cached_property
    def max_captions(self) -> int:
        """k, the caption count of multi-caption items (longest caption list)."""
        return int(self.records["captions"].map(len).max())


def read_table(path: Path, required: set[str], what: str) -> pd.DataFrame:
    """Read a CSV/TSV (tab-separated by ``.tsv`` extension) and check its columns."""
    if not path.is_file():
        raise FileNotFoundError(f"{what}: metadata file '{path}' not found")
    sep = "\t" if path.suffix.lower() == ".tsv" else ","
    try:
        table = pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise ValueError(f"{what}: '{path}' is not a readable {'TSV' if sep == chr(9) else 'CSV'} table "
                         f"({str(err).strip()}); replace it with a clean copy") from None
    missing = required - set(table.columns)
    if missing:
        raise ValueError(
            f"{what}: '{path}' lacks column(s) {sorted(missing)}; it has {list(table.columns)}"
        )
    return table


def find_file(candidates: list[Path], what: str, hint: str) -> Path:
    """First existing file of ``candidates``, or an error listing where it looked."""
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    looked = ", ".join(f"'{c}'" for c in candidates)
    raise FileNotFoundError(f"{what}: no metadata file found (looked for {looked}); {hint}")
