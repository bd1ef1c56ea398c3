"""Decode only what a few sampled frames need (PyAV), the fast path of ``read_frames``.

A training clip uses F frames out of hundreds. A plain reader (decord) decodes every
frame from the last keyframe up to each sampled one and converts each to RGB. Here:

* whole GOPs (keyframe to keyframe) holding no sampled frame are demuxed but never
  decoded, so files with short keyframe intervals (``prepare_videos``) cost little;
* inside a needed GOP, frames no other frame refers to (non-reference B-frames) are
  skipped by the decoder unless sampled (``skip_frame="NONREF"``), which changes
  nothing in the frames that are decoded;
* only the sampled frames are converted to RGB.

Frames are indexed by timestamp (constant frame rate assumed). ``None`` comes back when
a file cannot be indexed that way (no frame count or rate in the header, or a sampled
index that never shows up, e.g. variable frame rate); the caller then uses decord.
"""

from __future__ import annotations

import io
import os
from typing import BinaryIO, Callable, Optional, Union

import numpy as np

# A video as a file path or as the file's bytes (a shard's sample), decoded the same way.
Media = Union[str, os.PathLike, bytes, bytearray, memoryview]


def open_media(media: Media) -> Union[str, BinaryIO]:
    """What PyAV and decord open: the path as a string, or an in-memory file over the bytes."""
    if isinstance(media, (bytes, bytearray, memoryview)):
        return io.BytesIO(media)
    return str(media)


def decode_sampled_frames(
    media: Media, choose: Callable[[int], list[int]], num_threads: int = 1
) -> Optional[tuple[np.ndarray, list[int]]]:
    """(RGB uint8 frames (F, H, W, 3), the indices ``choose(frame_count)`` gave), or None (see module)."""
    import av

    with av.open(open_media(media)) as container:
        if not container.streams.video:
            raise ValueError("no video stream")
        stream = container.streams.video[0]
        count, rate = stream.frames, stream.average_rate
        if not count or not rate:
            return None
        context = stream.codec_context
        context.thread_count = num_threads
        if num_threads > 1:
            context.thread_type = "SLICE"  # frame threads would apply skip_frame late
        start = stream.start_time or 0
        scale = stream.time_base * rate
        indices = choose(count)
        wanted = set(indices)
        found: dict[int, np.ndarray] = {}

        def position(pts: Optional[int]) -> int:
            return -1 if pts is None else int(round(float((pts - start) * scale)))

        def keep(frames) -> None:
            for frame in frames:
                i = position(frame.pts)
                if i in wanted and i not in found:
                    found[i] = frame.to_ndarray(format="rgb24")

        def decode_gop(packets) -> None:
            here = {position(p.pts) for p in packets} & wanted
            if not here:
                return  # no sampled frame in this GOP: skip it undecoded
            for packet in packets:
                context.skip_frame = "DEFAULT" if position(packet.pts) in wanted else "NONREF"
                keep(context.decode(packet))
                if here <= found.keys():
                    break  # the rest of the GOP only leads to frames nobody asked for
            else:
                context.skip_frame = "DEFAULT"
                keep(context.decode(None))  # drain frames held back for reordering
            context.skip_frame = "DEFAULT"
            context.flush_buffers()

        gop: list = []
        for packet in container.demux(stream):
            if packet.size == 0:
                continue
            if packet.is_keyframe and gop:
                decode_gop(gop)
                gop = []
                if len(found) == len(wanted):
                    break
            gop.append(packet)
        else:
            decode_gop(gop)  # the last GOP
    if len(found) < len(wanted):
        return None
    return np.stack([found[i] for i in indices]), indices
