"""The classification recipes on synthetic Kinetics-layout clips: zero-shot, fine-tuning, linear probe,
partial fine-tuning, three test crops x two clips, and a frame_interval sweep.

Every run is `configs/demo_classify.yaml` (VideoClassifier on the demo's towers, 8 classes "circle
moving left" ... "square moving down", chance 12.5%) through `lightning-frozen`'s own CLI classes, with:

* zero-shot: ``head: zero_shot`` on the checkpoint `make demo` writes, no training, with each of
  ``--prompts``; the one with the best validation top-1 is the zero-shot figure (chosen on the
  100 validation clips, reported on the 100 test clips);
* fine-tune / linear probe / partial: a linear head trained ``--epochs`` epochs from that checkpoint,
  the whole tower / none of it (``train_blocks: 0``) / its last block (``train_blocks: 1``);
* frame_interval sweep: the fine-tuning run with frames ``frame_interval`` apart (train and test),
  against the default sampler that spreads the 4 frames over the 20-frame clip.

No validation: the last weights are tested on the 100 test clips, with one centre crop of one clip
and with 3 crops x 2 clips (class probabilities averaged over the 6 views). Prints a table, writes JSON.

    lightning-frozen synthetic --root data/synthetic_kinetics --layout kinetics --size 80 112
    python benchmarks/classification.py --epochs 40
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Optional

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from machine import cpu_description  # noqa: E402

from lightning_frozen.data.transforms import VideoTransform  # noqa: E402
from lightning_frozen.lightning_cli import run_cli  # noqa: E402

DEFAULT_JSON = ROOT / "benchmarks" / "results" / "classification.json"
DEMO_BEST = ROOT / "runs" / "demo" / "checkpoints" / "stage1-4f-best.ckpt"
VIEWS = {"1x1": (1, 1), "3x2": (3, 2)}  # crops x clips


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "demo_classify.yaml")
    parser.add_argument("--init-from", type=Path, default=DEMO_BEST, help="the checkpoint `make demo` writes")
    parser.add_argument("--data", type=Path, default=ROOT / "data" / "synthetic_kinetics")
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--intervals", type=int, nargs="*", default=[1, 2, 4, 6],
                        help="frame_interval values of the sweep (4 frames span 3 x interval + 1 of the 20)")
    parser.add_argument("--parts", nargs="+", default=["zero_shot", "fine_tune", "linear_probe", "partial", "sweep"])
    parser.add_argument("--limit-train-batches", type=int, default=None, help="a dry run: fewer steps per epoch")
    parser.add_argument("--prompts", nargs="+", default=["a video of a {label}", "a {label}", "{label}"],
                        help="zero-shot prompt templates to choose from on the validation clips")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=min(4, os.cpu_count() or 1))
    parser.add_argument("--runs", type=Path, default=ROOT / "runs" / "classification")
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON)
    return parser.parse_args(argv)


def run_config(args: argparse.Namespace, name: str, model: dict[str, Any], interval: Optional[int]) -> Path:
    config = yaml.safe_load(args.config.read_text())
    folder = args.runs / name
    folder.mkdir(parents=True, exist_ok=True)
    config["seed_everything"] = args.seed
    config["trainer"].update(max_epochs=args.epochs, logger=False, enable_checkpointing=False, callbacks=[],
                             enable_progress_bar=False, limit_val_batches=0, default_root_dir=str(folder / "run"))
    if args.limit_train_batches:
        config["trainer"]["limit_train_batches"] = args.limit_train_batches
    config["model"]["init_args"].update(init_from=str(args.init_from), **model)
    for group in ("train_datasets", "val_datasets", "test_datasets"):
        for dataset in config["data"][group]:
            dataset["init_args"].update(root=str(args.data), frame_interval=interval)
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def measure(args: argparse.Namespace, name: str, model: dict[str, Any], train: bool,
            interval: Optional[int] = None, views: tuple[str, ...] = tuple(VIEWS)) -> dict[str, Any]:
    cli = run_cli(["--config", str(run_config(args, name, model, interval))], run=False)
    result: dict[str, Any] = {"name": name, "model": model, "frame_interval": interval, "tests": {}}
    if train:
        started = time.time()
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)
        result["fit_s"] = round(time.time() - started, 1)
        result["steps"] = cli.trainer.global_step
    datamodule = cli.datamodule
    if not train:  # zero-shot: its validation score chooses the prompt
        cli.trainer.limit_val_batches = 1.0
        result["val_top1"] = cli.trainer.validate(cli.model, datamodule=datamodule, verbose=False)[0]["val/top1"]
    for view in views:
        crops, clips = VIEWS[view]
        datamodule.datasets["test"][0].clips_per_video = clips
        datamodule.test_transform = VideoTransform(train=False, input_res=datamodule.eval_transform.input_res,
                                                   crops=crops)
        metrics = cli.trainer.test(cli.model, datamodule=datamodule, verbose=False)[0]
        result["tests"][view] = {"top1": metrics["test/top1"], "top5": metrics["test/top5"],
                                 "videos": metrics["test/videos_scored"]}
    print(f"[classification] {name}: {result}", flush=True)
    return result


def table(results: list[dict[str, Any]], epochs: int) -> str:
    rows = [f"{'run':<24} | {'training':<34} | {'top-1 1 crop x 1 clip':>21} | {'top-1 3 crops x 2 clips':>23} | "
            f"{'top-5 (1x1)':>11}"]
    for r in results:
        if r["frame_interval"] is not None:
            continue
        blocks = "all" if r["model"].get("train_blocks") is None else r["model"]["train_blocks"]
        if "fit_s" in r:
            training = f"{epochs} epochs, blocks trained: {blocks} ({r['fit_s']:.0f} s)"
        else:
            training = f"none; val top-1 {r['val_top1']:.1f}: {r['model']['prompt']!r}"
        tests = r["tests"]
        rows.append(f"{r['name']:<24} | {training:<34} | {tests['1x1']['top1']:21.1f} | "
                    f"{tests.get('3x2', {}).get('top1', float('nan')):23.1f} | {tests['1x1']['top5']:11.1f}")
    sweep = [r for r in results if r["name"] == "fine_tune" or r["frame_interval"] is not None]
    if len(sweep) > 1:
        rows += ["", f"{'frame_interval':>14} | {'span (frames of 20)':>19} | {'top-1 1x1':>9} | {'top-1 3x2':>9}"]
        for r in sweep:
            interval = r["frame_interval"]
            span = "spread (all 20)" if interval is None else str(3 * interval + 1)
            top3 = r["tests"].get("3x2", {}).get("top1", float("nan"))
            rows.append(f"{str(interval):>14} | {span:>19} | {r['tests']['1x1']['top1']:9.1f} | {top3:9.1f}")
    return "\n".join(rows)


def main(argv: Optional[list[str]] = None) -> dict[str, Any]:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    if not args.init_from.is_file():
        raise SystemExit(f"{args.init_from} not found: run `make demo` first (or pass --init-from)")
    report: dict[str, Any] = {"machine": cpu_description(), "cpus": os.cpu_count(),
                              "threads": args.threads, "torch": torch.__version__, "epochs": args.epochs,
                              "init_from": str(args.init_from), "seed": args.seed, "runs": []}
    plan = {
        "zero_shot": ("zero_shot", {"head": "zero_shot"}, False),
        "fine_tune": ("fine_tune", {"head": "linear", "train_blocks": None}, True),
        "linear_probe": ("linear_probe", {"head": "linear", "train_blocks": 0}, True),
        "partial": ("partial_last_block", {"head": "linear", "train_blocks": 1}, True),
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    for part in args.parts:
        if part == "sweep":
            for interval in args.intervals:
                report["runs"].append(measure(args, f"fine_tune_interval{interval}",
                                              {"head": "linear", "train_blocks": None}, True, interval))
                args.json.write_text(json.dumps(report, indent=1))
            continue
        name, model, train = plan[part]
        for prompt in args.prompts if part == "zero_shot" else [None]:
            settings = model if prompt is None else {**model, "prompt": prompt}
            run_name = name if prompt is None else f"{name}_prompt{args.prompts.index(prompt)}"
            report["runs"].append(measure(args, run_name, settings, train))
            args.json.write_text(json.dumps(report, indent=1))
    zero_shot = [r for r in report["runs"] if "val_top1" in r]
    if zero_shot:
        chosen = max(zero_shot, key=lambda r: r["val_top1"])
        report["zero_shot_chosen"] = {"prompt": chosen["model"]["prompt"], "val_top1": chosen["val_top1"],
                                      "test": chosen["tests"], "chance": 100 / 8}
        args.json.write_text(json.dumps(report, indent=1))
    print("\n" + table(report["runs"], args.epochs))
    if zero_shot:
        print(f"zero-shot, prompt chosen on the validation clips: {chosen['model']['prompt']!r}: test top-1 "
              f"{chosen['tests']['1x1']['top1']:.1f}% (chance 12.5%)")
    print(f"JSON: {args.json}")
    return report


if __name__ == "__main__":
    main()
