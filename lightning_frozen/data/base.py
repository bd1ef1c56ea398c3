"""TextVideoDataset: the part every text-video dataset shares.

A subclass only says where its metadata is (``_load_metadata`` returns a DataFrame with
``id``, ``path`` relative to ``root``, and ``captions``, a list of strings per row); this
class handles frame sampling, caption choice, subsampling, the per-epoch cap and
strict/lax handling of broken files.

Skip counting across DataLoader workers: ``SharedSkipCount`` (shared with the streaming
datasets), a small shared-memory tensor with one slot per worker that ``num_skipped`` sums.
"""

from __future__ import annotations

import functools
import logging
import os
from pathlib import Path
from typing import Any, Callable, Iterable, Literal, Optional, Union

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset, get_worker_info

from .metadata_checks import clean_captions, reject
from .video import VideoReadError, read_frames

log = logging.getLogger(__name__)

Split = Literal["train", "val", "test"]
Loading = Literal["strict", "lax"]
_SKIP_SLOTS = 256


class SharedFrameCount:
    """``num_frames`` in shared memory: the frame curriculum sets it in the main process between
    epochs and running (persistent) workers read the new value for their next item."""

    def _share_num_frames(self, num_frames: int) -> None:
        self._num_frames = torch.zeros(1, dtype=torch.int64).share_memory_()  # before any worker starts
        self.set_num_frames(num_frames)

    @property
    def num_frames(self) -> int:
        return int(self._num_frames[0])

    def set_num_frames(self, num_frames: int) -> None:
        """Change the frames per clip (frame curriculum); applies to the next items read, in every worker."""
        if int(num_frames) < 1:
            raise ValueError(f"num_frames must be >= 1, got {num_frames}")
        self._num_frames[0] = int(num_frames)


class SharedSkipCount:
    """Lax loading's count of skipped samples, one shared-memory slot per DataLoader worker (slot 0:
    the main process), so forked or spawned workers add to it without locks."""

    def _share_skips(self) -> None:
        self._skips = torch.zeros(_SKIP_SLOTS, dtype=torch.int64).share_memory_()  # before any worker starts

    @property
    def num_skipped(self) -> int:
        """Samples skipped as unreadable (lax loading) since the last reset, all workers."""
        return int(self._skips.sum())

    def reset_skipped(self) -> None:
        """Zero the skip counter (the DataModule does at each epoch start)."""
        self._skips.zero_()

    def _count_skip(self) -> None:
        info = get_worker_info()
        self._skips[0 if info is None else 1 + info.id % (_SKIP_SLOTS - 1)] += 1


def pick_caption(captions: list[str], train: bool, generator: torch.Generator) -> str:
    """One caption per item: drawn with the item's generator in training, the first otherwise."""
    if train and len(captions) > 1:
        return captions[int(torch.randint(len(captions), (1,), generator=generator))]
    return captions[0]


class TextVideoDataset(SharedFrameCount, SharedSkipCount, Dataset):
    """Base class: items are ``{"video", "text", "meta"}`` dicts (see ``__getitem__``).

    ``num_frames`` may be changed between epochs (the frame curriculum does, through
    ``set_num_frames``; the value lives in shared memory, so running workers see it).
    ``mode`` is "rand" for the train split, "uniform" otherwise.
    ``subsample`` keeps a fixed seeded subset (a fraction in (0, 1] or a count);
    ``max_samples`` caps each epoch to a fresh seeded subset drawn per ``set_epoch``.
    ``loading="lax"`` replaces an unreadable sample by the next readable index and
    counts it; ``"strict"`` raises ``VideoReadError``. ``frame_size`` is the square
    side clips come back at (None: native size); ``num_threads`` and
    ``decode_backend`` go to ``read_frames``.
    """

    dataset_name = "base"

    def __init__(
        self,
        root: Union[str, os.PathLike],
        split: Split = "train",
        num_frames: int = 4,
        frame_size: Optional[int] = 256,
        fix_start: Optional[int] = None,
        loading: Loading = "strict",
        subsample: Union[float, int, None] = None,
        max_samples: Optional[int] = None,
        seed: int = 0,
        mode: Optional[str] = None,
        num_threads: int = 1,
        max_skip_attempts: int = 100,
        decode_backend: str = "pyav",
    ):
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(
                f"{type(self).__name__}: dataset root '{self.root}' is not a directory; "
                "pass the folder that holds the dataset"
            )
        if split not in ("train", "val", "test"):
            raise ValueError(f"split must be 'train', 'val' or 'test', got {split!r}")
        if loading not in ("strict", "lax"):
            raise ValueError(f"loading must be 'strict' or 'lax', got {loading!r}")
        if mode is not None and mode not in ("rand", "uniform"):
            raise ValueError(f"mode must be 'rand', 'uniform' or None, got {mode!r}")
        self.split = split
        self._share_num_frames(num_frames)
        self.frame_size = frame_size
        self.fix_start = fix_start
        self.loading = loading
        self.seed = seed
        self._mode = mode
        self.num_threads = num_threads
        self.decode_backend = decode_backend
        self.max_skip_attempts = max_skip_attempts
        self.multi_caption = False
        if max_samples is not None and max_samples < 1:
            raise ValueError(f"max_samples must be >= 1 (or null for every sample), got {max_samples}")
        if frame_size is not None and frame_size < 1:
            raise ValueError(f"frame_size must be a positive number of pixels (or null for the native size), "
                             f"got {frame_size}")
        self.num_dropped = 0  # metadata records left out by lax loading (see _checked_captions)
        records = self._load_metadata()
        missing = {"id", "path", "captions"} - set(records.columns)
        if missing:
            raise RuntimeError(f"{type(self).__name__}._load_metadata lacks columns {missing}")
        records = self._checked_captions(records.reset_index(drop=True))
        self.records = self._subsample(records, subsample)
        if len(self.records) == 0:
            raise ValueError(
                f"{type(self).__name__}({self.root}, split={split!r}) has no samples; "
                "check the metadata files and the subsample setting"
            )
        self.max_samples = max_samples
        # Shared memory, like the skip counter: persistent workers keep their copy of the
        # dataset across epochs, and must still see the epoch the main process sets.
        self._epoch = torch.zeros(1, dtype=torch.int64).share_memory_()
        self._epoch_order: Optional[tuple[int, np.ndarray]] = None  # (epoch, order), per process
        self._share_skips()

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

    def _read(self, path: Path, generator: torch.Generator) -> torch.Tensor:
        """Decode one sample's pixels (videos here; image datasets override); `generator` draws frames."""
        return read_frames(
            path,
            self.num_frames,
            self.mode,
            self.fix_start,
            self.frame_size,
            root=self.root,
            num_threads=self.num_threads,
            generator=generator,
            backend=self.decode_backend,
        )

    # --- settings ---------------------------------------------------------------------
    @property
    def mode(self) -> str:
        """Frame sampling mode: random per interval for training, middle frame otherwise."""
        if self._mode is not None:
            return self._mode
        return "rand" if self.split == "train" else "uniform"

    @property
    def epoch(self) -> int:
        return int(self._epoch[0])

    def set_epoch(self, epoch: int) -> None:
        """Draw a new ``max_samples`` subset for this epoch (call before the loader starts)."""
        self._epoch[0] = int(epoch)

    # --- indexing ---------------------------------------------------------------------
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

    def _record_index(self, index: int) -> int:
        if self.max_samples is None or self.max_samples >= len(self.records):
            return index
        epoch = self.epoch
        if self._epoch_order is None or self._epoch_order[0] != epoch:
            rng = np.random.default_rng([self.seed, epoch])
            self._epoch_order = (epoch, rng.permutation(len(self.records))[: self.max_samples])
        return int(self._epoch_order[1][index])

    # --- items ------------------------------------------------------------------------
    def _text(self, captions: list[str], generator: torch.Generator) -> Union[str, list[str]]:
        if self.multi_caption:
            width = self.max_captions
            return list(captions) + [""] * (width - len(captions))
        return pick_caption(captions, self.split == "train", generator)

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

    def __getitem__(self, index: int) -> dict[str, Any]:
        """``{"video": uint8 [F, 3, H, W], "text": str (or k strings), "meta": {...}}``.

        meta holds ``id``, ``path`` (relative to root), ``dataset``, ``index`` (the
        position of the sample actually returned), for multi-caption items
        ``caption_mask`` (False where the text list is padded) and, when lax loading
        replaced unreadable samples by this one, ``skipped`` (their paths). The
        replacement keeps its own ``index``: evaluation and predict count each position
        once, so an unreadable video is never scored or written under another's data.
        """
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} samples")
        attempts = min(self.max_skip_attempts, len(self))
        candidates = (((index + attempt) % len(self), attempt) for attempt in range(attempts))
        item = first_readable(candidates, self._read_at, self.loading, self._count_skip, self.dataset_name)
        if item is None:
            raise RuntimeError(
                f"{type(self).__name__}: {attempts} samples in a row from index {index} were "
                f"unreadable under {self.root}; check the files (loading='strict' names the first)"
            )
        return item

    def _read_at(self, position: int, attempt: int) -> dict[str, Any]:
        row = self.records.iloc[self._record_index(position)]
        generator = sample_generator(self.seed, self.epoch, position, attempt)
        return self._item(self._read(self.root / row["path"], generator), row, position, generator)

    def _item(self, video: torch.Tensor, row: pd.Series, position: int, generator: torch.Generator) -> dict[str, Any]:
        text = self._text(row["captions"], generator)
        meta: dict[str, Any] = {
            "id": str(row["id"]),
            "path": str(row["path"]),
            "dataset": self.dataset_name,
            "index": position,
        }
        if self.multi_caption:
            meta["caption_mask"] = [i < len(row["captions"]) for i in range(len(text))]
        return {"video": video, "text": text, "meta": meta}

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(root='{self.root}', split={self.split!r}, "
            f"samples={len(self)}, num_frames={self.num_frames}, frame_size={self.frame_size}, "
            f"loading={self.loading!r})"
        )


def first_readable(candidates: Iterable[tuple[int, int]], read: Callable[[int, int], dict[str, Any]],
                   loading: Loading, count_skip: Callable[[], None], name: str) -> Optional[dict[str, Any]]:
    """Lax loading: ``read(position, attempt)`` for each candidate in turn, the first readable item.

    An unreadable sample (``VideoReadError``) raises under strict loading; under lax loading it
    is counted (``count_skip``), its path goes to the returned item's ``meta["skipped"]`` (so
    predict and test can say what they left out) and the next candidate is read. None when
    none was readable.
    """
    skipped: list[str] = []
    for position, attempt in candidates:
        try:
            item = read(position, attempt)
        except VideoReadError as error:
            if loading == "strict":
                raise
            count_skip()
            skipped.append(error.path)
            log.warning("%s: replacing an unreadable sample: %s", name, error)
            continue
        if skipped:
            item["meta"]["skipped"] = skipped
        return item
    return None


def run_generator(*key: int) -> torch.Generator:
    """A generator seeded by the run's seed (``seed_everything``) and `key` alone.

    No global random state goes in or comes out, so the numbers it gives depend only on
    where they are used in the run, never on what ran before.
    """
    run_seed = int(os.environ.get("PL_GLOBAL_SEED", 0))
    high, low = np.random.SeedSequence([run_seed, *key]).generate_state(2)
    return torch.Generator().manual_seed((int(high) << 32) | int(low))


def sample_generator(seed: int, epoch: int, position: int, attempt: int) -> torch.Generator:
    """The randomness of one item (its frames, its caption), from where it sits in the run.

    It depends on the run's seed (``seed_everything``), the dataset's ``seed``, the epoch, the
    item's position and the lax-loading attempt, never on which worker reads it or what was
    read before: a resumed loader draws exactly what the interrupted one would have.
    """
    return run_generator(seed, epoch, position, attempt)


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
