"""How fast the demo's video tower learns motion direction, by position-embedding init.

The video tower alone, trained from scratch with a linear head on the four direction labels
of synthetic clips (the demo's renderer, 64 px, 4 frames in order), for each
``--pos-init-std``. Every ``--every`` steps it prints the accuracy on held-out clips; chance
is 25%. This is the measurement behind ``model.video.pos_init_std: 0.5`` in
``configs/demo.yaml``: at ViT's 0.02 the position embeddings are drowned by the patch content
and the tower stays near chance for a few hundred steps.

It prints a table and writes JSON. It is a benchmark, never a test: nothing is asserted.

    python benchmarks/direction_learning.py --steps 300 --pos-init-std 0.02 0.5
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from machine import cpu_description  # noqa: E402

from lightning_frozen.data.synthetic import DIRECTIONS, random_spec, render_clip  # noqa: E402
from lightning_frozen.data.transforms import IMAGENET_MEAN, IMAGENET_STD  # noqa: E402
from lightning_frozen.data.video import sample_frame_indices  # noqa: E402
from lightning_frozen.models import SpaceTimeTransformer  # noqa: E402

SIZE, CLIP_FRAMES, FRAMES = 64, 20, 4
DEFAULT_JSON = ROOT / "benchmarks" / "results" / "direction_learning.json"


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pos-init-std", type=float, nargs="+", default=[0.02, 0.5])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--every", type=int, default=50, help="evaluate every N steps")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=5e-4, help="the demo's video learning rate")
    parser.add_argument("--train-clips", type=int, default=600)
    parser.add_argument("--test-clips", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON)
    return parser.parse_args(argv)


def make_clips(count: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised clips [N, 20, 3, 64, 64] and direction labels [N], with the demo's palette."""
    labels, clips = [], []
    for index in range(count):
        rng = np.random.default_rng([seed, index])
        spec = random_spec(rng, num_colours=3, num_shapes=2)
        labels.append(list(DIRECTIONS).index(spec.direction))
        clips.append(render_clip(spec, CLIP_FRAMES, (SIZE, SIZE), rng))
    video = torch.from_numpy(np.stack(clips)).permute(0, 1, 4, 2, 3).float() / 255
    mean = torch.tensor(IMAGENET_MEAN).view(1, 1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 1, 3, 1, 1)
    return (video - mean) / std, torch.tensor(labels)


def learning_curve(pos_init_std: float, data: tuple, args: argparse.Namespace) -> list[float]:
    (train_x, train_y), (test_x, test_y) = data
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    frame_rng = torch.Generator().manual_seed(args.seed)
    tower = SpaceTimeTransformer(img_size=SIZE, patch_size=16, embed_dim=128, depth=4, num_heads=4,
                                 num_frames=FRAMES, time_init="rand", pos_init_std=pos_init_std)
    head = torch.nn.Linear(tower.embed_dim, len(DIRECTIONS))
    params = list(tower.parameters()) + list(head.parameters())
    optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.01)
    test_frames = sample_frame_indices(CLIP_FRAMES, FRAMES, "uniform")
    curve = []
    for step in range(1, args.steps + 1):
        ids = rng.integers(0, len(train_y), args.batch)
        video = torch.stack([train_x[i, sample_frame_indices(CLIP_FRAMES, FRAMES, "rand", generator=frame_rng)]
                             for i in ids])
        for group in optimizer.param_groups:
            group["lr"] = args.lr * min(1.0, step / 50)  # the demo's 50 warm-up steps
        loss = F.cross_entropy(head(tower(video)), train_y[ids])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % args.every == 0:
            tower.eval()
            with torch.no_grad():
                accuracy = (head(tower(test_x[:, test_frames])).argmax(1) == test_y).float().mean().item()
            tower.train()
            curve.append(100.0 * accuracy)
            print(f"  pos_init_std {pos_init_std}: step {step} accuracy {curve[-1]:.1f}%", flush=True)
    return curve


def main(argv: Optional[list[str]] = None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    started = time.time()
    data = (make_clips(args.train_clips, args.seed + 1), make_clips(args.test_clips, args.seed + 2))
    curves = {str(std): learning_curve(std, data, args) for std in args.pos_init_std}
    steps = list(range(args.every, args.steps + 1, args.every))
    print("\nheld-out direction accuracy (%), chance 25%")
    print("pos_init_std | " + " ".join(f"{s:>6d}" for s in steps))
    for std, curve in curves.items():
        print(f"{std:>12} | " + " ".join(f"{a:6.1f}" for a in curve))
    result = {"steps": steps, "accuracy": curves, "args": {k: str(v) for k, v in vars(args).items()},
              "machine": cpu_description(), "threads": args.threads,
              "seconds": round(time.time() - started, 1)}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=1))
    print(f"written {args.json}")
    return result


if __name__ == "__main__":
    main()
