"""Training from LitData shards (written by `lightning-frozen shard`): the WebVid-10M / CC3M path.

A shard sample is ``{"id", "path", "captions" (a JSON list), "kind" ("video" or "image"),
"media" (the mp4 or image bytes)}``. ``StreamingVideoText`` and ``StreamingImageText`` are LitData
``StreamingDataset``\\ s that decode those bytes inside the DataLoader workers with the same
reader as the file datasets (``decode_frames`` / ``decode_image``: sparse PyAV decoding from
memory) and return the same items, so collation and the on-device kornia augmentation of
``FrozenDataModule`` are shared. LitData does the rest: chunks on local disk or object
storage, a local cache, splitting over ranks and workers, a resumable loader.

How it keeps the project's guarantees:

* Frames per clip are read per item from shared memory (``set_num_frames``), so a frame
  curriculum stage changes what the next items decode without rebuilding the loader (which
  would reset LitData's epoch and resume state).
* Per-item randomness (frames, caption) comes from ``sample_generator(seed, epoch, index,
  attempt)``, where ``index`` is the sample's position in the shards and ``epoch`` LitData's
  epoch: a resumed loader draws exactly what the interrupted one would have.
* A sample that fails to decode (``shard`` checked every one, so this means damaged storage)
  is replaced by the next decodable sample of the same chunk and counted (``num_skipped``),
  never dropped: dropping would give ranks different batch counts (a hang in the loss's
  all-gather) and break LitData's resume position (batches x batch size).
* ``StreamingLoader`` (LitData's ``StreamingDataLoader``) goes into Lightning checkpoints, and a
  run resumed from a mid-epoch checkpoint reads exactly the samples not yet seen, then starts the
  next epoch afresh.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Callable, Iterator, Literal, Optional, Union

import numpy as np
import torch
from litdata import StreamingDataLoader, StreamingDataset
from litdata.streaming.sampler import ChunkedIndex
from litdata.utilities.env import _DistributedEnv
from pytorch_lightning.utilities import rank_zero_info

from .base import Loading, SharedFrameCount, SharedSkipCount, first_readable, pick_caption, sample_generator
from .video import decode_frames, decode_image

__all__ = ["StreamingImageText", "StreamingLoader", "StreamingVideoText"]



class _StreamingTextMedia(SharedSkipCount, StreamingDataset):
    """What both streaming datasets share; subclasses say how ``media`` bytes decode."""

    dataset_name = "stream"
    kind = "video"  # what the shards must hold ("kind" of each sample, written by `shard`)

    def __init__(
        self,
        input_dir: str,
        split: Literal["train", "val", "test"] = "train",
        frame_size: Optional[int] = 256,
        name: Optional[str] = None,
        loading: Loading = "lax",
        seed: int = 0,
        shuffle: Optional[bool] = None,
        cache_dir: Optional[str] = None,
        max_cache_size: Union[int, str, None] = None,
        storage_options: Optional[dict] = None,
        max_pre_download: int = 2,
        subsample: float = 1.0,
        max_replace_attempts: int = 100,
    ) -> None:
        if split not in ("train", "val", "test"):
            raise ValueError(f"split must be 'train', 'val' or 'test', got {split!r}")
        if loading not in ("strict", "lax"):
            raise ValueError(f"loading must be 'strict' or 'lax', got {loading!r}")
        super().__init__(
            input_dir,
            cache_dir=cache_dir,
            shuffle=split == "train" if shuffle is None else shuffle,
            seed=seed,
            max_cache_size=max_cache_size,
            storage_options=storage_options,
            max_pre_download=max_pre_download,
            subsample=float(subsample),
            batch_decode=0,  # one sample's bytes at a time: clips are large, windows would copy many
        )
        self.split = split
        self.frame_size = frame_size
        self.loading = loading
        self.max_replace_attempts = max_replace_attempts
        if name is not None:
            self.dataset_name = name
        self._share_skips()

    # --- what subclasses define --------------------------------------------------------
    def _decode(self, media: Any, name: str, generator: torch.Generator) -> torch.Tensor:
        raise NotImplementedError

    # --- ranks: LightningCLI builds datasets before the process group exists ---------------
    def detect_ranks(self) -> None:
        """Re-read world size and rank (the loader calls this once DDP is set up).

        LitData reads them when the dataset is built; under LightningCLI that is before
        ``init_process_group``, which would make every rank read the whole dataset.
        """
        env = _DistributedEnv.detect()
        if env != self.distributed_env:
            self.distributed_env = env
            self.shuffler = None  # per-rank lengths change with the world size

    # --- items ------------------------------------------------------------------------
    def __getitem__(self, index: Union[ChunkedIndex, int]) -> dict[str, Any]:
        """``{"video": uint8 [F, 3, H, W], "text": str, "meta": {"id", "path", "dataset", "index"}}``."""
        if not isinstance(index, ChunkedIndex):
            index = ChunkedIndex(*self._locate(int(index)))
        if not index.is_last_index:
            return self._first_decodable(index)
        # LitData releases a chunk once its last item is read: replacements from it come first.
        item = self._first_decodable(dataclasses.replace(index, is_last_index=False))
        super().__getitem__(index)
        return item

    def _locate(self, position: int) -> tuple[int, int]:
        """(index, chunk index) of a sample, for random access outside the stream."""
        if self.cache is None:
            super().__getitem__(position)  # builds the cache
        return self.cache._get_chunk_index_from_index(position)

    def _first_decodable(self, index: ChunkedIndex) -> dict[str, Any]:
        begin, end = self.cache.get_chunk_intervals()[index.chunk_index][1:3]
        attempts = min(self.max_replace_attempts, end - begin)

        def read(position: int, attempt: int) -> dict[str, Any]:
            # A replacement comes from the same chunk, already local; only the first read may
            # carry the worker's chunk list (which starts LitData's downloads).
            at = index if attempt == 0 else dataclasses.replace(index, index=position, chunk_indexes=None)
            sample = StreamingDataset.__getitem__(self, at)
            self._check_kind(sample)
            generator = sample_generator(self.seed, self.current_epoch, position, attempt)
            return self._item(self._decode(sample["media"], sample["path"], generator), sample, position, generator)

        candidates = ((begin + (index.index - begin + attempt) % (end - begin), attempt) for attempt in range(attempts))
        item = first_readable(candidates, read, self.loading, self._count_skip, self.dataset_name)
        if item is None:
            raise RuntimeError(
                f"{type(self).__name__}: {attempts} samples in a row from index {index.index} could not be "
                f"decoded in {self.input_dir.url or self.input_dir.path}; check the shards (loading='strict' "
                "names the first)"
            )
        return item

    def _check_kind(self, sample: dict) -> None:
        if sample.get("kind") != self.kind:
            other = "StreamingImageText" if sample.get("kind") == "image" else "StreamingVideoText"
            raise ValueError(
                f"{type(self).__name__}: the shards in {self.input_dir.url or self.input_dir.path} hold "
                f"{sample.get('kind')!r} samples, not {self.kind!r}; read them with {other}"
            )

    def _item(self, media: torch.Tensor, sample: dict, position: int, generator: torch.Generator) -> dict[str, Any]:
        captions = json.loads(sample["captions"])
        text = pick_caption(captions, self.split == "train", generator)
        meta = {"id": sample["id"], "path": sample["path"], "dataset": self.dataset_name, "index": position}
        return {"video": media, "text": text, "meta": meta}


class StreamingVideoText(SharedFrameCount, _StreamingTextMedia):
    """Text-video pairs from shards (WebVid, MSR-VTT, folders): frames decoded in the workers.

    ``input_dir`` is a local folder or a URL LitData reads (``s3://bucket/prefix``, ``gs://``);
    ``cache_dir`` and ``max_cache_size`` bound the local copy of remote chunks. The frame
    arguments are those of the file datasets (``num_frames``, ``frame_size``, ``fix_start``,
    ``mode``: "rand" for the train split, "uniform" otherwise; ``num_threads`` and
    ``decode_backend`` go to the decoder). ``name`` names its batches in joint training
    (default "stream"). ``seed`` seeds LitData's shuffle and the per-item randomness;
    ``loading="lax"`` (default) replaces an undecodable sample (see the module docstring).
    """

    def __init__(
        self,
        input_dir: str,
        split: Literal["train", "val", "test"] = "train",
        num_frames: int = 4,
        frame_size: Optional[int] = 256,
        fix_start: Optional[int] = None,
        mode: Optional[Literal["rand", "uniform"]] = None,
        num_threads: int = 1,
        decode_backend: Literal["pyav", "decord"] = "pyav",
        **kwargs: Any,
    ) -> None:
        super().__init__(input_dir, split=split, frame_size=frame_size, **kwargs)
        self._share_num_frames(num_frames)
        self.fix_start = fix_start
        self.mode = mode or ("rand" if split == "train" else "uniform")
        self.num_threads = num_threads
        self.decode_backend = decode_backend

    def _decode(self, media: Any, name: str, generator: torch.Generator) -> torch.Tensor:
        return decode_frames(media, self.num_frames, self.mode, self.fix_start, self.frame_size, name=name,
                             num_threads=self.num_threads, generator=generator, backend=self.decode_backend)


class StreamingImageText(_StreamingTextMedia):
    """Image-caption pairs from shards (CC3M): one-frame clips ``[1, 3, H, W]``.

    Arguments as ``StreamingVideoText`` without the frame ones; default name "cc3m".
    """

    dataset_name = "cc3m"
    kind = "image"

    def _decode(self, media: Any, name: str, generator: torch.Generator) -> torch.Tensor:
        return decode_image(media, self.frame_size, name=name)


class StreamingLoader(StreamingDataLoader):
    """LitData's ``StreamingDataLoader`` with the DataModule's epoch-start hook, resumable in Lightning.

    ``on_start`` runs where each pass over the data starts, in the main process, before any
    worker reads (as ``FrozenDataModule``'s file loaders do). Lightning saves ``state_dict`` in
    its checkpoints and restores it on resume (it knows the loader's length, so it fetches no
    batch ahead and the state is that of the last batch trained on).
    """

    def __init__(self, dataset: StreamingDataset, *args: Any, on_start: Optional[Callable[[], None]] = None,
                 **kwargs: Any) -> None:
        if callable(getattr(dataset, "detect_ranks", None)):
            dataset.detect_ranks()
        super().__init__(dataset, *args, **kwargs)
        self.on_start = on_start
        self._resumed_pass_started = False

    def state_dict(self) -> dict[str, Any]:
        """LitData's state with plain Python numbers (it holds numpy ones after ``subsample``), so a
        Lightning checkpoint still loads with ``torch.load(weights_only=True)``."""
        return _plain_numbers(super().state_dict())

    def load_state_dict(self, obj: dict[str, Any]) -> None:
        super().load_state_dict(obj)
        self._resumed_pass_started = False

    def __iter__(self) -> Iterator[Any]:
        if self.restore and self._resumed_pass_started:
            # Lightning ends an epoch after its count of batches, without asking for one more:
            # LitData then keeps its resume flag and would replay the resumed pass. This is a new pass.
            self.restore = False
        self._resumed_pass_started = self.restore
        if self.on_start is not None:
            self.on_start()
        return super().__iter__()

    @property
    def samples_per_epoch(self) -> int:
        """Samples this rank reads per epoch (LitData's drop_last leaves the rest out)."""
        return self.dataset.get_len(self.num_workers, self.batch_size)

    @property
    def dropped_per_epoch(self) -> int:
        """Samples no rank reads in an epoch: what LitData's drop_last leaves over."""
        per_rank = self.samples_per_epoch  # sets up the dataset's shuffler, which holds the chunk index
        total = sum(end - begin for _, begin, end, _ in self.dataset.shuffler.cache.get_chunk_intervals())
        return total - per_rank * self.dataset.distributed_env.world_size


def _plain_numbers(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _plain_numbers(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_plain_numbers(item) for item in value)
    return value.item() if isinstance(value, np.generic) else value


def is_streaming(dataset: Any) -> bool:
    """A LitData dataset, which needs LitData's loader."""
    return isinstance(dataset, StreamingDataset)


def streaming_loader(dataset: StreamingDataset, batch_size: int, train: bool, on_start: Callable[[], None],
                     **kwargs: Any) -> StreamingLoader:
    """The DataModule's loader for a streaming dataset: training drops LitData's last partial batches.

    ``drop_last`` here is LitData's: every rank and worker gets whole batches of the same
    count (so DDP steps stay in step); the left-over samples are logged.
    """
    loader = StreamingLoader(dataset, batch_size=batch_size, drop_last=train, on_start=on_start, **kwargs)
    if train:
        rank_zero_info(f"{getattr(dataset, 'dataset_name', type(dataset).__name__)}: {loader.samples_per_epoch} "
                       f"samples per epoch per rank, {loader.dropped_per_epoch} left out by drop_last")
    return loader
