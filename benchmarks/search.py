"""Search at scale: query latency (text encoding + search), recall of the approximate index,
index build rate and server queries/s.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/search.py                 # 10k, 100k, 1M windows
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/search.py --sizes 10000   # a quick run

Large indexes hold random clustered embeddings (1,000 clusters, the demo model's 128
dimensions) written as real index folders (SQLite rows, then the FAISS index rebuilt from
them), and are searched through ``Index.search`` with the demo's text tower (the bundled
MiniLM, first 3 layers) stored in the index as `index` stores it. Beside it: the text
encoding time of DistilBERT's geometry (6 layers, 768 wide, random weights) and the search
time at 256 dimensions (the published projection). Recall@10 compares the approximate
index's top 10 windows with exact search. The build rate indexes synthetic videos with the
demo model (``Trainer.predict``, decoding included); the forward-only rate embeds the same
clips already decoded. Server: 8 clients on loopback against `serve`. A cold `search` is
timed by ``benchmarks/search_cold_start.py``.
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from machine import cpu_description

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_JSON = ROOT / "benchmarks" / "results" / "search.json"
QUERIES = ["a white circle moving to the left", "a red square falling", "something green rising on blue",
           "a yellow diamond heading right over purple", "an orange ball sinking", "a box drifting up"]


def demo_module(dim: int = 128):
    """The demo's model (bundled MiniLM, 3 layers, mean pooling) with the text tower's pretrained weights;
    random video tower and projections, as a FrozenModule (what `index` runs)."""
    import yaml

    from lightning_frozen.models import load_pretrained_towers
    from lightning_frozen.module import FrozenModule

    config = yaml.safe_load((ROOT / "configs" / "demo.yaml").read_text())["model"]
    torch.manual_seed(0)
    module = FrozenModule(video=config["video"], text=config["text"], projection_dim=dim)
    load_pretrained_towers(module.model)
    return module.eval()


def distilbert_model(dim: int = 256):
    """DistilBERT's geometry (6 layers, 768 wide) with random weights: nothing is downloaded."""
    from transformers import DistilBertConfig, DistilBertModel

    from lightning_frozen.models import create_model

    model = create_model({"video": {"arch": None, "img_size": 32, "patch_size": 16, "embed_dim": 32, "depth": 1,
                                    "num_heads": 2}, "text": {"name_or_path": "bundled:all-MiniLM-L6-v2",
                                                              "pretrained": False}, "projection_dim": dim},
                         pretrained=False)
    model.text_model = DistilBertModel(DistilBertConfig())
    model.txt_proj[-1] = torch.nn.Linear(768, dim)
    model.text_config.name_or_path = "distilbert-base-uncased"  # tokenizer: the same uncased vocabulary, bundled
    return model.eval()


def clustered(count: int, dim: int, seed: int, clusters: int = 1000) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, dim)).astype(np.float32)
    out = np.empty((count, dim), np.float32)
    for first in range(0, count, 100_000):
        n = min(100_000, count - first)
        part = centres[rng.integers(clusters, size=n)] + 0.6 * rng.normal(size=(n, dim)).astype(np.float32)
        out[first:first + n] = part / np.linalg.norm(part, axis=1, keepdims=True)
    return out


def synthetic_index(folder: Path, vectors: np.ndarray, model, windows_per_video: int = 10) -> float:
    """An index folder holding ``vectors`` as windows of fake videos, with ``model``'s text side stored
    as `index` stores it; returns the FAISS build seconds."""
    from lightning_frozen.search import ann, store
    from lightning_frozen.search.text import save_text_side
    from lightning_frozen.tokenizer import build_tokenizer

    folder.mkdir(parents=True)
    settings = store.EmbeddingSettings(window_seconds=4.0, stride_seconds=2.0, frames=4, input_res=64,
                                       decode_size=128, thumb_size=128)
    tokenizer = {"max_length": None, "padding": "longest"}
    files = save_text_side(folder, model, build_tokenizer(model.text_config.name_or_path), tokenizer)
    store.Manifest(checkpoint="", fingerprint="synthetic", model_config={}, model_config_source=None,
                   embedding_dim=vectors.shape[1], settings=settings, videos_root=str(folder), follow_links=False,
                   tokenizer=tokenizer, files=files).write(folder)
    db = store.connect(folder)
    videos = (len(vectors) + windows_per_video - 1) // windows_per_video
    db.execute("BEGIN")
    db.executemany("INSERT INTO videos(id, path, size, mtime_ns, fps, frames, codec) "
                   "VALUES (?, ?, 0, 0, 10, 0, 'h264')", ((v, f"v{v:07d}.mp4") for v in range(videos)))
    db.executemany('INSERT INTO windows(id, video_id, position, start, "end", embedding) VALUES (?, ?, ?, ?, ?, ?)',
                   ((i, i // windows_per_video, i % windows_per_video, 2.0 * (i % windows_per_video),
                     2.0 * (i % windows_per_video) + 4, vectors[i].tobytes()) for i in range(len(vectors))))
    store.bump_generation(db)
    store.set_complete(db, True)
    db.execute("COMMIT")
    started = time.perf_counter()
    ann.rebuild(folder, db, vectors.shape[1])
    store.settle(db)
    db.close()
    return time.perf_counter() - started


def percentiles(seconds: list[float]) -> dict:
    ms = np.asarray(seconds) * 1000
    return {"p50_ms": round(float(np.percentile(ms, 50)), 2), "p99_ms": round(float(np.percentile(ms, 99)), 2)}


def query_latency(index, queries: int) -> dict:
    """Per query: encode the text with the index's stored text tower, then search per video (the default)."""
    encode, total = [], []
    for i in range(queries):
        text = f"{QUERIES[i % len(QUERIES)]} {i}"
        started = time.perf_counter()
        vector = index.encode([text])[0]
        encoded = time.perf_counter()
        index.search_vector(vector, k=10)
        total.append(time.perf_counter() - started)
        encode.append(encoded - started)
    return {"total": percentiles(total), "text_encoding": percentiles(encode),
            "search_only": percentiles(list(np.subtract(total, encode)))}


def recall_at_10(index, vectors: np.ndarray, seed: int, queries: int = 100) -> float:
    """Share of the exact top-10 windows the index returns (per clip). Half the queries lie near
    a window, half halfway between two random windows (a text that matches no cluster well)."""
    rng = np.random.default_rng(seed + 1)
    near = vectors[rng.choice(len(vectors), queries // 2)]
    near = near + 0.05 * rng.normal(size=near.shape).astype(np.float32)
    between = vectors[rng.choice(len(vectors), queries - queries // 2)] + vectors[rng.choice(len(vectors),
                                                                                             queries - queries // 2)]
    probes = np.concatenate([near, between])
    probes /= np.linalg.norm(probes, axis=1, keepdims=True)
    found = 0
    for probe in probes:
        exact = set(np.argpartition(-(vectors @ probe), 10)[:10])
        got = {int(h.window_id) for h in index.search_vector(probe, k=10, per="clip")}
        found += len(exact & got)
    return found / (10 * queries)


def search_at(size: int, dim: int, model, workdir: Path, queries: int) -> dict:
    """Write the index (FAISS trained on all cores), then time queries as `search` and `serve` run them."""
    import faiss

    from lightning_frozen.search import Index
    from lightning_frozen.search.query import query_threads

    torch.set_num_threads(os.cpu_count() or 1)
    faiss.omp_set_num_threads(os.cpu_count() or 1)
    vectors = clustered(size, dim, seed=size)
    folder = workdir / f"index_{size}_{dim}"
    started = time.perf_counter()
    faiss_seconds = synthetic_index(folder, vectors, model)
    index = Index(folder)
    query_threads()
    row = {"windows": size, "dim": dim, "kind": index.ann.kind, "faiss_build_s": round(faiss_seconds, 1),
           "write_and_build_s": round(time.perf_counter() - started, 1),
           "recall_at_10": round(recall_at_10(index, vectors, size), 4) if index.ann.kind != "flat" else 1.0}
    row.update(query_latency(index, queries))
    index.close()
    return row


def build_rate(workdir: Path, module) -> dict:
    """Index synthetic videos with the demo model (decoding in the main process, as `index` does by
    default); compare with embedding the same clips, already decoded, alone."""
    from lightning_frozen.data.synthetic import make_synthetic_dataset
    from lightning_frozen.data.transforms import VideoTransform
    from lightning_frozen.search import build_index
    from lightning_frozen.search.store import EmbeddingSettings
    from lightning_frozen.search.windows import VideoWindows

    data = make_synthetic_dataset(workdir / "videos_data", "webvid", num_train=40, num_test=1,
                                  num_frames_per_video=100, size=(80, 80), seed=5)
    summary = build_index(data / "videos", workdir / "build_index", module=module, batch_size=32, progress=False)
    settings = EmbeddingSettings(**json.loads((workdir / "build_index" / "manifest.json").read_text())["settings"])
    paths = sorted(p.relative_to(data / "videos").as_posix() for p in (data / "videos").rglob("*.mp4"))
    decoded = VideoWindows(data / "videos", paths, settings)
    clips = torch.cat([v.clips for v in (decoded[i] for i in range(len(paths))) if v.clips is not None])
    transform = VideoTransform(train=False, input_res=settings.input_res)
    started = time.perf_counter()
    with torch.inference_mode():
        for first in range(0, len(clips), 32):
            module.model.encode_video(transform(clips[first:first + 32]))
    forward = len(clips) / (time.perf_counter() - started)
    return {"videos": summary.videos, "windows": summary.windows,
            "build_clips_per_s": round(summary.clips_per_second, 1),
            "end_to_end_clips_per_s": round(summary.windows / summary.seconds, 1),
            "forward_only_clips_per_s": round(forward, 1),
            "build_over_forward": round(summary.clips_per_second / forward, 2), "device": "cpu"}


def server_rate(folder: Path, clients: int = 8, per_client: int = 50) -> dict:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    process = subprocess.Popen([sys.executable, str(ROOT / "benchmarks" / "search_serve.py"), str(folder), str(port)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        while True:
            try:
                http.client.HTTPConnection("127.0.0.1", port, timeout=2).request("GET", "/")
                break
            except OSError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise RuntimeError("the server did not start") from None
                time.sleep(0.5)
        errors = []

        def client(number: int) -> None:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            for i in range(per_client):
                connection.request("GET", "/api/search?" + urllib.parse.urlencode(
                    {"q": f"{QUERIES[(number + i) % len(QUERIES)]} {i}", "k": 10}))
                response = connection.getresponse()
                response.read()
                if response.status != 200:
                    errors.append(response.status)
            connection.close()

        started = time.perf_counter()
        with ThreadPoolExecutor(clients) as pool:
            list(pool.map(client, range(clients)))
        elapsed = time.perf_counter() - started
    finally:
        process.terminate()
        process.wait(timeout=60)
    return {"clients": clients, "queries": clients * per_client, "errors": len(errors),
            "queries_per_s": round(clients * per_client / elapsed, 1)}


def main(argv: Optional[list[str]] = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--queries", type=int, default=200, help="timed queries per size")
    parser.add_argument("--no-build", action="store_true", help="skip the index build rate")
    parser.add_argument("--json", default=str(DEFAULT_JSON))
    args = parser.parse_args(argv)
    module = demo_module()
    results: dict = {"machine": cpu_description(), "search": []}
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        for size in args.sizes:
            row = search_at(size, 128, module.model, workdir, args.queries)
            results["search"].append(row)
            print(f"{size:>9} windows  {row['kind']:<4}  p50 {row['total']['p50_ms']:6.1f} ms  p99 "
                  f"{row['total']['p99_ms']:6.1f} ms  (text {row['text_encoding']['p50_ms']:.1f} ms, search "
                  f"{row['search_only']['p50_ms']:.1f} ms)  recall@10 {row['recall_at_10']:.3f}  "
                  f"FAISS build {row['faiss_build_s']} s", flush=True)
        largest = max(args.sizes)
        results["server"] = server_rate(workdir / f"index_{largest}_128")
        print(f"server at {largest} windows: {results['server']['queries_per_s']} queries/s, "
              f"{results['server']['errors']} errors", flush=True)
        for name in [n for n in os.listdir(workdir) if n.startswith("index_")]:
            subprocess.run(["rm", "-rf", str(workdir / name)], check=True)
        row = search_at(largest, 256, distilbert_model(), workdir, args.queries)
        results["distilbert_geometry"] = row
        print(f"DistilBERT geometry, 256-d, {largest} windows: p50 {row['total']['p50_ms']:.1f} ms, p99 "
              f"{row['total']['p99_ms']:.1f} ms (text {row['text_encoding']['p50_ms']:.1f} ms), recall@10 "
              f"{row['recall_at_10']:.3f}", flush=True)
        if not args.no_build:
            results["build"] = build_rate(workdir, module)
            print(f"index build: {results['build']}", flush=True)
    return write_json(results, args.json)


def write_json(results: dict, path: str) -> dict:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(results, indent=1))
    print(f"written {path}")
    return results


if __name__ == "__main__":
    main()
