"""Streaming from LitData shards against one file per clip: per-worker clips/s and first-batch latency.

Sources: 2 s, 25 fps H.264 clips (a panning texture with sensor-like noise, so decoding costs what
it does on real footage) at 256 and 360 px height, as in loader_throughput.py. Each is read as
training reads it: 4 frames sampled at random, cut to 256 px squares, in batches of 4, by one
DataLoader worker (so the rate is per worker). Paths:

* ``files``: ``VideoFolder``, one mp4 per clip on local disk (the file datasets' path).
* ``shards``: ``StreamingVideoText`` over ``lightning-frozen shard`` output on local disk.
* ``s3 cold``: the same shards on a loopback S3 server (moto) with an empty cache smaller than the
  data, so chunks are downloaded and evicted as they go (what 10M clips look like).
* ``s3 first`` / ``s3 warm``: the first epoch over S3 with a cache that holds the data (it fills
  it), then the later ones (read from the cache).

The paths take turns epoch by epoch, so machine load hits them alike. Clips/s is measured after
the first batch, median over the epochs after the first (which also warms the page cache);
"first batch" is the time from ``iter()`` to the first batch (worker start, index and first
chunk download), median over epochs. A second table times listing and opening
many small files (``--small-files``, 1 KB each, in WebVid-like page folders) against reading the
same payloads from shards.

    python benchmarks/streaming.py [--clips 48] [--epochs 5] [--small-files 100000]

Prints tables and writes ``benchmarks/results/streaming.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from loader_throughput import make_clip  # noqa: E402

from lightning_frozen.data import VideoFolder  # noqa: E402
from lightning_frozen.data.shard import shard_dataset  # noqa: E402
from lightning_frozen.data.streaming import StreamingLoader, StreamingVideoText  # noqa: E402

HEIGHTS = {256: 456, 360: 640}
NUM_FRAMES, SIZE, BATCH = 4, 256, 4


def _items(items):
    return len(items)


def make_sources(root: Path, count: int) -> dict[int, Path]:
    rng = np.random.default_rng(0)
    roots = {}
    for height, width in HEIGHTS.items():
        folder = root / f"h{height}" / "videos"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(count):
            path = folder / f"clip{i:03d}.mp4"
            if not path.exists():
                make_clip(path, height, width, rng)
        roots[height] = root / f"h{height}"
    return roots


def time_epoch(loader) -> dict:
    """Seconds to the first batch of an epoch, then clips/s over the rest."""
    start = time.perf_counter()
    first, clips, first_clips = None, 0, 0
    for size in loader:
        clips += size
        if first is None:
            first, first_clips = time.perf_counter() - start, size
    rest = time.perf_counter() - start - first
    return {"first_batch_s": first, "clips": clips, "clips_per_s": (clips - first_clips) / rest}


def streaming_loader(input_dir: str, cache: Path, **options) -> StreamingLoader:
    stream = StreamingVideoText(input_dir, frame_size=SIZE, cache_dir=str(cache), **options)
    stream.run_state.set_num_frames(NUM_FRAMES)
    return StreamingLoader(stream, batch_size=BATCH, num_workers=1, collate_fn=_items)


def s3_server():
    """A moto S3 server on loopback with the environment LitData's clients read (see test_streaming_s3)."""
    import boto3
    from litdata.streaming import downloader
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no line per request
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1",
                      AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}")
    downloader._OBSTORE_CLIENT_OPTIONS["allow_http"] = "true"  # loopback HTTP; real S3 is HTTPS
    boto3.client("s3").create_bucket(Bucket="bench")
    return server


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*.bin"))


def clip_rows(work: Path, clips: int, epochs: int) -> list[dict]:
    sources = make_sources(work / "clips", clips)
    server = s3_server()
    rows = []
    try:
        for height, root in sources.items():
            sizes = [p.stat().st_size for p in (root / "videos").iterdir()]
            chunk = f"{max(3 * max(sizes), sum(sizes) // 8)}b"  # about 8 chunks: the cold cache holds half
            shards = work / f"shards{height}"
            shutil.rmtree(shards, ignore_errors=True)  # the clips may have changed since a kept --workdir
            shard_dataset(root, "folder", str(shards), split="train", workers=2, chunk_bytes=chunk, progress=False)
            url = f"s3://bench/h{height}"
            shutil.rmtree(work / f"s3work{height}", ignore_errors=True)
            shard_dataset(root, "folder", url, split="train", workers=2, chunk_bytes=chunk,
                          work_dir=work / f"s3work{height}", progress=False)
            data = folder_bytes(shards)
            folder = VideoFolder(root, split="train", frame_size=SIZE)
            folder.run_state.set_num_frames(NUM_FRAMES)
            files = torch.utils.data.DataLoader(
                folder, batch_size=BATCH,
                shuffle=True, num_workers=1, collate_fn=_items)
            cold_cache = max(data // 2, 1)
            loaders = {
                "files": files,
                "shards": streaming_loader(str(shards), work / f"cache_local{height}"),
                "s3 cold": streaming_loader(url, work / f"cache_cold{height}", max_cache_size=cold_cache),
                "s3": streaming_loader(url, work / f"cache_warm{height}"),
            }
            for epoch in range(1, epochs + 1):  # interleaved, so machine load hits every path alike
                for name, loader in loaders.items():
                    label = ("s3 first" if epoch == 1 else "s3 warm") if name == "s3" else name
                    rows.append({"height": height, "path": label, "epoch": epoch, "data_mb": data / 1e6,
                                 "cache_mb": cold_cache / 1e6 if name == "s3 cold" else None,
                                 **time_epoch(loader)})
            for name in ("cache_local", "cache_cold", "cache_warm"):
                shutil.rmtree(work / f"{name}{height}", ignore_errors=True)
    finally:
        server.stop()
    return rows


def small_file_rows(work: Path, count: int) -> dict:
    """List and read `count` 1 KB files in page folders of 50, against the same bytes from shards."""
    from litdata import StreamingDataset
    from litdata.streaming.cache import Cache

    root = work / f"small{count}"
    payload = os.urandom(1024)
    if not root.exists():
        for i in range(count):
            folder = root / f"{i // 50 * 50:07d}"
            if i % 50 == 0:
                folder.mkdir(parents=True)
            (folder / f"{i}.bin").write_bytes(payload)
    start = time.perf_counter()
    paths = [Path(d) / f for d, _, names in os.walk(root) for f in names]
    listed = time.perf_counter() - start
    start = time.perf_counter()
    total = sum(len(p.read_bytes()) for p in paths)
    opened = time.perf_counter() - start
    shards = work / "small_shards"
    shutil.rmtree(shards, ignore_errors=True)
    shutil.rmtree(work / "small_cache", ignore_errors=True)
    cache = Cache(str(shards), chunk_bytes="64MB")
    for i in range(count):
        cache[i] = {"id": str(i), "media": payload}
    cache.done()
    cache.merge()
    start = time.perf_counter()
    stream = StreamingDataset(str(shards), cache_dir=str(work / "small_cache"))
    read = sum(len(item["media"]) for item in stream)
    streamed = time.perf_counter() - start
    assert read == total == count * 1024
    return {"files": count, "list_s": listed, "open_read_s": opened, "shards_read_s": streamed,
            "files_per_s": count / (listed + opened), "shard_items_per_s": count / streamed}


def summarise(rows: list[dict]) -> list[dict]:
    """Medians per (height, path): first batch over every epoch, clips/s over epochs after the first
    (the first also warms the page cache; for "s3 first" and "s3 warm" the split is the row label)."""
    out = []
    for height in HEIGHTS:
        for path in ("files", "shards", "s3 cold", "s3 first", "s3 warm"):
            group = [r for r in rows if r["height"] == height and r["path"] == path]
            steady = [r for r in group if r["epoch"] > 1 or path in ("s3 first",)] or group
            out.append({"height": height, "path": path, "epochs": len(group),
                        "first_batch_s": statistics.median(r["first_batch_s"] for r in group),
                        "clips_per_s": statistics.median(r["clips_per_s"] for r in steady)})
        files = next(r["clips_per_s"] for r in out if r["height"] == height and r["path"] == "files")
        for r in out:
            if r["height"] == height:
                r["vs_files"] = r["clips_per_s"] / files
    return out


def save(result: dict, path: Path) -> None:
    """The JSON behind the printed tables (benchmarks/results/ is not committed)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1))
    print(f"wrote {path}")


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=int, default=48, help="clips per height")
    parser.add_argument("--epochs", type=int, default=5, help="epochs per path, interleaved")
    parser.add_argument("--small-files", type=int, default=100_000)
    parser.add_argument("--workdir", type=Path, default=None, help="keep generated data here")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "streaming.json")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    work = args.workdir or Path(tempfile.mkdtemp(prefix="streaming_bench_"))

    rows = clip_rows(work, args.clips, args.epochs)
    summary = summarise(rows)
    header = f"{'height':>6} {'path':9} {'epochs':>6} {'first batch s':>13} {'clips/s/worker':>14} {'vs files':>8}"
    print(header)
    print("-" * len(header))
    for r in summary:
        print(f"{r['height']:>6} {r['path']:9} {r['epochs']:>6} {r['first_batch_s']:13.2f} {r['clips_per_s']:14.1f} "
              f"{r['vs_files']:8.2f}")
    small = small_file_rows(work, args.small_files)
    print(f"\n{small['files']} files of 1 KB: list {small['list_s']:.2f} s + open/read {small['open_read_s']:.2f} s "
          f"({small['files_per_s']:.0f} files/s); the same from shards: {small['shards_read_s']:.2f} s "
          f"({small['shard_items_per_s']:.0f} items/s)")
    result = {
        "summary": summary, "rows": rows, "small_files": small,
        "settings": {"clips_per_height": args.clips, "epochs": args.epochs, "num_frames": NUM_FRAMES, "size": SIZE,
                     "batch": BATCH, "workers": 1, "chunks": "about 8 per height"},
        "machine": {"platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
                    "cpus": os.cpu_count(), "load_average": os.getloadavg()},
    }
    save(result, args.out)
    return result


if __name__ == "__main__":
    main()
