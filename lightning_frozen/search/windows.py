"""A video as overlapping windows, and the windows of many videos as the batches ``predict`` embeds.

Each window is sampled like a test clip of a whole video (``sample_frame_indices``,
"uniform": the middle frame of F equal intervals), so a window looks to the model like the
clips it was trained on. All windows of a video are decoded in one pass through the file
(``read_chosen_frames``), as small uint8 squares; normalisation happens on the device with
the DataModule's evaluation transform, and ``FrozenModule.predict_step`` embeds them.
"""
from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional

import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset

from ..data.video import VideoReadError, check_file, pyav_cause, read_chosen_frames, sample_frame_indices
from .store import EmbeddingSettings, VideoRecord


def plan_windows(num_video_frames: int, fps: float, window_seconds: float,
                 stride_seconds: float) -> list[tuple[int, int]]:
    """(first frame, end frame exclusive) of each window, in time order.

    A video no longer than one window gives one window over all of it; otherwise windows
    start every stride, and a last window ends at the video's end so its tail is covered.
    """
    if num_video_frames < 1 or fps <= 0:
        raise ValueError(f"a video needs frames and a frame rate, got {num_video_frames} frames at {fps} fps")
    length = max(1, round(window_seconds * fps))
    step = max(1, round(stride_seconds * fps))
    if num_video_frames <= length:
        return [(0, num_video_frames)]
    starts = list(range(0, num_video_frames - length + 1, step))
    if starts[-1] + length < num_video_frames:
        starts.append(num_video_frames - length)
    return [(s, s + length) for s in starts]


def window_frame_indices(spans: list[tuple[int, int]], frames: int) -> list[int]:
    """The frames of every window's clip, window after window (``frames`` per window)."""
    return [start + i for start, end in spans for i in sample_frame_indices(end - start, frames, "uniform")]


def probe(path: Path) -> tuple[float, str]:
    """(frame rate, codec name) from the container header, without decoding."""
    import av

    with av.open(str(path)) as container:
        if not container.streams.video:
            raise ValueError("no video stream")
        stream = container.streams.video[0]
        rate = stream.average_rate or stream.guessed_rate
        if not rate:
            raise ValueError("the header gives no frame rate")
        return float(rate), stream.codec_context.name


def jpeg(frame: torch.Tensor, size: int) -> bytes:
    """One uint8 [3, H, W] frame as a ``size`` x ``size`` JPEG thumbnail (deterministic bytes)."""
    from PIL import Image

    image = Image.fromarray(frame.permute(1, 2, 0).numpy())
    if image.size != (size, size):
        image = image.resize((size, size), Image.Resampling.BICUBIC)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=85)
    return buffer.getvalue()


@dataclass
class DecodedVideo:
    """A video's record (spans, thumbnails; no embeddings yet), its window clips and their frames."""

    record: VideoRecord
    clips: Optional[torch.Tensor]   # uint8 [windows, F, 3, S, S]; None when unreadable
    frames: tuple = ()              # per window, the video frame numbers its clip holds


def decode_video(root: Path, relative: str, settings: EmbeddingSettings) -> DecodedVideo:
    """Decode every window of one video; an unreadable file comes back with its reason, never raises."""
    path = root / relative
    stat = path.stat()
    record = VideoRecord(path=relative, size=stat.st_size, mtime_ns=stat.st_mtime_ns)
    try:
        check_file(path, relative)
        try:
            record.fps, record.codec = probe(path)
        except Exception as error:  # PyAV raises av.error.* for files it cannot open
            raise VideoReadError(relative, pyav_cause(error)) from error  # the cause, never the absolute path
        spans: list[tuple[int, int]] = []
        chosen: list[int] = []

        def choose(count: int) -> list[int]:
            spans[:] = plan_windows(count, record.fps, settings.window_seconds, settings.stride_seconds)
            record.frames = count
            chosen[:] = window_frame_indices(spans, settings.frames)
            return chosen

        frames = read_chosen_frames(path, choose, settings.decode_size, name=relative)
    except VideoReadError as error:
        record.error = error.cause or str(error)
        return DecodedVideo(record, None)
    clips = frames.reshape(len(spans), settings.frames, *frames.shape[1:])
    middle = settings.frames // 2
    record.spans = tuple((start / record.fps, end / record.fps) for start, end in spans)
    record.thumbnails = tuple(jpeg(clip[middle], settings.thumb_size) for clip in clips)
    per_window = [tuple(chosen[i:i + settings.frames]) for i in range(0, len(chosen), settings.frames)]
    return DecodedVideo(record, clips, tuple(per_window))


class VideoWindows(Dataset):
    """Map-style dataset over videos: item i is ``decode_video`` of the i-th file (decoded in workers, in order)."""

    def __init__(self, root: os.PathLike, paths: list[str], settings: EmbeddingSettings):
        self.root = Path(root)
        self.paths = list(paths)
        self.settings = settings

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> DecodedVideo:
        return decode_video(self.root, self.paths[index], self.settings)


def groups(videos: Iterable[DecodedVideo], batch_size: int) -> Iterator[list[DecodedVideo]]:
    """Whole videos, gathered until they hold ``batch_size`` windows: one commit each.

    A group depends only on the videos from where it starts, so a resumed run (which starts
    at the first uncommitted video) forms the same groups, and embeds the same batches, as
    an uninterrupted one.
    """
    group: list[DecodedVideo] = []
    windows = 0
    for video in videos:
        group.append(video)
        windows += len(video.clips)
        if windows >= batch_size:
            yield group
            group, windows = [], 0
    if group:
        yield group


def this_rank_share(paths: list[str]) -> list[str]:
    """The videos this process embeds: all of them, or every world-size-th one under DDP."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return paths[dist.get_rank()::dist.get_world_size()]
    return paths


class ClosedGroup:
    """The records of a group of videos, carried by the group's last window item: one plain object,
    which Lightning's batch transfer passes on as it is instead of walking and copying every field
    of every record (thumbnails included) at each batch."""

    __slots__ = ("records",)

    def __init__(self, records: list[VideoRecord]):
        self.records = records


class WindowBatches(IterableDataset):
    """The readable videos of ``paths`` as batches of window items, for ``Trainer.predict``.

    Videos are decoded in order (``num_workers`` processes), gathered into groups of whole
    videos (``groups``), and each group is cut into batches of ``batch_size`` windows from its
    start, so a batch's windows never depend on where a run started. The group's last item
    carries the records of its videos (``meta["closes"]``, a ``ClosedGroup``): the prediction
    writer commits them once their embeddings are in. Unreadable videos yield nothing; ``index`` records
    them after the run. Each item's ``meta["frames"]`` names the video frames its clip holds:
    a per-frame video tower can encode each distinct frame of a batch once. Under DDP each
    rank takes its share of the videos (``this_rank_share``).
    """

    yields_batches = True  # FrozenDataModule collates each list this yields as one batch

    def __init__(self, root: os.PathLike, paths: list[str], settings: EmbeddingSettings, batch_size: int,
                 num_workers: int = 0):
        self.decoded = VideoWindows(root, paths, settings)
        self.batch_size = batch_size
        self.num_workers = num_workers

    def __iter__(self) -> Iterator[list[dict[str, Any]]]:
        share = VideoWindows(self.decoded.root, this_rank_share(self.decoded.paths), self.decoded.settings)
        videos = DataLoader(share, batch_size=None, num_workers=self.num_workers)
        count = 0
        for group in groups((v for v in videos if v.clips is not None), self.batch_size):
            items = []
            for video in group:
                for position, (clip, frames) in enumerate(zip(video.clips, video.frames)):
                    meta = {"id": f"{video.record.path}#{position}", "path": video.record.path, "index": count,
                            "frames": frames, "closes": None}
                    items.append({"video": clip, "meta": meta})
                    count += 1
            items[-1]["meta"]["closes"] = ClosedGroup([video.record for video in group])
            for first in range(0, len(items), self.batch_size):
                yield items[first:first + self.batch_size]

