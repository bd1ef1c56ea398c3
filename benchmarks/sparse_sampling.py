"""ClipBERT's sparse sampling on the demo: N clips of F frames per video, at equal frames per step.

Each run is `lightning-frozen fit` on `configs/demo.yaml`'s data and model (its synthetic MSR-VTT
clips, the tiny video tower, MiniLM's first 3 layers) as the multi-frame stage of the demo's
frame curriculum, shortened: it starts from the weights of the demo's 1-frame stage
(``--init-from``, ``runs/demo/checkpoints/stage0-1f-best.ckpt`` that `make demo` writes), trains
``--epochs`` epochs at the compared setting (warm-up, then cosine over them) and tests the last
weights (no validation). Settings:

* ``1x4``: one clip of 4 frames per video (``model.video.num_frames: 4``), as the demo trains;
* ``2x2``: two clips of 2 frames (``clips_per_video: 2``, ``num_frames: 2``), one from each half
  of the video, encoded one by one and combined by mean consensus before the loss.

Every run is tested on the demo's 100 test videos: text->video R@1, and the direction probe of
``make demo`` (four captions that differ only in the direction; chance 25%). ``2x2`` is tested
with 2 clips (the frames it trained with) and 4 clips (denser, as ClipBERT tests). Training speed
is videos/s over the steps after a warm-up (``FitClock``; clips/s is videos/s x clips). Seeds change
the training order, the frames drawn and the augmentation (the starting weights are the same); the settings run
interleaved (seed 0: 1x4, 2x2; seed 1: ...) so a busy machine slows both alike.

It prints a table and writes JSON (after every run, so an interrupted sweep keeps what it measured).

    python benchmarks/sparse_sampling.py --epochs 27 --seeds 0 1 2
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Optional

import torch
import yaml

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
for folder in (ROOT, HERE):
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))

import fit_throughput  # noqa: E402,F401  the runs' configs name its FitClock callback
from machine import cpu_description  # noqa: E402

from lightning_frozen.data.synthetic import make_synthetic_dataset  # noqa: E402
from lightning_frozen.demo import direction_accuracy  # noqa: E402
from lightning_frozen.lightning_cli import run_cli  # noqa: E402

SETTINGS = {"1x4": {"clips": 1, "frames": 4, "test_clips": [1]},
            "2x2": {"clips": 2, "frames": 2, "test_clips": [2, 4]}}
DEFAULT_JSON = ROOT / "benchmarks" / "results" / "sparse_sampling.json"
DEMO_STAGE0 = ROOT / "runs" / "demo" / "checkpoints" / "stage0-1f-best.ckpt"


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "demo.yaml")
    parser.add_argument("--data", type=Path, default=ROOT / "data" / "synthetic_msrvtt",
                        help="the demo's dataset (made if missing)")
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--init-from", type=Path, default=DEMO_STAGE0,
                        help="starting weights (the demo's 1-frame stage); a missing file: from scratch")
    parser.add_argument("--limit-train-batches", type=int, default=None, help="a dry run: fewer steps per epoch")
    parser.add_argument("--threads", type=int, default=min(4, os.cpu_count() or 1))
    parser.add_argument("--runs", type=Path, default=ROOT / "runs" / "sparse_sampling")
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON)
    return parser.parse_args(argv)


def run_config(args: argparse.Namespace, setting: str, seed: int, folder: Path) -> Path:
    """The demo's config for one run (see the module docstring)."""
    config = yaml.safe_load(args.config.read_text())
    spec = SETTINGS[setting]
    steps_per_epoch = args.limit_train_batches or 15  # 500 training clips, batch 32, last batch dropped
    steps = steps_per_epoch * args.epochs
    warmup = min(10, steps - 1)
    config["seed_everything"] = seed
    config["trainer"].update(
        max_epochs=args.epochs, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        limit_val_batches=0, num_sanity_val_steps=0, default_root_dir=str(folder / "run"),
        callbacks=[{"class_path": "fit_throughput.FitClock",
                    "init_args": {"out": str(folder / "clock.json"), "warmup": warmup, "timed": steps - warmup}}])
    if args.limit_train_batches:
        config["trainer"]["limit_train_batches"] = args.limit_train_batches
    config["model"]["video"]["num_frames"] = spec["frames"]
    if args.init_from.is_file():
        config["model"]["init_from"] = str(args.init_from)
    config["model"]["warmup_steps"] = min(config["model"].get("warmup_steps", 0), steps // 4)
    for group in ("train_datasets", "val_datasets", "test_datasets"):
        for dataset in config["data"][group]:
            dataset["init_args"]["root"] = str(args.data)
    config["data"]["train_datasets"][0]["init_args"]["clips_per_video"] = spec["clips"]
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def measure(args: argparse.Namespace, setting: str, seed: int) -> dict[str, Any]:
    folder = args.runs / f"{setting}-seed{seed}"
    folder.mkdir(parents=True, exist_ok=True)
    cli = run_cli(["--config", str(run_config(args, setting, seed, folder))], run=False)
    started = time.time()
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    clock = json.loads((folder / "clock.json").read_text())
    spec = SETTINGS[setting]
    result: dict[str, Any] = {"setting": setting, "seed": seed, "fit_s": round(time.time() - started, 1),
                              "videos_per_s": clock["clips_per_s"], "clips_per_s": clock["clips_per_s"] * spec["clips"],
                              "tests": {}}
    test_set = cli.datamodule.datasets["test"][0]
    for clips in spec["test_clips"]:
        test_set.clips_per_video = clips
        metrics = cli.trainer.test(cli.model, datamodule=cli.datamodule, verbose=False)[0]
        probe = direction_accuracy(cli.model, cli.datamodule, args.data, spec["frames"])
        result["tests"][f"{clips}x{spec['frames']}"] = {"t2v_R1": metrics["test/t2v_R1"],
                                                       "t2v_R5": metrics["test/t2v_R5"], "direction": probe}
    return result


def mean_sd(values: list[float]) -> str:
    if not values:
        return "-"
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):5.1f} +- {sd:4.1f}"


def table(results: list[dict[str, Any]]) -> str:
    rows = [f"{'train':>5} | {'test':>4} | {'t2v R@1 (per seed)':>26} | {'mean +- sd':>12} | "
            f"{'direction % (per seed)':>24} | {'mean +- sd':>12} | videos/s | clips/s"]
    for setting, spec in SETTINGS.items():
        runs = [r for r in results if r["setting"] == setting]
        for test in (f"{c}x{spec['frames']}" for c in spec["test_clips"]):
            r1 = [r["tests"][test]["t2v_R1"] for r in runs if test in r["tests"]]
            probe = [r["tests"][test]["direction"] for r in runs if test in r["tests"]]
            if not r1:
                continue
            speed = statistics.mean(r["videos_per_s"] for r in runs)
            clips = statistics.mean(r["clips_per_s"] for r in runs)
            rows.append(f"{setting:>5} | {test:>4} | {' '.join(f'{v:5.1f}' for v in r1):>26} | {mean_sd(r1):>12} | "
                        f"{' '.join(f'{v:5.1f}' for v in probe):>24} | {mean_sd(probe):>12} | {speed:8.1f} | "
                        f"{clips:7.1f}")
    return "\n".join(rows)


def paired_differences(results: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """2x2 minus 1x4, seed by seed, for each 2x2 test."""
    by_seed = {(r["setting"], r["seed"]): r for r in results}
    out = {}
    for test in (f"{c}x2" for c in SETTINGS["2x2"]["test_clips"]):
        for metric in ("t2v_R1", "direction"):
            diffs = [by_seed[("2x2", s)]["tests"][test][metric] - by_seed[("1x4", s)]["tests"]["1x4"][metric]
                     for (setting, s) in by_seed if setting == "1x4" and ("2x2", s) in by_seed]
            if diffs:
                out[f"{test}-1x4 {metric}"] = {"per_seed": diffs, "mean": statistics.mean(diffs),
                                               "sd": statistics.stdev(diffs) if len(diffs) > 1 else 0.0}
    return out


def main(argv: Optional[list[str]] = None) -> dict[str, Any]:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    make_synthetic_dataset(args.data, "msrvtt")  # the demo's dataset (reused when there)
    report: dict[str, Any] = {"machine": cpu_description(), "cpus": os.cpu_count(),
                              "threads": args.threads, "torch": torch.__version__, "epochs": args.epochs,
                              "limit_train_batches": args.limit_train_batches,
                              "init_from": str(args.init_from) if args.init_from.is_file() else None, "runs": []}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    for seed in args.seeds:
        for setting in args.settings:
            report["runs"].append(measure(args, setting, seed))
            report["differences"] = paired_differences(report["runs"])
            args.json.write_text(json.dumps(report, indent=1))
            print(f"[sparse_sampling] {setting} seed {seed}: {report['runs'][-1]}", flush=True)
    print("\n" + table(report["runs"]))
    for name, diff in report["differences"].items():
        per_seed = " ".join(f"{d:+.1f}" for d in diff["per_seed"])
        print(f"{name}: {per_seed}  mean {diff['mean']:+.1f} +- {diff['sd']:.1f}")
    print(f"JSON: {args.json}")
    return report


if __name__ == "__main__":
    main()
