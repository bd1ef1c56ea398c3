"""Re-encode a dataset's videos for fast training: small, seek-friendly H.264 files.

Raw web videos are large and have keyframes seconds apart, so sampling a few frames
decodes many. The mirror this writes keeps the dataset's exact layout (metadata copied
as-is, every video re-encoded under the same relative path) with the short side at
``short_side`` (never upscaled), a keyframe every ``keyframe_interval`` frames, x264's
``fastdecode`` tuning and an optional fps cap. Point a dataset's ``root`` at the mirror.

It uses a process pool over all cores, shows a progress bar, and resumes: each output is
written to a hidden ``.<name>.partial`` file and renamed when complete, so an existing
output is always a finished one and is skipped. Every output container is mp4 (H.264),
whatever the file's extension. Unreadable sources are listed in the summary and left
out of the mirror. The source is never written to.

The mirror is a folder this command owns (``lightning_frozen.folders``): its marker records the
source and the settings, a re-run continues only a mirror of the same source and settings, and
a folder that is neither empty nor such a mirror is refused before anything is written.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Optional, Sequence, Union

from ..arguments import ArgumentParser
from ..folders import OWN_FILES, owned_folder

PARTIAL_SUFFIX = ".partial"
X264_PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow")
X264_TUNES = ("film", "animation", "grain", "stillimage", "fastdecode", "zerolatency", "psnr", "ssim")
REPORT = "prepare_report.json"


@dataclass(frozen=True)
class EncodeSettings:
    """How every video is re-encoded."""

    short_side: Optional[int] = 256
    fps: Optional[float] = None
    keyframe_interval: int = 8
    crf: int = 23
    preset: str = "veryfast"
    tune: Optional[str] = "fastdecode"
    threads: int = 1  # codec threads per file: 1 under a process pool, 0 (auto) alone


@dataclass
class PrepareSummary:
    """What a run did; ``failed`` maps relative source paths to their error."""

    encoded: int = 0
    skipped: int = 0
    copied: int = 0
    failed: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def exit_code(self) -> int:
        """What `lightning-frozen prepare` exits with: 1 when any file failed."""
        return 1 if self.failed else 0

    def __str__(self) -> str:
        text = (
            f"encoded {self.encoded}, already done {self.skipped}, metadata files copied "
            f"{self.copied}, failed {len(self.failed)} ({self.seconds:.1f} s)"
        )
        for path, error in list(self.failed.items())[:20]:
            text += f"\n  FAILED {path}: {error}"
        if len(self.failed) > 20:
            text += f"\n  ... and {len(self.failed) - 20} more (see {REPORT})"
        return text


def output_size(height: int, width: int, short_side: Optional[int]) -> tuple[int, int]:
    """(height, width) with the short side at ``short_side`` (no upscaling), both even."""
    if short_side is not None and min(height, width) > short_side:
        scale = short_side / min(height, width)
        height, width = round(height * scale), round(width * scale)
    return max(2, height - height % 2), max(2, width - width % 2)


def partial_path(path: Path) -> Path:
    """The hidden name an output is written under until it is complete."""
    return path.with_name(f".{path.name}{PARTIAL_SUFFIX}")


def encode_video(src: Path, dst: Path, settings: EncodeSettings) -> None:
    """Re-encode one video to ``dst`` (atomically: temp file, then rename)."""
    import av

    from .encode import H264Writer

    if src.stat().st_size == 0:
        raise ValueError("source file is empty")
    temp = partial_path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        with av.open(str(src)) as container:
            if not container.streams.video:
                raise ValueError("no video stream")
            stream = container.streams.video[0]
            stream.codec_context.thread_count = settings.threads
            source_rate = stream.average_rate or stream.guessed_rate or Fraction(25)
            rate = Fraction(source_rate)
            if settings.fps is not None and float(rate) > settings.fps:
                rate = Fraction(settings.fps).limit_denominator(1001)
            height, width = output_size(stream.codec_context.height, stream.codec_context.width,
                                        settings.short_side)
            writer = H264Writer(temp, width, height, fps=rate, crf=settings.crf,
                                preset=settings.preset, tune=settings.tune,
                                keyframe_interval=settings.keyframe_interval,
                                threads=settings.threads)
            written, kept = 0, -1
            try:
                for position, frame in enumerate(container.decode(stream)):
                    if rate != source_rate:  # keep a frame whenever the output clock ticks
                        seconds = frame.time if frame.time is not None else position / float(source_rate)
                        tick = int(seconds * float(rate) + 1e-6)
                        if tick <= kept:
                            continue
                        kept = tick
                    writer.write(frame.reformat(width=width, height=height, format="yuv420p",
                                                interpolation="AREA"))
                    written += 1
                if written == 0:
                    raise ValueError("no decodable frames")
            finally:
                writer.close()
        os.replace(temp, dst)
    finally:
        if temp.exists():
            temp.unlink()


def ignore_interrupts() -> None:
    """Pool workers leave Ctrl-C to the main process, which stops the pool: one message, not one per worker."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _encode_task(src: str, dst: str, settings: EncodeSettings) -> Optional[str]:
    try:
        encode_video(Path(src), Path(dst), settings)
        return None
    except Exception as error:  # reported per file in the summary
        return f"{type(error).__name__}: {str(error).strip().splitlines()[0] if str(error).strip() else ''}"


def _copy_file(src: Path, dst: Path) -> bool:
    """Copy a metadata file unless an identical-looking copy is already there."""
    if dst.is_file():
        s, d = src.stat(), dst.stat()
        if s.st_size == d.st_size and int(s.st_mtime) == int(d.st_mtime):
            return False
    dst.parent.mkdir(parents=True, exist_ok=True)
    temp = partial_path(dst)
    shutil.copy2(src, temp)
    os.replace(temp, dst)
    return True


def _check_roots(src: Path, dst: Path) -> None:
    if not src.is_dir():
        raise FileNotFoundError(f"source dataset root '{src}' is not a directory")
    if src == dst or src in dst.parents or dst in src.parents:
        raise ValueError(
            f"destination '{dst}' overlaps the source '{src}'; the mirror must be a separate "
            "folder (the source is never written to)"
        )


def _check_ranges(**values: Optional[float]) -> None:
    """Every setting within its range, before anything is encoded (x264 would fail on each file instead)."""
    lowest = {"short_side": 2, "fps": 1e-3, "keyframe_interval": 1, "workers": 1, "crf": 0}
    for name, value in values.items():
        if value is not None and (value < lowest[name] or (name == "crf" and value > 51)):
            allowed = "0 to 51" if name == "crf" else f">= {lowest[name]}"
            raise ValueError(f"--{name.replace('_', '-')} must be {allowed}, got {value}")


def prepare_videos(
    src_root: Union[str, os.PathLike],
    dst_root: Union[str, os.PathLike],
    short_side: Optional[int] = 256,
    fps: Optional[float] = None,
    keyframe_interval: int = 8,
    workers: Optional[int] = None,
    crf: int = 23,
    preset: str = "veryfast",
    tune: Optional[str] = "fastdecode",
    extensions: Optional[Sequence[str]] = None,
    progress: bool = True,
) -> PrepareSummary:
    """Mirror ``src_root`` into ``dst_root`` with every video re-encoded (see module doc).

    Defaults suit 224 px training: short side 256, a keyframe every 8 frames, source fps
    kept (``fps`` caps it). ``workers`` defaults to all cores; ``extensions`` to VideoFolder's.
    """
    if extensions is None:
        from .folder import VIDEO_EXTENSIONS as extensions
    src, dst = Path(src_root).resolve(), Path(dst_root).resolve()
    _check_roots(src, dst)
    _check_ranges(short_side=short_side, fps=fps, keyframe_interval=keyframe_interval, workers=workers, crf=crf)
    workers = max(1, workers or os.cpu_count() or 1)
    settings = EncodeSettings(short_side, fps, keyframe_interval, crf, preset, tune,
                              threads=1 if workers > 1 else 0)
    inputs = {"src": str(src), "extensions": sorted(e.lower() for e in extensions),
              **{k: v for k, v in asdict(settings).items() if k != "threads"}}
    with owned_folder(dst, "lightning-frozen prepare", inputs, "--dst"):
        return _mirror(src, dst, settings, inputs["extensions"], workers, progress)


def _mirror(src: Path, dst: Path, settings: EncodeSettings, extensions: list[str], workers: int,
            progress: bool) -> PrepareSummary:
    from tqdm import tqdm

    started = time.perf_counter()
    wanted = set(extensions)
    summary = PrepareSummary()
    todo: list[tuple[str, Path, Path]] = []
    for directory, _, files in os.walk(src, followlinks=True):
        for name in sorted(files):
            source = Path(directory) / name
            relative = source.relative_to(src).as_posix()
            target = dst / relative
            if (name.startswith(".") and name.endswith(PARTIAL_SUFFIX)) or name in OWN_FILES:
                continue
            if source.suffix.lower() not in wanted:
                summary.copied += _copy_file(source, target)
            elif target.is_file():
                summary.skipped += 1
            else:
                todo.append((relative, source, target))
    bar = tqdm(total=len(todo), desc="re-encoding videos", unit="video", disable=not progress)
    if workers == 1 or len(todo) <= 1:
        results = ((rel, _encode_task(str(s), str(t), settings)) for rel, s, t in todo)
        for relative, error in results:
            _record(summary, relative, error)
            bar.update()
    else:
        pool = ProcessPoolExecutor(max_workers=min(workers, len(todo)), initializer=ignore_interrupts)
        try:
            futures = {pool.submit(_encode_task, str(s), str(t), settings): rel for rel, s, t in todo}
            for future in as_completed(futures):
                _record(summary, futures[future], future.result())
                bar.update()
        finally:  # Ctrl-C: the files being encoded finish (or stay .partial), the queued ones never start
            pool.shutdown(cancel_futures=True)
    bar.close()
    summary.failed = dict(sorted(summary.failed.items()))
    summary.seconds = time.perf_counter() - started
    dst.mkdir(parents=True, exist_ok=True)
    report = {"settings": asdict(settings), "summary": asdict(summary)}
    (dst / REPORT).write_text(json.dumps(report, indent=1))
    return summary


def _record(summary: PrepareSummary, relative: str, error: Optional[str]) -> None:
    if error is None:
        summary.encoded += 1
    else:
        summary.failed[relative] = error


def build_parser() -> ArgumentParser:
    """Arguments of the prepare command."""
    parser = ArgumentParser(
        prog="lightning-frozen prepare",
        description="Re-encode a dataset's videos into a mirror folder for fast training.",
    )
    parser.add_argument("--src", required=True, help="dataset root to read (never written)")
    parser.add_argument("--dst", required=True, help="mirror root to write (new, empty, or a mirror this command "
                                                     "made from the same source and settings, which it continues)")
    parser.add_argument("--short-side", type=int, default=256, help="0 keeps the size")
    parser.add_argument("--fps", type=float, default=None, help="cap the frame rate")
    parser.add_argument("--keyframe-interval", type=int, default=8)
    parser.add_argument("--workers", type=int, default=None, help="default: all cores")
    parser.add_argument("--crf", type=int, default=23)
    parser.add_argument("--preset", default="veryfast", choices=X264_PRESETS)
    parser.add_argument("--tune", default="fastdecode", choices=(*X264_TUNES, "none"), help="x264 tune")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> PrepareSummary:
    args = build_parser().parse_args(argv)
    summary = prepare_videos(
        args.src, args.dst, short_side=args.short_side or None, fps=args.fps,
        keyframe_interval=args.keyframe_interval, workers=args.workers, crf=args.crf,
        preset=args.preset, tune=None if args.tune == "none" else args.tune,
        progress=not args.quiet,
    )
    print(summary)
    if summary.failed:
        print(f"lightning-frozen prepare: {len(summary.failed)} file(s) failed and are missing from the mirror "
              f"(listed above and in {Path(args.dst) / REPORT}); fix or remove them and run again", file=sys.stderr)
    return summary


if __name__ == "__main__":
    raise SystemExit(main().exit_code)
