"""The dataset core: the run state, a source that says what the sample at a position is, one reader.

Every text-video dataset -- files in the MSR-VTT, WebVid, CC3M or folder layouts, and LitData
shards -- is a ``TextMediaDataset``: a source that answers ``record(position)`` (the sample's id,
the path it is shown by, its captions and the media to decode: a file or the bytes of one) and
``replacements(position)`` (the positions lax loading tries, in order). The reader here turns a
position into the item all of them return:

    {"video": uint8 [F, 3, H, W], "text": str (or k strings), "meta": {"id", "path", "dataset", "index", ...}}

(``clips_per_video: N`` > 1: ``video`` is ``[N, F, 3, H, W]``, N clips sampled sparsely over the video.)

with the frame count, the epoch and the seed read per item from the ``RunState``, the frames and
the caption drawn from a generator keyed by where the item sits in the run, and an unreadable
sample replaced (lax) and counted, or named (strict).

``RunState`` is what decides a sample besides its position: the run's seed, the epoch, the frames
per clip. One object per DataModule, handed to every dataset and to the training sampler. Its
values live in a small shared-memory tensor, so DataLoader workers (forked, spawned or
persistent) read, per item, what the main process wrote when the loader started; nothing is
re-sent to them and no loader is rebuilt when a frame curriculum moves to its next stage. All
randomness of the data comes from ``RunState.generator(*key)``: seeded by the run's seed and a
key that says where the numbers are used (dataset seed, epoch, position, attempt), never by what
ran before, so a resumed run draws exactly what the interrupted one would have.
"""
from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Literal, Mapping, Optional, Sequence, Union

import numpy as np
import torch
from torch.utils.data import Dataset, get_worker_info

from .video import VideoReadError, decode_frames, decode_image, read_frames, read_image

log = logging.getLogger(__name__)

Split = Literal["train", "val", "test"]
Loading = Literal["strict", "lax"]
_SKIP_SLOTS = 256
_SEED, _EPOCH, _FRAMES = range(3)


class RunState:
    """The run's seed, the data epoch and the frames per clip, shared with DataLoader workers.

    ``schedule`` (frames per clip as a function of the epoch; the frame curriculum hands one in)
    decides the frame count whenever an epoch begins.
    """

    def __init__(self, seed: int = 0, num_frames: int = 4, epoch: int = 0) -> None:
        self._values = torch.zeros(3, dtype=torch.int64).share_memory_()  # before any worker starts
        self._values[_SEED] = int(seed)
        self.schedule: Optional[Callable[[int], int]] = None
        self.set_num_frames(num_frames)
        self._values[_EPOCH] = int(epoch)

    @property
    def seed(self) -> int:
        return int(self._values[_SEED])

    @property
    def epoch(self) -> int:
        return int(self._values[_EPOCH])

    @property
    def num_frames(self) -> int:
        return int(self._values[_FRAMES])

    def set_num_frames(self, num_frames: int) -> None:
        if int(num_frames) < 1:
            raise ValueError(f"num_frames must be >= 1, got {num_frames}")
        self._values[_FRAMES] = int(num_frames)

    def set_schedule(self, schedule: Optional[Callable[[int], int]]) -> None:
        """Frames per clip by epoch from now on (None: keep the current count); applied to the current epoch."""
        self.schedule = schedule
        self.begin_epoch(self.epoch)

    def begin_epoch(self, epoch: int) -> None:
        """The data of `epoch` comes next: its number, and its frame count when a schedule is set."""
        self._values[_EPOCH] = int(epoch)
        if self.schedule is not None:
            self.set_num_frames(self.schedule(int(epoch)))

    @contextlib.contextmanager
    def frames(self, num_frames: int) -> Iterator[None]:
        """Read clips of `num_frames` frames inside the block (the demo's probe of a stage's model)."""
        kept = self.num_frames
        self.set_num_frames(num_frames)
        try:
            yield
        finally:
            self.set_num_frames(kept)

    def generator(self, *key: int) -> torch.Generator:
        """A generator seeded by the run's seed and `key` alone; no global random state goes in or out."""
        high, low = np.random.SeedSequence([self.seed, *map(int, key)]).generate_state(2)
        return torch.Generator().manual_seed((int(high) << 32) | int(low))

    def __getstate__(self) -> dict[str, Any]:
        # Workers need the shared values, not the schedule (a bound method of a Lightning callback).
        return {"_values": self._values, "schedule": None}

    def __repr__(self) -> str:
        return f"RunState(seed={self.seed}, epoch={self.epoch}, num_frames={self.num_frames})"


@dataclass(frozen=True)
class Record:
    """One sample as its source knows it. ``media`` is a file path or the bytes of the file."""

    id: str
    path: str                              # how the sample is shown in meta and errors
    captions: Sequence[str]
    media: Union[Path, bytes, memoryview]
    image: bool = False                    # a still image: read as a one-frame clip
    meta: Mapping[str, Any] = field(default_factory=dict)  # what else the item's meta carries (a class label)


class SkipCount:
    """Samples lax loading replaced, one shared-memory slot per DataLoader worker (slot 0: the main
    process), so forked or spawned workers add to it without locks."""

    def __init__(self) -> None:
        self._slots = torch.zeros(_SKIP_SLOTS, dtype=torch.int64).share_memory_()  # before any worker starts

    def add(self) -> None:
        info = get_worker_info()
        self._slots[0 if info is None else 1 + info.id % (_SKIP_SLOTS - 1)] += 1

    def reset(self) -> None:
        self._slots.zero_()

    @property
    def total(self) -> int:
        return int(self._slots.sum())


class TextMediaDataset(Dataset):
    """What every text-video dataset shares: frame reading, caption choice, meta, lax replacement.

    Args:
        split: "train" draws frames at random inside each interval and a random caption; other
            splits take the middle frames and the first caption (see ``mode``).
        frame_size: the square side clips come back at (None: the native size).
        fix_start: a fixed frame offset inside each interval (multi-clip testing, sliding windows).
        mode: "rand" or "uniform" frame sampling; None follows the split.
        frame_interval: frames a fixed stride apart (the TimeSformer/ViViT sampler: a clip spans
            (F - 1) * interval + 1 frames); None spreads the F frames over the whole video.
        clips_per_video: N clips per item spread over the video (ClipBERT's sparse sampling: one from
            each of N equal segments; see ``sample_clip_indices``); N > 1 makes ``video`` ``[N, F, 3, H, W]``.
        num_threads: decoder threads per clip.
        decode_backend: "pyav" (sparse decoding, the default) or "decord".
        loading: "strict" names the first unreadable sample and stops; "lax" replaces it by the next
            readable one and counts it (``num_skipped``); None: the source's default (``default_loading``:
            strict for files, lax for shards, whose files ``shard`` checked when it wrote them).
        seed: this dataset's seed, keyed into every item's randomness (and a subsample's choice).
        max_replace_attempts: unreadable samples in a row lax loading looks past before it gives up.
        name: the dataset's name in batches of joint training and in skip counts.
    """

    dataset_name = "dataset"
    default_loading: Loading = "strict"

    def __init__(
        self,
        split: Split = "train",
        frame_size: Optional[int] = 256,
        fix_start: Optional[int] = None,
        mode: Optional[Literal["rand", "uniform"]] = None,
        frame_interval: Optional[int] = None,
        clips_per_video: int = 1,
        num_threads: int = 1,
        decode_backend: Literal["pyav", "decord"] = "pyav",
        loading: Optional[Loading] = None,
        seed: int = 0,
        max_replace_attempts: int = 100,
        name: Optional[str] = None,
    ) -> None:
        loading = loading or self.default_loading
        choices = ((split, ("train", "val", "test"), "split"), (loading, ("strict", "lax"), "loading"),
                   (mode, ("rand", "uniform", None), "mode"), (decode_backend, ("pyav", "decord"), "decode_backend"))
        for value, allowed, what in choices:
            if value not in allowed:
                raise ValueError(f"{type(self).__name__}: {what} must be one of {allowed}, got {value!r}")
        if frame_size is not None and frame_size < 1:
            raise ValueError(f"frame_size must be a positive number of pixels (or null for the native size), "
                             f"got {frame_size}")
        if max_replace_attempts < 1:
            raise ValueError(f"max_replace_attempts must be >= 1, got {max_replace_attempts}")
        if frame_interval is not None and frame_interval < 1:
            raise ValueError(f"frame_interval must be >= 1 frame (or null to spread the frames over the video), "
                             f"got {frame_interval}")
        if clips_per_video < 1:
            raise ValueError(f"clips_per_video must be >= 1, got {clips_per_video}")
        self.split = split
        self.frame_size = frame_size
        self.fix_start = fix_start
        self.mode = mode or ("rand" if split == "train" else "uniform")
        self.frame_interval = frame_interval
        self.clips_per_video = clips_per_video
        self.num_threads = num_threads
        self.decode_backend = decode_backend
        self.loading = loading
        self.seed = seed
        self.max_replace_attempts = max_replace_attempts
        if name is not None:
            self.dataset_name = name
        self.multi_caption = False
        self.run_state = RunState()  # a DataModule hands every dataset its own (use_run_state)
        self.skips = SkipCount()

    # --- the source (subclasses) ---------------------------------------------------------
    def __len__(self) -> int:
        raise NotImplementedError

    def record(self, position: int) -> Record:
        """The sample at `position` (0 <= position < len)."""
        raise NotImplementedError

    def replacements(self, position: int) -> Iterable[int]:
        """Positions to read for `position`, in order: itself, then what lax loading may use instead."""
        count = len(self)
        return ((position + step) % count for step in range(min(self.max_replace_attempts, count)))

    @property
    def where(self) -> str:
        """Where the samples come from, for error messages."""
        raise NotImplementedError

    @property
    def max_captions(self) -> int:
        """k, the caption count of multi-caption items (sources with ``multi_caption`` define it)."""
        raise NotImplementedError

    # --- run state ---------------------------------------------------------------------
    def use_run_state(self, run_state: RunState) -> None:
        """Read the epoch, frames per clip and the run's seed from `run_state` (the DataModule's)."""
        self.run_state = run_state

    @property
    def num_frames(self) -> int:
        return self.run_state.num_frames

    @property
    def epoch(self) -> int:
        """The epoch the item's randomness is keyed by: evaluation splits read the same items every time."""
        return self.run_state.epoch if self.split == "train" else 0

    @property
    def num_skipped(self) -> int:
        """Samples replaced as unreadable (lax loading) since the last reset, all workers."""
        return self.skips.total

    def reset_skipped(self) -> None:
        self.skips.reset()

    # --- items -------------------------------------------------------------------------
    def read(self, position: int) -> dict[str, Any]:
        """The item at `position`, or under lax loading the first readable of its replacements.

        An item that replaces unreadable ones keeps its own ``meta["index"]`` and lists their paths
        in ``meta["skipped"]``: evaluation and predict count each position once, so an unreadable
        video is never scored or written under another's data.
        """
        skipped: list[str] = []
        for attempt, candidate in enumerate(self.replacements(position)):
            try:
                item = self._item(candidate, attempt)
            except VideoReadError as error:
                if self.loading == "strict":
                    raise
                self.skips.add()
                skipped.append(error.path)
                log.warning("%s: replacing an unreadable sample: %s", self.dataset_name, error)
                continue
            if skipped:
                item["meta"]["skipped"] = skipped
            return item
        raise RuntimeError(f"{type(self).__name__}: {len(skipped)} samples in a row from position {position} were "
                           f"unreadable in {self.where}; check the files (loading='strict' names the first)")

    def _item(self, position: int, attempt: int) -> dict[str, Any]:
        record = self.record(position)
        generator = self.run_state.generator(self.seed, self.epoch, position, attempt)
        video = self._decode(record, generator)
        text = self._text(record.captions, generator)
        meta: dict[str, Any] = {"id": str(record.id), "path": record.path, "dataset": self.dataset_name,
                                "index": position, **record.meta}
        if self.multi_caption:
            meta["caption_mask"] = [i < len(record.captions) for i in range(len(text))]
        return {"video": video, "text": text, "meta": meta}

    def _decode(self, record: Record, generator: torch.Generator) -> torch.Tensor:
        media, size, name = record.media, self.frame_size, record.path
        if record.image:
            read = read_image if isinstance(media, Path) else decode_image
            return read(media, size, name=name)
        clips, length = self.clips_per_video, self.num_frames
        frames = dict(num_frames=length, mode=self.mode, fix_start=self.fix_start, size=size, name=name,
                      num_threads=self.num_threads, generator=generator, backend=self.decode_backend,
                      num_clips=clips, frame_interval=self.frame_interval)
        video = read_frames(media, **frames) if isinstance(media, Path) else decode_frames(media, **frames)
        return video if clips == 1 else video.view(clips, length, *video.shape[1:])

    def _text(self, captions: Sequence[str], generator: torch.Generator) -> Union[str, list[str]]:
        if self.multi_caption:
            return list(captions) + [""] * (self.max_captions - len(captions))
        if self.split == "train" and len(captions) > 1:
            return captions[int(torch.randint(len(captions), (1,), generator=generator))]
        return captions[0]

    def __getitem__(self, position: int) -> dict[str, Any]:
        if not 0 <= position < len(self):
            raise IndexError(f"index {position} out of range for {len(self)} samples")
        return self.read(position)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({self.where}, split={self.split!r}, samples={len(self)}, "
                f"frame_size={self.frame_size}, loading={self.loading!r})")
