"""Loader throughput: clips/s per data-loader worker, ours against the original pipeline.

Training input is 4 frames at 224 px. Each pipeline is timed in two parts:

* decode: what a DataLoader worker does per clip.
  - baseline (as the original Frozen code): decord at native size, ``float() / 255``.
  - ours: ``read_frames(..., size=256)``: sparse PyAV decoding (only the GOPs and frames
    the sampled ones need), uint8 centre square, uint8 resize to 256x256;
    "ours-decord" is the same with ``backend="decord"`` (decord scaling while decoding);
    "torchcodec" (only when it is installed; it needs the system's FFmpeg libraries)
    decodes the same frames with torchcodec's CPU decoder, then squares them as ours does.
  The baseline and "ours-decord" run only where decord is installed (the GPU machine's
  wheels leave it out); without it the speed-up columns are empty.
* augment: RandomResizedCrop(224, scale 0.5-1) + horizontal flip + normalise.
  - baseline: torchvision transforms on float, per clip, in the worker.
  - ours: kornia on a float batch of clips (on the training device in real runs; here
    on the CPU, so the "all on CPU" column is a pessimistic bound for ours).

Worker clips/s = 1 / (decode + the augmentation the worker does): baseline decode +
augment, ours decode only. Everything runs with one torch thread (one worker's share).
Sources: 2 s, 25 fps H.264 clips (x264 "medium", default keyframe spacing, a panning noise
texture with sensor noise: a realistic bitrate, unlike flat shapes) of 256 and 360 px height,
then the same clips after ``prepare_videos``.

``--workers N`` also measures what a ``torch.utils.data.DataLoader`` with N worker processes
delivers (ours, batches of 64 clips; the first batch is not timed): the rate a training run's
input pipeline reaches on this machine's cores.

    python benchmarks/loader_throughput.py [--videos 8] [--clips 24] [--rounds 3] [--workers 14]

Prints a table and writes ``benchmarks/results/loader_throughput.json``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lightning_frozen.data.encode import write_video  # noqa: E402
from lightning_frozen.data.prepare import prepare_videos  # noqa: E402
from lightning_frozen.data.video import read_frames, sample_frame_indices  # noqa: E402

NUM_FRAMES, OUT_SIZE, DECODE_SIZE = 4, 224, 256
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
HEIGHTS = {256: 456, 360: 640}


def make_clip(path: Path, height: int, width: int, rng: np.random.Generator) -> None:
    """2 s at 25 fps of a panning texture with sensor-like noise (a realistic bitrate)."""
    tile = rng.integers(0, 255, (height // 4 + 16, width // 4 + 16, 3), dtype=np.uint8)
    texture = np.kron(tile, np.ones((4, 4, 1), np.uint8))
    dy, dx = rng.integers(-3, 4, size=2)
    frames = np.stack([np.roll(texture, (i * dy, i * dx), (0, 1))[:height, :width] for i in range(50)])
    noise = rng.integers(-10, 11, frames.shape)
    frames = np.clip(frames.astype(np.int16) + noise, 0, 255).astype(np.uint8)
    write_video(path, frames, fps=25, preset="medium", threads=0)


def make_sources(root: Path, count: int) -> dict[int, list[Path]]:
    rng = np.random.default_rng(0)
    sources = {}
    for height, width in HEIGHTS.items():
        folder = root / "raw" / "videos" / f"h{height}"
        folder.mkdir(parents=True, exist_ok=True)
        sources[height] = []
        for i in range(count):
            path = folder / f"clip{i}.mp4"
            if not path.exists():
                make_clip(path, height, width, rng)
            sources[height].append(path)
    return sources


# --- the original pipeline (written here as the original code base did it) ---------------
def baseline_decode(path: Path) -> torch.Tensor:
    import decord

    reader = decord.VideoReader(str(path), num_threads=1)
    indices = sample_frame_indices(len(reader), NUM_FRAMES, "rand")
    frames = torch.from_numpy(reader.get_batch(indices).asnumpy())
    return frames.float().div(255).permute(0, 3, 1, 2)


def baseline_augment():
    from torchvision import transforms

    return transforms.Compose([
        transforms.RandomResizedCrop(OUT_SIZE, scale=(0.5, 1.0)),
        transforms.RandomHorizontalFlip(),
        transforms.ColorJitter(brightness=0, saturation=0, hue=0),
        transforms.Normalize(MEAN, STD),
    ])


# --- ours ------------------------------------------------------------------------------------
def ours_decode(path: Path) -> torch.Tensor:
    return read_frames(path, NUM_FRAMES, "rand", size=DECODE_SIZE)  # the default: sparse PyAV


def ours_decord_decode(path: Path) -> torch.Tensor:
    return read_frames(path, NUM_FRAMES, "rand", size=DECODE_SIZE, backend="decord")


def torchcodec_decode(path: Path) -> torch.Tensor:
    """torchcodec's CPU decoder on the frames ours samples, squared and resized as ours does."""
    from torchcodec.decoders import VideoDecoder

    from lightning_frozen.data.video import _square

    decoder = VideoDecoder(str(path), num_ffmpeg_threads=1, seek_mode="exact", dimension_order="NHWC")
    indices = sample_frame_indices(decoder.metadata.num_frames, NUM_FRAMES, "rand")
    return _square(decoder.get_frames_at(indices).data.numpy(), DECODE_SIZE)


def has_decord() -> bool:
    return importlib.util.find_spec("decord") is not None


def decoders() -> dict[str, Callable[[Path], torch.Tensor]]:
    """Our pipelines' decode functions; decord's and torchcodec's only where they are installed."""
    out = {"ours": ours_decode}
    if has_decord():
        out["ours-decord"] = ours_decord_decode
    if importlib.util.find_spec("torchcodec") is not None:
        out["torchcodec"] = torchcodec_decode
    return out


def ours_augment():
    import kornia.augmentation as K

    return K.VideoSequential(
        K.RandomResizedCrop((OUT_SIZE, OUT_SIZE), scale=(0.5, 1.0)),
        K.RandomHorizontalFlip(),
        K.Normalize(torch.tensor(MEAN), torch.tensor(STD)),
        data_format="BTCHW",
        same_on_frame=True,
    )


def time_per_clip(function, items) -> float:
    start = time.perf_counter()
    for item in items:
        function(item)
    return (time.perf_counter() - start) / len(items)


def measure(paths: list[Path], clips: int, batch: int) -> dict[str, float]:
    """Seconds per clip for each part of both pipelines."""
    order = [paths[i % len(paths)] for i in range(clips)]
    base_aug, our_aug = baseline_augment(), ours_augment()
    decoded_ours = torch.stack([ours_decode(p) for p in order[:batch]])
    result = {}
    if has_decord():
        decoded_base = [baseline_decode(p) for p in order[:batch]]
        result = {"baseline_decode": time_per_clip(baseline_decode, order),
                  "baseline_augment": time_per_clip(base_aug, decoded_base)}
    for name, decode in decoders().items():
        result[f"{name}_decode"] = time_per_clip(decode, order)
    with torch.no_grad():
        our_aug(decoded_ours.float().div(255))  # warm-up
        start = time.perf_counter()
        for _ in range(max(1, clips // batch)):
            our_aug(decoded_ours.float().div(255))
        result["ours_augment"] = (time.perf_counter() - start) / (max(1, clips // batch) * batch)
    for name in decoders():
        result[f"{name}_augment"] = result["ours_augment"]
    return result


class ClipFiles(torch.utils.data.Dataset):
    """`length` clips read as a training worker reads them (ours), cycling over `paths`."""

    def __init__(self, paths: list[Path], length: int):
        self.paths, self.length = paths, length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> torch.Tensor:
        return ours_decode(self.paths[index % len(self.paths)])


def loader_rate(paths: list[Path], workers: int, batch: int) -> float:
    """Clips/s a DataLoader with `workers` processes delivers, after its first batch."""
    batches = 1 + 3 * workers  # each worker fills about three batches after the first
    loader = torch.utils.data.DataLoader(ClipFiles(paths, batch * batches), batch_size=batch, num_workers=workers)
    clips = iter(loader)
    next(clips)
    start, count = time.perf_counter(), 0
    for clip_batch in clips:
        count += len(clip_batch)
    return count / (time.perf_counter() - start)


def median_rounds(rounds: list[dict[str, float]]) -> dict[str, float]:
    return {key: statistics.median(r[key] for r in rounds) for key in rounds[0]}


def rows_for(source: str, height: int, t: dict[str, float], reference: dict[str, float]) -> list[dict]:
    base = "baseline_decode" in reference
    base_worker = 1 / (reference["baseline_decode"] + reference["baseline_augment"]) if base else None
    rows = []
    for name in ("baseline", *decoders()) if base else decoders():
        decode, augment = t[f"{name}_decode"], t[f"{name}_augment"]
        worker = 1 / (decode + augment) if name == "baseline" else 1 / decode
        rows.append({
            "source": source, "height": height, "pipeline": name,
            "decode_ms": 1000 * decode, "augment_ms": 1000 * augment,
            "worker_clips_per_s": worker, "all_cpu_clips_per_s": 1 / (decode + augment),
            "worker_speedup_vs_raw_baseline": worker / base_worker if base else None,
            "all_cpu_speedup_vs_raw_baseline": (1 / (decode + augment)) / base_worker if base else None,
        })
    return rows


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--videos", type=int, default=8, help="clips per source height")
    parser.add_argument("--clips", type=int, default=24, help="reads per measurement")
    parser.add_argument("--batch", type=int, default=8, help="clips per kornia batch")
    parser.add_argument("--rounds", type=int, default=3, help="median over rounds")
    parser.add_argument("--workdir", type=Path, default=None, help="keep generated clips here")
    parser.add_argument("--workers", type=int, default=0, help="also time a DataLoader with this many workers")
    parser.add_argument("--loader-batch", type=int, default=64, help="clips per DataLoader batch (--workers)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "loader_throughput.json")
    args = parser.parse_args(argv)

    torch.set_num_threads(1)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="loader_bench_"))
    sources = make_sources(workdir, args.videos)
    prepared_root = workdir / "prepared"
    started = time.perf_counter()
    summary = prepare_videos(workdir / "raw", prepared_root, progress=False)
    prepare_seconds = time.perf_counter() - started
    if summary.failed:
        raise RuntimeError(f"prepare failed: {summary.failed}")
    prepared = {h: [prepared_root / p.relative_to(workdir / "raw") for p in paths] for h, paths in sources.items()}

    timings: dict[tuple[str, int], list[dict]] = {}
    for _ in range(args.rounds):  # interleaved, so machine noise hits all pipelines alike
        for height in HEIGHTS:
            for source, paths in (("raw", sources[height]), ("prepared", prepared[height])):
                timings.setdefault((source, height), []).append(measure(paths, args.clips, args.batch))
    medians = {key: median_rounds(value) for key, value in timings.items()}
    rows = []
    for height in HEIGHTS:
        for source in ("raw", "prepared"):
            rows += rows_for(source, height, medians[(source, height)], medians[("raw", height)])

    header = (f"{'source':9} {'height':>6} {'pipeline':11} {'decode ms':>9} {'aug ms':>7} {'worker clips/s':>14} "
              f"{'x base':>7} {'all-CPU clips/s':>15} {'x base':>7}")
    print(header)
    print("-" * len(header))
    def ratio(value: float | None) -> str:
        return "-" if value is None else f"{value:.2f}"

    for r in rows:
        print(f"{r['source']:9} {r['height']:>6} {r['pipeline']:11} {r['decode_ms']:9.1f} {r['augment_ms']:7.1f} "
              f"{r['worker_clips_per_s']:14.1f} {ratio(r['worker_speedup_vs_raw_baseline']):>7} "
              f"{r['all_cpu_clips_per_s']:15.1f} {ratio(r['all_cpu_speedup_vs_raw_baseline']):>7}")
    print(f"prepare_videos: {2 * args.videos} clips in {prepare_seconds:.1f} s")
    loaders = []
    if args.workers:
        for height in HEIGHTS:
            for source, paths in (("raw", sources[height]), ("prepared", prepared[height])):
                rate = loader_rate(paths, args.workers, args.loader_batch)
                loaders.append({"source": source, "height": height, "workers": args.workers,
                                "batch": args.loader_batch, "clips_per_s": rate})
                print(f"DataLoader, {args.workers} workers, {source} {height} px: {rate:.1f} clips/s")
    result = {
        "rows": rows,
        "dataloader": loaders,
        "prepare_seconds": prepare_seconds,
        "settings": {"num_frames": NUM_FRAMES, "out_size": OUT_SIZE, "decode_size": DECODE_SIZE,
                     "videos_per_height": args.videos, "clips": args.clips, "batch": args.batch,
                     "rounds": args.rounds, "torch_threads": 1},
        "machine": {"platform": platform.platform(), "python": platform.python_version(),
                    "torch": torch.__version__, "cpus": __import__("os").cpu_count(),
                    "torchcodec": importlib.util.find_spec("torchcodec") is not None, "decord": has_decord()},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
