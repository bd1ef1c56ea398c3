"""A video as overlapping windows: which frames each window's clip takes, and decoding them.

Each window is sampled like a test clip of a whole video (``sample_frame_indices``,
"uniform": the middle frame of F equal intervals), so a window looks to the model like the
clips it was trained on. All windows of a video are decoded in one pass through the file
(``read_chosen_frames``), as small uint8 squares; normalisation happens later with the
DataModule's evaluation transform.
"""
from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from torch.utils.data import Dataset

from ..data.video import VideoReadError, check_file, pyav_cause, read_chosen_frames, sample_frame_indices
from .store import EmbeddingSettings, VideoRecord

# Browsers play these codecs in MP4/WebM containers; anything else gets a transcode or a download link.
PLAYABLE_CODECS = frozenset({"h264", "vp8", "vp9", "av1"})
PLAYABLE_CONTAINERS = frozenset({".mp4", ".m4v", ".webm", ".mov"})


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
    """A video's record (spans, thumbnails; no embeddings yet) and its window clips."""

    record: VideoRecord
    clips: Optional[torch.Tensor]   # uint8 [windows, F, 3, S, S]; None when unreadable


def decode_video(root: Path, relative: str, settings: EmbeddingSettings) -> DecodedVideo:
    """Decode every window of one video; an unreadable file comes back with its reason, never raises."""
    path = root / relative
    stat = path.stat()
    record = VideoRecord(path=relative, size=stat.st_size, mtime_ns=stat.st_mtime_ns)
    try:
        if not path.resolve().is_relative_to(root.resolve()):
            raise VideoReadError(relative, "a link that leaves the indexed folder")
        check_file(path, relative)
        try:
            record.fps, record.codec = probe(path)
        except Exception as error:  # PyAV raises av.error.* for files it cannot open
            raise VideoReadError(relative, pyav_cause(error)) from error  # the cause, never the absolute path
        spans: list[tuple[int, int]] = []

        def choose(count: int) -> list[int]:
            spans[:] = plan_windows(count, record.fps, settings.window_seconds, settings.stride_seconds)
            record.frames = count
            return window_frame_indices(spans, settings.frames)

        frames = read_chosen_frames(path, choose, settings.decode_size, name=relative)
    except VideoReadError as error:
        record.error = error.cause or str(error)
        return DecodedVideo(record, None)
    clips = frames.reshape(len(spans), settings.frames, *frames.shape[1:])
    middle = settings.frames // 2
    record.spans = tuple((start / record.fps, end / record.fps) for start, end in spans)
    record.thumbnails = tuple(jpeg(clip[middle], settings.thumb_size) for clip in clips)
    return DecodedVideo(record, clips)


class VideoWindows(Dataset):
    """Map-style dataset over videos to (re)index: item i is ``decode_video`` of the i-th file.

    Lets a DataLoader decode in worker processes (in order) and Lightning's ``Trainer.predict``
    spread videos over ranks.
    """

    def __init__(self, root: os.PathLike, paths: list[str], settings: EmbeddingSettings):
        self.root = Path(root)
        self.paths = list(paths)
        self.settings = settings

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> DecodedVideo:
        return decode_video(self.root, self.paths[index], self.settings)


def browser_playable(path: str, codec: Optional[str]) -> bool:
    """Whether a browser's <video> plays this file as it is (else: transcode or download link)."""
    return Path(path).suffix.lower() in PLAYABLE_CONTAINERS and (codec or "") in PLAYABLE_CODECS


def stack_clips(videos: list[DecodedVideo]) -> torch.Tensor:
    """All window clips of the readable videos, in order."""
    clips = [v.clips for v in videos if v.clips is not None]
    return torch.cat(clips) if clips else torch.empty(0, dtype=torch.uint8)


def split_embeddings(videos: list[DecodedVideo], embeddings: np.ndarray) -> None:
    """Hand each readable video its rows of ``embeddings`` (in ``stack_clips`` order)."""
    offset = 0
    for video in videos:
        if video.clips is not None:
            count = len(video.clips)
            video.record.embeddings = embeddings[offset:offset + count]
            offset += count
