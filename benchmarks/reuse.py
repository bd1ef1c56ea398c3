"""Computation reuse and the frame cache on the demo's CLIP-shaped model (configs/demo_clip.yaml), on a CPU.

For each reuse mode and setting, on the 100 test clips of the demo's synthetic data (8 frames of
64 px): the share of token computations skipped ("reuse rate"), FLOPs per clip (counted by
torch's FlopCounterMode, with the CPU attention kernel added as benchmarks/model_throughput.py
does), CPU clips per second with 1 and 2 threads (the exact model and the setting timed in
turns, so that both see the same load; medians), the mean cosine of the video embeddings to the
exact model's, text-to-video R@1, the share of captions whose top-1 video is the exact model's,
and the direction probe (four captions that differ only in the direction; chance 25%). The
synthetic test set holds clips that look alike (same colours, shape and direction), whose ranks
swap at the slightest change: R@1 moves by a point or two even where the embeddings agree to 1e-5.

Modes: "diff" (training-free reuse at several thresholds) and "learned" (decisions trained by
`fit` with configs/demo_clip_reuse.yaml at several target rates) on the per-frame tower with
the temporal transformer, "tome" beside them, and "diff" on the space-time tower. Then what each
temporal design scores, and the frame cache: windows of 16 frames at half-window stride over a
200-frame video, embedded with ``FrozenInTime.encode_windows`` (each distinct frame encoded
once) against each window encoded alone, with the largest difference between the two.

Models missing under runs/ are trained first (`lightning-frozen fit`, about as long as the demo
per design). Writes benchmarks/results/reuse.json and benchmarks/figures/reuse.png.

    python benchmarks/reuse.py                    # everything
    python benchmarks/reuse.py --skip-training    # only what is already trained
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
from machine import cpu_description  # noqa: E402
from model_throughput import counted_flops  # noqa: E402

from lightning_frozen.data import MSRVTT  # noqa: E402
from lightning_frozen.data.synthetic import DIRECTIONS, VIDEO_TEMPLATES, make_synthetic_dataset  # noqa: E402
from lightning_frozen.data.transforms import VideoTransform  # noqa: E402
from lightning_frozen.data.video import read_frames, sample_frame_indices  # noqa: E402
from lightning_frozen.lightning_cli import run_cli  # noqa: E402
from lightning_frozen.metrics import t2v_metrics  # noqa: E402
from lightning_frozen.models import ModelConfig, create_model, safe_torch_load  # noqa: E402
from lightning_frozen.tokenizer import build_tokenizer  # noqa: E402

CONFIG = "configs/demo_clip.yaml"
REUSE_CONFIG = "configs/demo_clip_reuse.yaml"
DATA = Path("data/synthetic_msrvtt")
PROBE_TEMPLATE = VIDEO_TEMPLATES[0]  # the demo's direction probe: "a {fg} {shape} {motion} on a {bg} background"
DESIGNS = {"transformer": "runs/demo_clip", "mean": "runs/demo_clip_mean", "space_time": "runs/demo_clip_space_time"}
SETTINGS: dict[str, list[dict[str, Any]]] = {
    "diff": [{"mode": "diff", "threshold": t} for t in (0.02, 0.05, 0.1, 0.2, 0.4)],
    "tome": [{"mode": "tome", "tome_r": r} for r in (8, 16, 24, 28)],
    "learned": [{"mode": "learned", "target_rate": r} for r in (0.85, 0.9, 0.95)],
    "diff space_time": [{"mode": "diff", "threshold": t} for t in (0.02, 0.05, 0.1, 0.2)],
}


def progress(message: str) -> None:
    print(f"[reuse] {message}", flush=True)


def machine() -> str:
    return f"{cpu_description()}; torch {torch.__version__}"


# ----------------------------------------------------------------------------- models
def train(run: str, args: list[str], config: str = CONFIG) -> None:
    progress(f"training {run}: lightning-frozen fit --config {config} {' '.join(args)}")
    started = time.time()
    run_cli(["fit", "--config", config, "--trainer.enable_progress_bar", "false", *args])
    progress(f"trained {run} in {time.time() - started:.0f} s")


def elsewhere(run: str) -> list[str]:
    """Command-line arguments that put a run's checkpoints and logs into ``run`` (runs/<name>)."""
    return ["--run_dir", run]


def design_checkpoint(design: str, skip_training: bool) -> Optional[Path]:
    """The best checkpoint of the demo_clip model's last curriculum stage, with this temporal design."""
    run = DESIGNS[design]
    path = Path(run) / "checkpoints" / "stage1-8f-best.ckpt"
    if not path.is_file() and not skip_training:
        train(run, [] if design == "transformer" else ["--model.video.temporal", design, *elsewhere(run)])
    return path if path.is_file() else None


def learned_checkpoint(rate: float, skip_training: bool) -> Optional[Path]:
    run = f"runs/demo_clip_reuse_{rate:g}"
    path = Path(run) / "checkpoints" / "last.ckpt"
    if not path.is_file() and not skip_training and design_checkpoint("transformer", True) is not None:
        train(run, ["--model.video.reuse.target_rate", str(rate), *elsewhere(run)], REUSE_CONFIG)
    return path if path.is_file() else None


def load(checkpoint: Path, reuse: Optional[dict[str, Any]] = None) -> torch.nn.Module:
    """The checkpoint's model, with ``reuse`` instead of its own reuse setting."""
    config = ModelConfig.from_checkpoint(safe_torch_load(checkpoint), checkpoint.name).to_dict()
    if reuse is not None:
        config["video"]["reuse"] = reuse
    return create_model(config, weights=checkpoint).eval()


# ----------------------------------------------------------------------------- data
class TestSet:
    """The 100 test clips (normalised), their captions and the direction-probe captions."""

    def __init__(self, frames: int, input_res: int, tokenizer_name: str):
        dataset = MSRVTT(DATA, cut="jsfusion", split="test", frame_size=80)
        dataset.run_state.set_num_frames(frames)
        transform = VideoTransform(train=False, input_res=input_res)
        items = [dataset[i] for i in range(len(dataset))]
        self.clips = torch.cat([transform(item["video"].unsqueeze(0)) for item in items])
        tokenizer = build_tokenizer(tokenizer_name)
        self.captions = tokenizer([item["text"] for item in items], padding=True, return_tensors="pt")
        specs = json.loads((DATA / "synthetic.json").read_text())["clips"]
        self.directions = list(DIRECTIONS)
        self.truth = torch.tensor([self.directions.index(specs[item["meta"]["path"]]["direction"]) for item in items])
        probes = [PROBE_TEMPLATE.format(fg=spec["foreground"], bg=spec["background"], shape=spec["shape"],
                                        motion=DIRECTIONS[d][1][0])
                  for spec in (specs[item["meta"]["path"]] for item in items) for d in self.directions]
        self.probes = tokenizer(probes, padding=True, return_tensors="pt")


@torch.no_grad()
def text_embeddings(model: torch.nn.Module, test: TestSet) -> tuple[torch.Tensor, torch.Tensor]:
    captions = model.encode_text(test.captions["input_ids"], test.captions["attention_mask"])
    probes = model.encode_text(test.probes["input_ids"], test.probes["attention_mask"])
    return F.normalize(captions, dim=-1), F.normalize(probes, dim=-1).view(len(test.clips), len(test.directions), -1)


@torch.no_grad()
def embed(model: torch.nn.Module, clips: torch.Tensor, batch: int) -> torch.Tensor:
    return torch.cat([model.encode_video(clips[i:i + batch]) for i in range(0, len(clips), batch)])


def interleaved_speed(baseline: Callable[[], Any], run: Callable[[], Any], count: int, threads: int,
                      repeats: int) -> dict[str, float]:
    """Items per second of ``run`` and of ``baseline``, timed in turns (so both see the same load on a
    shared machine): the medians, and the median of the per-turn speed-ups."""
    torch.set_num_threads(threads)
    base_times, run_times = [], []
    with torch.no_grad():
        baseline(), run()  # warm-up
        for _ in range(repeats):
            for fn, times in ((baseline, base_times), (run, run_times)):
                started = time.perf_counter()
                fn()
                times.append(time.perf_counter() - started)
    torch.set_num_threads(2)
    return {"baseline_per_s": count / statistics.median(base_times), "per_s": count / statistics.median(run_times),
            "speedup": statistics.median(b / r for b, r in zip(base_times, run_times))}


def evaluate(model: torch.nn.Module, test: TestSet, exact: Optional[dict], args: argparse.Namespace) -> dict:
    """Reuse rate, FLOPs, CPU speed, cosine to the exact model, R@1 and the direction probe of one setting
    (``exact``: the exact model's result, with its model and embeddings)."""
    captions, probes = text_embeddings(model, test)
    model.reuse.reset_counts()
    video = F.normalize(embed(model, test.clips, args.batch), dim=-1)
    rate = model.reuse.rate()
    flops = counted_flops(lambda: embed(model, test.clips[:args.batch], args.batch)) / args.batch
    direction = (probes @ video.unsqueeze(-1)).squeeze(-1).argmax(-1)
    top1 = (captions @ video.t()).argmax(-1)
    out = {"reuse_rate": rate, "gflops_per_clip": flops / 1e9,
           "cosine_to_exact": 1.0 if exact is None else float((video * exact["_video"]).sum(-1).mean()),
           "t2v_R1": t2v_metrics(captions @ video.t())["R1"],
           "same_top1_as_exact": 100.0 if exact is None else 100.0 * float((top1 == exact["_top1"]).float().mean()),
           "_top1": top1,
           "direction_accuracy": 100.0 * float((direction == test.truth).float().mean()), "_video": video}
    if exact is not None:
        for threads in (1, 2):
            speed = interleaved_speed(lambda: embed(exact["_model"], test.clips, args.batch),
                                      lambda: embed(model, test.clips, args.batch), len(test.clips), threads,
                                      args.repeats)
            out[f"clips_per_s_{threads}t"] = speed["per_s"]
            out[f"exact_clips_per_s_{threads}t"] = speed["baseline_per_s"]
            out[f"speedup_{threads}t"] = speed["speedup"]
    return out


def report(rows: list[dict]) -> None:
    print(f"\n{'design':12} {'mode':8} {'setting':18} {'reuse':>6} {'GFLOP':>7} {'fewer':>6} {'clips/s 1t':>10} "
          f"{'x':>5} {'2t':>6} {'x':>5} {'cos':>7} {'R@1':>5} {'same':>5} {'dir%':>5}")
    for row in rows:
        speed = " ".join(f"{row.get(f'clips_per_s_{t}t', float('nan')):{w}.1f} {row.get(f'speedup_{t}t', 1.0):5.2f}"
                         for t, w in ((1, 10), (2, 6)))
        print(f"{row['design']:12} {row['mode']:8} {row['setting']:18} {row['reuse_rate']:6.3f} "
              f"{row['gflops_per_clip']:7.4f} {row['flops_reduction']:6.2f} {speed} {row['cosine_to_exact']:7.4f} "
              f"{row['t2v_R1']:5.1f} {row['same_top1_as_exact']:5.1f} {row['direction_accuracy']:5.1f}")


# ----------------------------------------------------------------------------- frame cache
def long_video(videos: int, input_res: int) -> torch.Tensor:
    """Every frame of ``videos`` test videos one after the other, normalised: [T, 3, H, W]."""
    paths = sorted((DATA / "videos" / "all").glob("*.mp4"))[:videos]
    frames = [read_frames(p, 20, "uniform", size=80) for p in paths]  # all 20 frames of each
    return VideoTransform(train=False, input_res=input_res)(torch.cat(frames).unsqueeze(0))[0]


def frame_cache(checkpoint: Path, design: str, args: argparse.Namespace) -> dict:
    model = load(checkpoint)
    frames = long_video(args.cache_videos, model.video_config.geometry()["img_size"])
    clip_frames, length = model.video_config.num_frames, 16  # windows of 16 frames (1.6 s), half-window stride
    offsets = sample_frame_indices(length, clip_frames, "uniform")  # as a test clip of the window is sampled
    windows = torch.tensor([[start + i for i in offsets] for start in range(0, len(frames) - length + 1, length // 2)])
    with torch.no_grad():
        alone = torch.cat([model.encode_video(frames[windows[i:i + args.batch]])
                           for i in range(0, len(windows), args.batch)])
        cached = model.encode_windows(frames, windows, batch_size=4 * args.batch)
    out = {"design": design, "frames": len(frames), "windows": len(windows), "frames_per_window": clip_frames,
           "distinct_frames": int(windows.unique().numel()), "max_abs_difference": float((alone - cached).abs().max())}
    for threads in (1, 2):
        out[f"windows_per_s_{threads}t"] = interleaved_speed(
            lambda: [model.encode_video(frames[windows[i:i + args.batch]]) for i in range(0, len(windows), args.batch)],
            lambda: model.encode_windows(frames, windows, batch_size=4 * args.batch), len(windows), threads,
            args.repeats)
    return out


# ----------------------------------------------------------------------------- figure
def plot(rows: list[dict], path: Path, title: str) -> None:
    from matplotlib.figure import Figure

    figure = Figure(figsize=(12, 4), layout="constrained")
    axes = figure.subplots(1, 3)
    series = {}
    for row in rows:
        series.setdefault((row["design"], row["mode"]), []).append(row)
    for (design, mode), points in series.items():
        if mode == "exact":
            continue
        exact = next(r for r in rows if r["design"] == design and r["mode"] == "exact")
        points = sorted([exact, *points], key=lambda r: -r["gflops_per_clip"])
        label = mode if design == "transformer" else f"{mode} ({design})"
        style = {"marker": "o", "ms": 4, "lw": 1, "label": label, "ls": "--" if design != "transformer" else "-"}
        x = [r["flops_reduction"] for r in points]
        axes[0].plot(x, [r["t2v_R1"] for r in points], **style)
        axes[1].plot(x[1:], [1 - r["cosine_to_exact"] for r in points[1:]], **style)  # exact: 0
        axes[2].plot(x, [r.get("speedup_1t", 1.0) for r in points], **style)
    axes[0].set(title="test t2v R@1 (%)", xlabel="FLOPs reduction (x)")
    axes[1].set(title="1 - cosine to the exact embedding", xlabel="FLOPs reduction (x)", yscale="log")
    axes[2].set(title="CPU speed-up over exact (1 thread)", xlabel="FLOPs reduction (x)")
    for ax in axes:
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize="small")
    figure.suptitle(title, fontsize="small")
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)


# ----------------------------------------------------------------------------- main
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--skip-training", action="store_true", help="only evaluate models already trained")
    parser.add_argument("--batch", type=int, default=25, help="clips per forward pass")
    parser.add_argument("--repeats", type=int, default=5, help="timed passes per setting (median)")
    parser.add_argument("--cache-videos", type=int, default=10, help="test videos joined into the long video")
    parser.add_argument("--busy", action="store_true", help="record that other jobs shared the CPU")
    parser.add_argument("--out", default="benchmarks/results/reuse.json")
    parser.add_argument("--figure", default="benchmarks/figures/reuse.png")
    args = parser.parse_args()
    torch.set_num_threads(2)
    make_synthetic_dataset(DATA, "msrvtt")

    rows: list[dict] = []
    designs: dict[str, dict] = {}
    for design in DESIGNS:
        checkpoint = design_checkpoint(design, args.skip_training)
        if checkpoint is None:
            progress(f"no {design} model: skipped")
            continue
        model = load(checkpoint)
        test = TestSet(model.video_config.num_frames, model.video_config.geometry()["img_size"],
                       model.text_config.name_or_path)
        exact = evaluate(model, test, None, args)
        exact["_model"] = model
        rows.append({"design": design, "mode": "exact", "setting": "-", **exact})
        designs[design] = {"checkpoint": str(checkpoint), "exact": exact}
        progress(f"{design}: exact R@1 {exact['t2v_R1']:.1f}, direction {exact['direction_accuracy']:.1f}%")
        modes = ["diff", "tome", "learned"] if design == "transformer" else (
            ["diff space_time"] if design == "space_time" else [])
        for mode in modes:
            for setting in SETTINGS[mode]:
                if setting["mode"] == "learned":
                    path = learned_checkpoint(setting["target_rate"], args.skip_training)
                    if path is None:
                        continue
                    reusing = load(path)
                else:
                    reusing = load(checkpoint, setting)
                result = evaluate(reusing, test, exact, args)
                label = ", ".join(f"{k}={v}" for k, v in setting.items() if k != "mode")
                rows.append({"design": design, "mode": setting["mode"], "setting": label, **result})
                progress(f"{design} {label}: reuse {result['reuse_rate']:.3f}, R@1 {result['t2v_R1']:.1f}")
    for row in rows:
        exact = next(r for r in rows if r["design"] == row["design"] and r["mode"] == "exact")
        row["flops_reduction"] = exact["gflops_per_clip"] / row["gflops_per_clip"]
        for key in ("_video", "_model", "_top1"):
            row.pop(key, None)
    for info in designs.values():
        info.pop("exact")
    report(rows)

    cache = [frame_cache(Path(designs[d]["checkpoint"]), d, args) for d in designs]
    for entry in cache:
        speedups = ", ".join(f"{t} thread(s) x{entry[f'windows_per_s_{t}t']['speedup']:.2f}" for t in (1, 2))
        print(f"frame cache, {entry['design']}: {entry['windows']} windows of {entry['frames_per_window']} frames, "
              f"{entry['distinct_frames']} distinct; speed-up {speedups}; "
              f"max |difference| {entry['max_abs_difference']:.2e}")

    result = {"machine": machine(), "busy": args.busy, "batch": args.batch, "repeats": args.repeats,
              "rows": rows, "frame_cache": cache}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    title = (f"demo_clip on the synthetic test set (100 clips, 8 frames of 64 px); {result['machine']}"
             + ("; busy machine" if args.busy else ""))
    plot(rows, Path(args.figure), title)
    progress(f"wrote {args.out} and {args.figure}")


if __name__ == "__main__":
    main()
