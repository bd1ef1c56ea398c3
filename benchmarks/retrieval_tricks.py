"""What the retrieval tricks do to text->video R@1 on held-out synthetic videos, over several test sets.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/retrieval_tricks.py --ckpt runs/demo/.../stage1-4f-best.ckpt

Each test set is 100 held-out synthetic MSR-VTT-layout videos (2 s, 20 frames, the demo's
palette) with one caption each (the jsfusion caption index): the demo's own test split and
new ones drawn with other data seeds. On 100 videos R@1 moves by several points from the
draw alone, so each trick is reported as its paired difference to the plain result on the
same set, mean and standard deviation over the sets.

`test` protocol (``RetrievalMetrics``): plain (middle frame of 4 intervals), dual softmax
(transductive: all test captions at once), the original multi-clip protocol (``MultiClip``,
offsets 0..4 of the 5-frame intervals, embeddings averaged per video).
Search (``build_index`` + ``Index.search``, per video): one window per video (the default
for 2 s clips), windows of 1 s every 0.5 s aggregated by max or by mean, and QB-Norm with
the demo's training captions as the query bank.
"""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Optional

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_JSON = ROOT / "benchmarks" / "results" / "retrieval_tricks.json"


@torch.no_grad()
def test_protocol(model, dataset, multi_clip_stride: int, temperature: float) -> dict[str, float]:
    """t2v R@1 of plain, dual-softmax and multi-clip evaluation of one test split."""
    from lightning_frozen.data.multiclip import MultiClip
    from lightning_frozen.data.transforms import VideoTransform
    from lightning_frozen.metrics import RetrievalMetrics
    from lightning_frozen.tokenizer import build_tokenizer

    transform = VideoTransform(train=False, input_res=model.video_config.geometry()["img_size"])
    tokenizer = build_tokenizer(model.text_config.name_or_path)

    def embed(items):
        metric = RetrievalMetrics(dual_softmax=temperature, repeats="mean")
        for first in range(0, len(items), 50):
            batch = [items[i] for i in range(first, min(first + 50, len(items)))]
            video = model.encode_video(transform(torch.stack([b["video"] for b in batch])))
            tokens = tokenizer([b["text"] for b in batch], padding=True, return_tensors="pt")
            text = model.encode_text(tokens["input_ids"], tokens["attention_mask"])
            metric.update(text, video, torch.tensor([b["meta"]["index"] for b in batch]))
        return metric.compute()

    plain = embed(dataset)
    clips = embed(MultiClip(dataset, stride=multi_clip_stride))
    return {"plain": plain["t2v_R1"], "dual_softmax": plain["dsl_t2v_R1"], "multi_clip": clips["t2v_R1"]}


def search_r1(index, captions: dict[str, str], aggregate: str = "max") -> float:
    """Share of captions whose own video comes first (per-video ranking)."""
    hits = [index.search(caption, k=1, aggregate=aggregate)[0].path == path for path, caption in captions.items()]
    return 100.0 * float(np.mean(hits))


def search_tricks(ckpt: str, root: Path, captions: dict[str, str], bank: list[str], work: Path) -> dict[str, float]:
    """Index the test videos alone (the same gallery as the test protocol) and search their captions."""
    import shutil

    from lightning_frozen.search import Index, build_index

    videos = work / "videos"
    videos.mkdir(parents=True)
    for name in captions:
        shutil.copy(root / "videos" / "all" / name, videos / name)
    build_index(videos, work / "single", ckpt, progress=False)  # 4 s windows: one per 2 s clip
    build_index(videos, work / "multi", ckpt, window_seconds=1.0, stride_seconds=0.5, progress=False)
    single, multi = Index(work / "single"), Index(work / "multi")
    out = {"search_one_window": search_r1(single, captions), "search_windows_max": search_r1(multi, captions, "max"),
           "search_windows_mean": search_r1(multi, captions, "mean")}
    single.set_query_bank(bank)
    out["search_one_window_qb_norm"] = search_r1(single, captions)
    single.close()
    multi.close()
    return out


def main(argv: Optional[list[str]] = None) -> dict:
    from lightning_frozen.data import MSRVTT
    from lightning_frozen.data.synthetic import make_synthetic_dataset
    from lightning_frozen.models import create_model
    from lightning_frozen.search.query import query_threads

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", required=True, help="a model trained with configs/demo.yaml (our .ckpt)")
    parser.add_argument("--data", default=str(ROOT / "data" / "synthetic_msrvtt"), help="the demo's dataset")
    parser.add_argument("--seeds", type=int, nargs="+", default=[101, 102, 103, 104],
                        help="data seeds of the extra held-out test sets (the demo's test split is always one)")
    parser.add_argument("--bank-size", type=int, default=2000, help="training captions in the QB-Norm bank")
    parser.add_argument("--temperature", type=float, default=0.05, help="dual softmax temperature")
    parser.add_argument("--json", default=str(DEFAULT_JSON))
    args = parser.parse_args(argv)
    query_threads()
    model = create_model(weights=args.ckpt).eval()
    demo = make_synthetic_dataset(args.data, "msrvtt")
    train = MSRVTT(demo, cut="jsfusion", split="train")
    rng = np.random.default_rng(0)
    all_captions = [c for captions in train.records["captions"] for c in captions]
    bank = [all_captions[i] for i in rng.choice(len(all_captions), args.bank_size, replace=False)]
    results = {"checkpoint": str(args.ckpt), "sets": {}}
    with tempfile.TemporaryDirectory() as tmp:
        roots = {"demo test split": demo}
        for seed in args.seeds:  # a tiny train split: only the 100 test videos are used
            roots[f"seed {seed}"] = make_synthetic_dataset(Path(tmp) / f"set{seed}", "msrvtt", num_train=1, seed=seed)
        for name, root in roots.items():
            dataset = MSRVTT(root, cut="jsfusion", split="test", frame_size=80)  # 4 frames: the run state's default
            captions = {Path(p).name: c[0] for p, c in zip(dataset.records["path"], dataset.records["captions"])}
            row = test_protocol(model, dataset, multi_clip_stride=1, temperature=args.temperature)
            row.update(search_tricks(args.ckpt, root, captions, bank, Path(tmp) / f"index-{name.replace(' ', '_')}"))
            results["sets"][name] = row
            print(name, {k: round(v, 1) for k, v in row.items()}, flush=True)
    summary = {}
    for trick, base in (("dual_softmax", "plain"), ("multi_clip", "plain"), ("search_windows_max", "search_one_window"),
                        ("search_windows_mean", "search_one_window"), ("search_windows_mean", "search_windows_max"),
                        ("search_one_window_qb_norm", "search_one_window")):
        deltas = [row[trick] - row[base] for row in results["sets"].values()]
        summary[f"{trick} - {base}"] = {"mean": round(float(np.mean(deltas)), 2),
                                        "std": round(float(np.std(deltas)), 2),
                                        "per_set": [round(d, 1) for d in deltas]}
    results["paired_differences_R1"] = summary
    results["mean_R1"] = {k: round(float(np.mean([r[k] for r in results["sets"].values()])), 2)
                          for k in next(iter(results["sets"].values()))}
    print(f"\n{'R@1 (t2v, %)':<28}" + "".join(f"{n:>16}" for n in results["sets"]) + f"{'mean':>8}")
    for key in results["mean_R1"]:
        print(f"{key:<28}" + "".join(f"{r[key]:>16.1f}" for r in results["sets"].values())
              + f"{results['mean_R1'][key]:>8.1f}")
    print("\npaired differences (points of R@1): " + json.dumps(summary, indent=1))
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(results, indent=1))
    return results


if __name__ == "__main__":
    main()
