"""Training from LitData shards (written by `lightning-frozen shard`): the WebVid-10M / CC3M path.

A shard sample is ``{"id", "path", "captions" (a JSON list), "kind" ("video" or "image"),
"media" (the mp4 or image bytes)}``. ``StreamingVideoText`` and ``StreamingImageText`` are thin
sources of the dataset core: a sample's bytes are decoded in the DataLoader workers by the same
reader as the file datasets' (sparse PyAV decoding from memory), and the items are the same, so
collation and the on-device augmentation of ``FrozenDataModule`` are shared. LitData does the
rest: chunks on local disk or object storage, a local cache, splitting over ranks and workers, a
resumable loader (``StreamingLoader``, below).

How it keeps the project's guarantees:

* LitData's dataset (``stream``) is built on first use, which under ``FrozenDataModule`` is its
  ``setup``: after the process group exists, so LitData sees every rank (LightningCLI builds the
  sources before it), and a config names an S3 bucket without opening it.
* Frames per clip, the epoch and the run's seed come from the run state per item, so a frame
  curriculum stage changes what the next items decode without rebuilding the loader (which
  would reset LitData's epoch and resume state).
* A sample that fails to decode (``shard`` checked every one, so this means damaged storage) is
  replaced under lax loading by the next decodable sample of the same chunk and counted, never
  dropped: dropping would give ranks different batch counts (a hang in the loss's all-gather)
  and break LitData's resume position (batches x batch size).
"""

from __future__ import annotations

import bisect
import dataclasses
import json
from typing import Any, Callable, Iterable, Iterator, Optional, Union

import numpy as np
from litdata import StreamingDataLoader, StreamingDataset
from litdata.streaming.sampler import ChunkedIndex
from pytorch_lightning.utilities import rank_zero_info

from .core import Record, TextMediaDataset
from .datamodule import RunLoader

__all__ = ["StreamingImageText", "StreamingLoader", "StreamingVideoText"]


class StreamingVideoText(TextMediaDataset):
    """Text-video pairs from shards (WebVid, MSR-VTT, folders): frames decoded in the workers.

    ``input_dir`` is a local folder or a URL LitData reads (``s3://bucket/prefix``, ``gs://``);
    ``cache_dir`` and ``max_cache_size`` bound the local copy of remote chunks; ``storage_options``
    go to the object store's client; ``max_pre_download`` chunks are fetched ahead; ``subsample``
    keeps a fraction of the samples; ``shuffle`` (default: for the train split) shuffles chunks and
    samples with ``seed``. The other arguments are the dataset core's (split, frame_size, fix_start,
    mode, num_threads, decode_backend, loading, seed, max_replace_attempts, name).
    """

    dataset_name = "stream"
    default_loading = "lax"
    is_streaming = True  # read through StreamingLoader
    kind = "video"  # what the shards must hold ("kind" of each sample, written by `shard`)

    def __init__(
        self,
        input_dir: str,
        cache_dir: Optional[str] = None,
        max_cache_size: Union[int, str, None] = None,
        storage_options: Optional[dict] = None,
        max_pre_download: int = 2,
        subsample: float = 1.0,
        shuffle: Optional[bool] = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.input_dir = input_dir
        self.shuffle = self.split == "train" if shuffle is None else shuffle
        self._stream_args = dict(cache_dir=cache_dir, max_cache_size=max_cache_size, storage_options=storage_options,
                                 max_pre_download=max_pre_download, subsample=float(subsample))
        self._stream: Optional[_Shards] = None
        self._reading: Optional[ChunkedIndex] = None  # the index LitData asked for, while it is read

    @property
    def stream(self) -> StreamingDataset:
        """LitData's dataset over the shards, built on first use."""
        if self._stream is None:
            self._stream = _Shards(self, self.input_dir, shuffle=self.shuffle, seed=self.seed, **self._stream_args)
        return self._stream

    def __len__(self) -> int:
        return len(self.stream)

    @property
    def where(self) -> str:
        return str(self.input_dir)

    # --- the source ---------------------------------------------------------------------
    def read_indexed(self, index: ChunkedIndex) -> dict[str, Any]:
        """The item for an index LitData's iteration hands out (replacements come from its chunk)."""
        self._reading = dataclasses.replace(index, is_last_index=False)
        try:
            item = self.read(index.index)
        finally:
            self._reading = None
        if index.is_last_index:
            # LitData releases a chunk once its last item is read: replacements from it came first.
            StreamingDataset.__getitem__(self.stream, index)
        return item

    def _chunk_bounds(self, position: int) -> tuple[int, int, int]:
        """(chunk, first, end) of the chunk holding the sample at `position`."""
        if self._reading is not None:
            chunk = self._reading.chunk_index
        else:
            if self.stream.cache is None:
                StreamingDataset.__getitem__(self.stream, position)  # LitData builds its chunk index on first access
            starts = [interval[1] for interval in self.stream.cache.get_chunk_intervals()]
            chunk = bisect.bisect_right(starts, position) - 1
        first, end = self.stream.cache.get_chunk_intervals()[chunk][1:3]
        return chunk, first, end

    def replacements(self, position: int) -> Iterable[int]:
        # Within the chunk, already local: a replacement from another chunk could start a download.
        _, first, end = self._chunk_bounds(position)
        size = end - first
        return (first + (position - first + step) % size for step in range(min(self.max_replace_attempts, size)))

    def record(self, position: int) -> Record:
        reading = self._reading
        if reading is not None and position == reading.index:
            index = reading  # only the first read carries the worker's chunk list (it starts LitData's downloads)
        else:
            chunk, _, _ = self._chunk_bounds(position)
            index = ChunkedIndex(index=position, chunk_index=chunk)
        sample = StreamingDataset.__getitem__(self.stream, index)
        if sample.get("kind") != self.kind:
            other = "StreamingImageText" if sample.get("kind") == "image" else "StreamingVideoText"
            raise ValueError(f"{type(self).__name__}: the shards in {self.input_dir} hold {sample.get('kind')!r} "
                             f"samples, not {self.kind!r}; read them with {other}")
        return Record(id=sample["id"], path=sample["path"], captions=json.loads(sample["captions"]),
                      media=sample["media"], image=self.kind == "image")

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_reading": None}


class StreamingImageText(StreamingVideoText):
    """Image-caption pairs from shards (CC3M): one-frame clips ``[1, 3, H, W]``; default name "cc3m"."""

    dataset_name = "cc3m"
    kind = "image"


class _Shards(StreamingDataset):
    """LitData's dataset whose items are read by their source (decoded, captioned, replaced when broken)."""

    def __init__(self, source: StreamingVideoText, input_dir: str, **kwargs: Any) -> None:
        super().__init__(input_dir, batch_decode=0, **kwargs)  # one sample's bytes at a time: clips are large
        self.source = source

    def __getitem__(self, index: Union[ChunkedIndex, int]) -> dict[str, Any]:
        if isinstance(index, ChunkedIndex):
            return self.source.read_indexed(index)
        return self.source.read(int(index))


class StreamingLoader(RunLoader, StreamingDataLoader):
    """LitData's ``StreamingDataLoader`` over a streaming source's shards, resumable in Lightning.

    Lightning saves ``state_dict`` in its checkpoints and restores it on resume (it knows the
    loader's length, so it fetches no batch ahead and the state is that of the last batch
    trained on).
    """

    def __init__(self, source: Any, *args: Any, on_start: Optional[Callable[[], None]] = None, **kwargs: Any) -> None:
        super().__init__(getattr(source, "stream", source), *args, **kwargs)  # a source, or LitData's dataset
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


def streaming_loader(source: StreamingVideoText, batch_size: int, train: bool, on_start: Callable[[], None],
                     **kwargs: Any) -> StreamingLoader:
    """The DataModule's loader for a streaming source: training drops LitData's last partial batches.

    ``drop_last`` here is LitData's: every rank and worker gets whole batches of the same
    count (so DDP steps stay in step); the left-over samples are logged.
    """
    loader = StreamingLoader(source, batch_size=batch_size, drop_last=train, on_start=on_start, **kwargs)
    if train:
        rank_zero_info(f"{source.dataset_name}: {loader.samples_per_epoch} samples per epoch per rank, "
                       f"{loader.dropped_per_epoch} left out by drop_last")
    return loader
