"""`lightning-frozen synthetic`: write a synthetic text-video dataset in a real layout."""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

from ...arguments import ArgumentParser
from .layouts import LAYOUTS, SyntheticParams, make_synthetic_dataset


def build_parser() -> ArgumentParser:
    """Arguments of the synthetic-data command; defaults are ``SyntheticParams``'s."""
    d = SyntheticParams()
    parser = ArgumentParser(prog="lightning-frozen synthetic",
                                     description="Write a synthetic text-video dataset in a real layout.")
    parser.add_argument("--root", required=True, help="folder to create (new or empty)")
    parser.add_argument("--layout", choices=LAYOUTS, default=d.layout)
    parser.add_argument("--num-train", type=int, default=d.num_train)
    parser.add_argument("--num-test", type=int, default=d.num_test)
    parser.add_argument("--num-frames", type=int, default=d.num_frames_per_video, help="frames per video")
    parser.add_argument("--size", type=int, nargs=2, default=d.size, metavar=("H", "W"))
    parser.add_argument("--fps", type=float, default=d.fps)
    parser.add_argument("--seed", type=int, default=d.seed)
    parser.add_argument("--broken", action="store_true", help="add missing/empty/truncated/non-video entries")
    parser.add_argument("--colours", type=int, default=d.num_colours,
                        help="colours per role, 1-5 (few: direction matters)")
    parser.add_argument("--shapes", type=int, default=d.num_shapes, help="number of shapes (1-4)")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> Path:
    args = build_parser().parse_args(argv)
    root = make_synthetic_dataset(
        args.root, args.layout, num_train=args.num_train, num_test=args.num_test,
        num_frames_per_video=args.num_frames, size=tuple(args.size), fps=args.fps, seed=args.seed,
        broken=args.broken, num_colours=args.colours, num_shapes=args.shapes,
    )
    print(f"synthetic {args.layout} dataset ready at {root}")
    return root
