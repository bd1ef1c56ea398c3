"""Reading clips and images as small uint8 tensors, fast enough for data-loader workers.

Only the sampled frames are converted: each is cut to its central square and resized
(uint8) to one fixed size, so every clip of a batch has the same shape and workers ship
small tensors. Float conversion, augmentation and normalisation happen later, on the
training device.
"""

from __future__ import annotations

import functools
import io
import os
from pathlib import Path
from typing import BinaryIO, Callable, Literal, Optional, Union

import numpy as np
import torch

from .sparse_decode import Media, decode_sampled_frames, open_media

PathLike = Union[str, os.PathLike]
SampleMode = Literal["rand", "uniform"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif")


class VideoReadError(RuntimeError):
    """A clip or image that cannot be read: names the file and the cause.

    Raised for missing, empty, truncated and undecodable files, so a dataset can decide
    whether to skip the sample (lax loading) or stop (strict loading).
    """

    def __init__(self, path: PathLike, cause: object = None):
        self.path = str(path)
        self.cause = None if cause is None else str(cause)
        # A single-argument construction (torch's DataLoader re-raises worker errors as
        # ``type(exc)(message)``) keeps the message as it is.
        message = self.path if cause is None else f"cannot read '{self.path}': {self.cause}"
        super().__init__(message)

    def __reduce__(self):
        return (type(self), (self.path, self.cause))


def sample_frame_indices(
    num_video_frames: int,
    num_frames: int,
    mode: SampleMode = "rand",
    fix_start: Optional[int] = None,
    generator: Optional[torch.Generator] = None,
) -> list[int]:
    """Pick ``num_frames`` frame indices spread over the whole video.

    The video is split into ``num_frames`` equal intervals ``[floor(i*n/F), floor((i+1)*n/F))``.
    "rand" takes a uniformly random frame of each interval (training), "uniform" the
    middle frame (testing), and ``fix_start`` a fixed offset into each interval (sliding
    windows; clipped to the interval's last frame). Videos shorter than ``num_frames``
    repeat frames, so exactly ``num_frames`` indices (sorted) always come back.
    """
    if num_video_frames < 1:
        raise ValueError(f"num_video_frames must be >= 1, got {num_video_frames}")
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    if mode not in ("rand", "uniform"):
        raise ValueError(f"mode must be 'rand' or 'uniform', got {mode!r}")
    if fix_start is not None and fix_start < 0:
        raise ValueError(f"fix_start must be >= 0, got {fix_start}")
    n, f = num_video_frames, num_frames
    starts = [min(i * n // f, n - 1) for i in range(f)]
    ends = [max((i + 1) * n // f, s + 1) for i, s in enumerate(starts)]  # exclusive
    if fix_start is not None:
        return [min(s + fix_start, e - 1) for s, e in zip(starts, ends)]
    if mode == "uniform":
        return [(s + e - 1) // 2 for s, e in zip(starts, ends)]
    lengths = torch.tensor([e - s for s, e in zip(starts, ends)], dtype=torch.float64)
    offsets = (torch.rand(f, generator=generator, dtype=torch.float64) * lengths).long()
    return [s + min(int(o), e - s - 1) for s, e, o in zip(starts, ends, offsets.tolist())]


def sample_clip_indices(
    num_video_frames: int,
    num_frames: int,
    num_clips: int = 1,
    frame_interval: Optional[int] = None,
    mode: SampleMode = "rand",
    fix_start: Optional[int] = None,
    generator: Optional[torch.Generator] = None,
) -> list[int]:
    """Frame indices of ``num_clips`` clips of ``num_frames`` frames each, clip after clip.

    Without ``frame_interval`` the video is split into ``num_clips`` equal segments (sparse
    sampling, as ClipBERT trains) and each segment's clip spreads its frames over the segment
    (``sample_frame_indices``). With it a clip's frames are ``frame_interval`` apart (the
    TimeSformer/ViViT sampler) and the clips' first frames are spread over the video: the frames a
    clip can start at are split into ``num_clips`` equal parts and clip i starts in part i, at
    random ("rand"), in its middle ("uniform") or ``fix_start`` frames into it (kept inside), so
    long clips may overlap. A clip longer than the video starts at frame 0 and repeats the last.
    """
    for label, count in (("num_video_frames", num_video_frames), ("num_frames", num_frames),
                         ("clips_per_video", num_clips)):
        if count < 1:
            raise ValueError(f"{label} must be >= 1, got {count}")
    if frame_interval is not None and frame_interval < 1:
        raise ValueError(f"frame_interval must be >= 1 frame (or null to spread the frames), got {frame_interval}")
    if frame_interval is None:
        return [first + i for first, end in _segments(num_video_frames, num_clips)
                for i in sample_frame_indices(end - first, num_frames, mode, fix_start, generator)]
    room = num_video_frames - ((num_frames - 1) * frame_interval + 1)  # the last frame a clip can start at
    indices: list[int] = []
    for first, end in _segments(room + 1, num_clips) if room >= 0 else [(0, 1)] * num_clips:
        start = first + _offset(end - first, mode, fix_start, generator)
        indices.extend(min(start + k * frame_interval, num_video_frames - 1) for k in range(num_frames))
    return indices


def _segments(count: int, parts: int) -> list[tuple[int, int]]:
    """``parts`` equal intervals ``[floor(i*n/p), floor((i+1)*n/p))`` of ``count`` frames, none empty."""
    starts = [min(i * count // parts, count - 1) for i in range(parts)]
    return [(s, max((i + 1) * count // parts, s + 1)) for i, s in enumerate(starts)]


def _offset(length: int, mode: SampleMode, fix_start: Optional[int], generator: Optional[torch.Generator]) -> int:
    """A position in ``[0, length)``: ``fix_start`` (kept inside), the middle ("uniform") or a random one."""
    if fix_start is not None:
        return min(fix_start, length - 1)
    if mode == "uniform":
        return (length - 1) // 2
    return int(torch.randint(length, (1,), generator=generator))


def scaled_size(height: int, width: int, size: int) -> tuple[int, int]:
    """(height, width) with the short side scaled to ``size``, aspect ratio kept."""
    if height <= width:
        return size, max(size, round(width * size / height))
    return max(size, round(height * size / width)), size


def check_file(path: Path, shown: str) -> None:
    if not path.exists():
        raise VideoReadError(shown, "file does not exist")
    if not path.is_file():
        raise VideoReadError(shown, "not a regular file")
    if path.stat().st_size == 0:
        raise VideoReadError(shown, "file is empty (0 bytes)")


def read_frames(
    path: PathLike,
    num_frames: int,
    mode: SampleMode = "uniform",
    fix_start: Optional[int] = None,
    size: Optional[int] = None,
    *,
    name: Optional[str] = None,
    num_threads: int = 1,
    generator: Optional[torch.Generator] = None,
    backend: str = "pyav",
    num_clips: int = 1,
    frame_interval: Optional[int] = None,
) -> torch.Tensor:
    """Decode ``num_frames`` frames of a video as uint8 ``[F, 3, size, size]``.

    With ``size`` the central square of each frame is scaled to ``size`` x ``size``
    (the short side scaled to ``size``, then centre-cropped); with ``size=None`` frames
    keep their native size. Images (by extension) come back as one-frame clips
    ``[1, 3, H, W]``. ``name`` is how errors show the file (default: its path). Raises
    ``VideoReadError`` for anything unreadable.

    ``backend="pyav"`` (default) decodes with ``sparse_decode``: only the GOPs and
    reference frames the sampled frames need, only those frames converted to RGB; files
    it cannot index by timestamp (variable frame rate) fall back to decord.
    ``backend="decord"`` decodes with decord, scaled while decoding when ``size`` is
    given (short side to ``size``); both give the same pixels.

    ``num_clips`` and ``frame_interval`` choose the frames as ``sample_clip_indices`` does;
    the ``num_clips * num_frames`` frames come back clip after clip.
    """
    path = Path(path)
    if path.suffix.lower() in IMAGE_EXTENSIONS:
        return read_image(path, size=size, name=name)
    choose = functools.partial(sample_clip_indices, num_frames=num_frames, num_clips=num_clips,
                               frame_interval=frame_interval, mode=mode, fix_start=fix_start, generator=generator)
    return read_chosen_frames(path, choose, size, name=name, num_threads=num_threads, backend=backend)


def read_chosen_frames(
    path: PathLike,
    choose: Callable[[int], list[int]],
    size: Optional[int] = None,
    *,
    name: Optional[str] = None,
    num_threads: int = 1,
    backend: str = "pyav",
) -> torch.Tensor:
    """The frames ``choose(frame_count)`` names, as uint8 ``[len(indices), 3, size, size]``.

    ``read_frames`` with the frame choice left to the caller: search picks the frames of
    every window of a video at once, so the file is read in one pass. Same decoders, same
    errors (``VideoReadError``) and the same central-square resize as ``read_frames``.
    """
    _check_backend(backend)
    path = Path(path)
    shown = name or str(path)
    check_file(path, shown)
    return _decode_chosen(str(path), shown, choose, size, num_threads, backend)


def decode_frames(
    data: Union[bytes, bytearray, memoryview],
    num_frames: int,
    mode: SampleMode = "uniform",
    fix_start: Optional[int] = None,
    size: Optional[int] = None,
    *,
    name: str = "<bytes>",
    num_threads: int = 1,
    generator: Optional[torch.Generator] = None,
    backend: str = "pyav",
    num_clips: int = 1,
    frame_interval: Optional[int] = None,
) -> torch.Tensor:
    """``read_frames`` for a video held in memory (a shard's sample): same sampling, same pixels.

    ``name`` (the source path) names the video in errors.
    """
    _check_backend(backend)
    if len(data) == 0:
        raise VideoReadError(name, "no bytes (empty video)")
    choose = functools.partial(sample_clip_indices, num_frames=num_frames, num_clips=num_clips,
                               frame_interval=frame_interval, mode=mode, fix_start=fix_start, generator=generator)
    return _decode_chosen(data, name, choose, size, num_threads, backend)


def _check_backend(backend: str) -> None:
    if backend not in ("decord", "pyav"):
        raise ValueError(f"backend must be 'decord' or 'pyav', got {backend!r}")


def _decode_chosen(media: Media, shown: str, choose: Callable[[int], list[int]], size: Optional[int],
                   num_threads: int, backend: str) -> torch.Tensor:
    """Decode a video from a path or its bytes (``shown`` names it in errors)."""
    decoded = None
    if backend == "pyav":
        try:
            decoded = decode_sampled_frames(media, choose, num_threads)
        except Exception as error:  # PyAV raises av.error.* (OSError subclasses)
            raise VideoReadError(shown, pyav_cause(error)) from error
    frames, chosen = decoded if decoded is not None else _read_frames_decord(media, shown, choose, num_threads, size)
    if frames.ndim != 4 or frames.shape[0] != len(chosen) or frames.shape[-1] != 3:
        raise VideoReadError(shown, f"decoder returned frames of shape {frames.shape}")
    return _square(frames, size)


def _native_size(media: Media) -> tuple[int, int]:
    """(height, width) from the container header, without decoding."""
    import av

    with av.open(open_media(media)) as container:
        stream = container.streams.video[0]
        return stream.codec_context.height, stream.codec_context.width


def _read_frames_decord(media: Media, shown: str, choose, num_threads: int,
                        size: Optional[int]) -> tuple[np.ndarray, list[int]]:
    try:
        import decord

        scaled = {}
        if size is not None:
            height, width = _native_size(media)
            target = scaled_size(height, width, size)
            if target != (height, width):
                scaled = {"height": target[0], "width": target[1]}
        reader = decord.VideoReader(open_media(media), num_threads=num_threads, **scaled)
        if len(reader) < 1:
            raise VideoReadError(shown, "video has no frames")
        indices = choose(len(reader))
        try:
            return reader.get_batch(indices).asnumpy(), indices
        except decord.DECORDError as error:
            if "size must exactly match" not in str(error):
                raise
            return _read_frames_sequential(media, indices), indices  # a width decord mangles
    except VideoReadError:
        raise
    except Exception as error:  # decord raises RuntimeError/DECORDError with C++ text
        raise VideoReadError(shown, _decord_cause(error)) from error


def _square(frames: np.ndarray, size: Optional[int]) -> torch.Tensor:
    """(F, H, W, 3) uint8 -> [F, 3, size, size]: centre square, then antialiased resize."""
    if size is None:
        return torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).contiguous()
    height, width = frames.shape[1:3]
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    square = torch.from_numpy(np.ascontiguousarray(frames[:, top : top + side, left : left + side]))
    square = square.permute(0, 3, 1, 2)  # channels-last memory: the fast uint8 resize path
    if side != size:
        square = torch.nn.functional.interpolate(
            square, size=(size, size), mode="bilinear", antialias=True, align_corners=False
        )
    return square.contiguous()


def _read_frames_sequential(media: Media, indices: list[int]) -> np.ndarray:
    """Native-size frames through PyAV, for the widths decord 0.6 mangles.

    decord fails with "The size must exactly match" on frames 16, 24, 48 or 72 px wide
    (found by scanning widths 16-700); only tiny videos have them.
    """
    import av

    wanted = set(indices)
    decoded = {}
    with av.open(open_media(media)) as container:
        for position, frame in enumerate(container.decode(video=0)):
            if position in wanted:
                decoded[position] = frame.to_ndarray(format="rgb24")
            if position >= max(indices):
                break
    return np.stack([decoded[i] for i in indices])


def read_image(path: PathLike, size: Optional[int] = None, *, name: Optional[str] = None) -> torch.Tensor:
    """Read an image (any format PIL knows, extension or not) as a one-frame clip.

    JPEGs are decoded at a reduced scale when ``size`` allows it (PIL's draft mode), then
    centre-cropped and resized like video frames: uint8 ``[1, 3, size, size]`` (native
    size if None). ``name`` is how errors show the file (default: its path).
    """
    path = Path(path)
    shown = name or str(path)
    check_file(path, shown)
    return _decode_image(path, shown, size)


def decode_image(
    data: Union[bytes, bytearray, memoryview], size: Optional[int] = None, *, name: str = "<bytes>"
) -> torch.Tensor:
    """``read_image`` for an image held in memory (a shard's sample); ``name`` names it in errors."""
    if len(data) == 0:
        raise VideoReadError(name, "no bytes (empty image)")
    return _decode_image(io.BytesIO(data), name, size)


def _decode_image(source: Union[Path, BinaryIO], shown: str, size: Optional[int]) -> torch.Tensor:
    from PIL import Image

    try:
        with Image.open(source) as image:
            if size is not None:  # JPEG: decode at 1/2, 1/4 or 1/8 scale when that suffices
                image.draft("RGB", scaled_size(image.height, image.width, size)[::-1])
            array = np.array(image.convert("RGB"))  # writable copy
    except Exception as error:  # PIL raises UnidentifiedImageError/OSError for bad data
        raise VideoReadError(shown, f"{type(error).__name__}: {_first_line(error)}") from error
    return _square(array[None], size)


def pyav_cause(error: BaseException) -> str:
    reason = getattr(error, "strerror", None)
    return f"{type(error).__name__}: {reason or _first_line(error)}"


def _decord_cause(error: BaseException) -> str:
    text = _first_line(error)
    if text.startswith("Error reading"):  # decord's message for files it cannot open
        return "decord cannot open it (truncated, corrupt or not a video file)"
    return f"{type(error).__name__}: {text}"


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else "no details"
