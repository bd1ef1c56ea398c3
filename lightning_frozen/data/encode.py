"""Writing H.264 mp4 files with PyAV (libx264, yuv420p), for synthetic data and prepare."""

from __future__ import annotations

import os
from fractions import Fraction
from typing import Iterable, Optional, Union

import av
import numpy as np


class H264Writer:
    """Context manager that encodes RGB uint8 frames (H, W, 3) into an mp4 file.

    ``keyframe_interval`` bounds the frames between keyframes (cheap random access);
    ``tune="fastdecode"`` makes x264 skip the tools that slow decoding down. One encoder
    thread keeps the output byte-identical between runs.
    """

    def __init__(
        self,
        path: Union[str, os.PathLike],
        width: int,
        height: int,
        fps: Union[float, Fraction] = 10,
        crf: int = 23,
        preset: str = "veryfast",
        keyframe_interval: Optional[int] = None,
        tune: Optional[str] = None,
        threads: int = 1,
    ):
        if width % 2 or height % 2:
            raise ValueError(f"yuv420p needs even frame sizes, got {width}x{height}")
        self.container = av.open(str(path), "w", format="mp4")
        rate = Fraction(fps).limit_denominator(1001)
        self.stream = self.container.add_stream("libx264", rate=rate)
        self.time_base = 1 / rate
        self.frames_written = 0
        self.stream.width, self.stream.height = width, height
        self.stream.pix_fmt = "yuv420p"
        options = {"crf": str(crf), "preset": preset}
        if tune:
            options["tune"] = tune
        if keyframe_interval:
            options["g"] = str(keyframe_interval)
            options["keyint_min"] = str(keyframe_interval)
            options["sc_threshold"] = "0"
        self.stream.options = options
        self.stream.codec_context.thread_count = threads

    def write(self, frame: Union[np.ndarray, av.VideoFrame]) -> None:
        """Encode one frame: an RGB uint8 array or a PyAV frame already at the output size."""
        if isinstance(frame, np.ndarray):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
        # Explicit timestamps: without them x264's rate control sees undefined ones and
        # the output changes from run to run.
        frame.pts = self.frames_written
        frame.time_base = self.time_base
        self.frames_written += 1
        for packet in self.stream.encode(frame):
            self.container.mux(packet)

    def close(self) -> None:
        for packet in self.stream.encode():
            self.container.mux(packet)
        self.container.close()

    def __enter__(self) -> "H264Writer":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.container.close()


def write_video(
    path: Union[str, os.PathLike], frames: Iterable[np.ndarray], fps: float = 10, **options
) -> None:
    """Encode a sequence of RGB uint8 frames (F, H, W, 3) into an H.264 mp4 file."""
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8 (F, H, W, 3), got {frames.dtype} {frames.shape}")
    with H264Writer(path, frames.shape[2], frames.shape[1], fps=fps, **options) as writer:
        for frame in frames:
            writer.write(frame)
