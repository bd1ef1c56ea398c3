"""A cold `search` on the demo index, timed beside `python -c "import torch, transformers"`.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/search_cold_start.py [--ckpt runs/demo/.../stage1-4f-best.ckpt]

Builds the demo index (the demo's 100 synthetic test videos, windows as `index` chooses them;
`make demo`'s data when it is there, else the same test split written to a temporary folder)
with the checkpoint given, or without one with a demo-geometry model (random video tower, the
bundled MiniLM): a query reads only the index's text tower, so its time does not depend on
the weights. Then runs, in turn and each in a new process, the import baseline, `python -m
lightning_frozen.search.query INDEX "query"` and `lightning-frozen search INDEX "query"` (the
installed command, with its dispatcher's imports), and prints each one's median wall time and
its ratio to the baseline; writes JSON.
"""
from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

import torch
from machine import cpu_description
from search import write_json

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_JSON = ROOT / "benchmarks" / "results" / "search_cold_start.json"
QUERY = "a white circle moving to the left"


def demo_checkpoint(path: Path) -> Path:
    """A Lightning-style .ckpt of the demo's model and data settings (random video tower, pretrained MiniLM)."""
    import yaml

    from lightning_frozen.models import load_pretrained_towers
    from lightning_frozen.module import FrozenModule

    config = yaml.safe_load((ROOT / "configs" / "demo.yaml").read_text())
    model, data = config["model"], config["data"]
    torch.manual_seed(0)
    module = FrozenModule(video=model["video"], text=model["text"], projection_dim=model["projection_dim"])
    load_pretrained_towers(module.model)
    torch.save({"state_dict": {f"model.{k}": v for k, v in module.model.state_dict().items()},
                "hyper_parameters": {key: model[key] for key in ("video", "text", "projection_dim")},
                "datamodule_hyper_parameters": {"tokenizer": model["text"]["name_or_path"],
                                                "max_length": data["max_length"], "padding": "longest",
                                                "input_res": data["input_res"]}}, path)
    return path


def wall_seconds(command: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - started


def main(argv: Optional[list[str]] = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", help="a checkpoint trained with configs/demo.yaml (default: an untrained one)")
    parser.add_argument("--data", default=str(ROOT / "data" / "synthetic_msrvtt"), help="the demo's dataset, if made")
    parser.add_argument("--runs", type=int, default=5, help="timed runs of each command")
    parser.add_argument("--json", default=str(DEFAULT_JSON))
    args = parser.parse_args(argv)
    from lightning_frozen.data import MSRVTT
    from lightning_frozen.data.synthetic import make_synthetic_dataset
    from lightning_frozen.search import build_index

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = Path(args.data) if Path(args.data).is_dir() else \
            make_synthetic_dataset(tmp / "msrvtt", "msrvtt", num_train=1)  # the demo's test split, seed and look
        videos = tmp / "videos"
        videos.mkdir()
        for path in MSRVTT(data, cut="jsfusion", split="test").records["path"]:
            shutil.copy(data / "videos" / "all" / Path(path).name, videos)
        ckpt = Path(args.ckpt) if args.ckpt else demo_checkpoint(tmp / "demo.ckpt")
        index = tmp / "demo_index"
        summary = build_index(videos, index, ckpt, progress=False)
        print(summary.report().splitlines()[0], flush=True)
        commands = {
            "import torch, transformers": [sys.executable, "-c", "import torch, transformers"],
            "python -m lightning_frozen.search.query": [sys.executable, "-m", "lightning_frozen.search.query",
                                                        str(index), QUERY],
            "lightning-frozen search": [str(Path(sys.executable).with_name("lightning-frozen")), "search", str(index),
                                        QUERY],
        }
        times: dict[str, list[float]] = {name: [] for name in commands}
        for command in commands.values():  # once each untimed: the files are in the page cache for all
            wall_seconds(command)
        for _ in range(args.runs):
            for name, command in commands.items():
                times[name].append(wall_seconds(command))
    baseline = statistics.median(times["import torch, transformers"])
    results = {"machine": cpu_description(),
               "index": summary.report().splitlines()[0], "checkpoint": str(args.ckpt or "untrained demo geometry"),
               "runs": args.runs, "median_s": {}, "ratio_to_baseline": {}, "all_s": times}
    for name, values in times.items():
        median = statistics.median(values)
        results["median_s"][name] = round(median, 2)
        results["ratio_to_baseline"][name] = round(median / baseline, 2)
        print(f"{name:<42} median {median:5.2f} s  ({median / baseline:.2f}x the baseline)  "
              f"runs: {', '.join(f'{v:.2f}' for v in values)}", flush=True)
    return write_json(results, args.json)


if __name__ == "__main__":
    main()
