"""`make demo`: synthetic MSR-VTT data -> frame curriculum 1 -> 4 frames -> test table, on a CPU.

It also measures what the curriculum is for: on captions that differ only in the motion
direction, how often each stage's best model picks the right one (chance is 25%).
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Optional, Sequence

from .arguments import ArgumentParser


def direction_accuracy(cli_module, datamodule, dataset_root: Path, frames: int) -> float:
    """Share of test videos whose true direction wins among four captions differing only in direction."""
    import torch

    from .data.synthetic import DIRECTIONS, VIDEO_TEMPLATES

    probe = VIDEO_TEMPLATES[0]  # "a {fg} {shape} {motion} on a {bg} background"
    clips = json.loads((dataset_root / "synthetic.json").read_text())["clips"]
    dataset = datamodule.datasets["test"][0]
    directions = list(DIRECTIONS)
    tokenizer = datamodule.tokenizer
    cli_module.eval()
    correct = total = 0
    with datamodule.run_state.frames(frames):
        for index in range(len(dataset)):
            item = dataset[index]
            spec = clips[item["meta"]["path"]]
            captions = [probe.format(fg=spec["foreground"], bg=spec["background"], shape=spec["shape"],
                                     motion=DIRECTIONS[d][1][0]) for d in directions]
            tokens = tokenizer(captions, padding=True, return_tensors="pt")
            video = datamodule.eval_transform(item["video"].unsqueeze(0))
            with torch.no_grad():
                text_emb, video_emb = cli_module.embed_pairs({"video": video, **tokens})  # one clip or several
            best = int(cli_module.model.similarity(text_emb, video_emb)[:, 0].argmax())
            correct += directions[best] == spec["direction"]
            total += 1
    return 100.0 * correct / total


def run_settings(config: str) -> dict:
    """The ``trainer`` section of a config file."""
    import yaml

    try:
        settings = yaml.safe_load(Path(config).read_text())
    except yaml.YAMLError as error:
        raise ValueError(f"{config} is not valid YAML: {str(error).splitlines()[0]}") from None
    trainer = settings.get("trainer") if isinstance(settings, dict) else None
    return trainer if isinstance(trainer, dict) else {}


def main(argv: Optional[Sequence[str]] = None) -> dict:
    parser = ArgumentParser(prog="lightning-frozen demo", description=__doc__)
    parser.add_argument("--config", default="configs/demo.yaml")
    parser.add_argument("--data", default="data/synthetic_msrvtt",
                        help="synthetic dataset root, made if missing (the config's datasets must point at it)")
    parser.add_argument("--threads", type=int, default=min(4, os.cpu_count() or 1),
                        help="torch threads (fixed, so that two runs on one machine give the same bits)")
    args = parser.parse_args(argv)
    if args.threads < 1:
        raise ValueError(f"--threads must be >= 1, got {args.threads}")

    import torch

    from .callbacks import FrameCurriculum
    from .callbacks.run_folder import check_run_folder
    from .data.synthetic import DIRECTIONS, make_synthetic_dataset
    from .lightning_cli import run_cli, run_folder
    from .models import load_checkpoint

    # An interrupted demo continues where it stopped, a finished one is only re-tested (`make clean-demo`
    # starts over): `--ckpt_path last` when the run folder holds a last.ckpt. The run folder is checked
    # before the data is made: a refused demo writes nothing.
    folder = run_folder(None, run_settings(args.config).get("default_root_dir"))
    resume = ["--ckpt_path", "last"] if (folder / "checkpoints" / "last.ckpt").is_file() else []
    check_run_folder(folder, "fit", continues=bool(resume))

    started = time.time()
    torch.set_num_threads(args.threads)
    root = make_synthetic_dataset(args.data, "msrvtt")  # the defaults are the demo's dataset
    print(f"[demo] data ready at {root} ({time.time() - started:.0f} s)")
    cli = run_cli(["fit", "--config", args.config, "--run_dir", str(folder), *resume])
    curriculum = next(c for c in cli.trainer.callbacks if isinstance(c, FrameCurriculum))
    last_stage = len(curriculum.stages) - 1
    final_best = curriculum.best_paths[last_stage]
    print(f"[demo] fit done ({time.time() - started:.0f} s); testing {final_best} (chosen on the held-out clips)")
    test_metrics = cli.trainer.test(cli.model, datamodule=cli.datamodule, ckpt_path=final_best, weights_only=False,
                                    verbose=False)[0]

    probes = {}
    for stage_index in (0, last_stage):
        path = curriculum.best_paths[stage_index]
        load_checkpoint(cli.model.model, path)
        frames = curriculum.stages[stage_index].frames
        probes[f"stage{stage_index}-{frames}f"] = direction_accuracy(cli.model, cli.datamodule, root, frames)

    num_test = len(cli.datamodule.datasets["test"][0])
    chance_r1 = 100.0 / num_test
    summary = {
        "test_t2v_R1": test_metrics["test/t2v_R1"],
        "chance_R1": chance_r1,
        "R1_over_chance": test_metrics["test/t2v_R1"] / chance_r1,
        "direction_accuracy": probes,
        "direction_chance": 100.0 / len(DIRECTIONS),
        "best_val_gmean": {f"stage{i}": v for i, v in sorted(curriculum.best_scores.items())},
        "checkpoints": {f"stage{i}": p for i, p in sorted(curriculum.best_paths.items())},
        "threads": args.threads,
        "seconds": round(time.time() - started, 1),
    }
    out = cli.run_dir / "demo_summary.json"
    out.write_text(json.dumps(summary, indent=1))
    print("\n[demo] test t2v R@1 {:.1f}% = {:.1f}x chance ({:.1f}%)".format(
        summary["test_t2v_R1"], summary["R1_over_chance"], chance_r1))
    print("[demo] direction-only captions (chance {:.0f}%): ".format(summary["direction_chance"])
          + ", ".join(f"{k} {v:.1f}%" for k, v in probes.items()))
    print(f"[demo] {summary['seconds']:.0f} s in all; summary in {out}; curves in "
          f"{Path(final_best).parent / 'curves.png'}; TensorBoard: tensorboard --logdir runs")
    return summary


if __name__ == "__main__":
    main()
