"""lightning-frozen command line: LightningCLI (fit / validate / test / predict) plus data and IPU tools.

    python cli.py fit --config configs/demo.yaml
    python cli.py test --config configs/demo.yaml --ckpt_path runs/demo/.../stage2-4f-best.ckpt
    python cli.py predict --config configs/demo.yaml --ckpt_path ... --embeddings.output emb.pt
    python cli.py synthetic --root data/synthetic_msrvtt --layout msrvtt
    python cli.py prepare --src data/msrvtt --dst data/msrvtt_prepared
    python cli.py ipu-plan --config configs/webvid2m_8ipu_4f.yaml
    python cli.py demo
"""
from __future__ import annotations

import os
import sys

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

EXTRA_COMMANDS = {
    "synthetic": ("lightning_frozen.data.synthetic", "write a synthetic dataset in the MSR-VTT / WebVid / CC3M layout"),
    "prepare": ("lightning_frozen.data.prepare", "re-encode a dataset's videos into a fast training mirror"),
    "ipu-plan": ("lightning_frozen.ipu.planner", "per-IPU memory / FLOPs / balance report for a stage map"),
    "demo": ("lightning_frozen.demo", "synthetic data -> frame curriculum 1->4 -> test table (CPU, minutes)"),
}


def main(argv: list[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] in EXTRA_COMMANDS:
        import importlib

        module = importlib.import_module(EXTRA_COMMANDS[args[0]][0])
        module.main(args[1:])
        return
    from lightning_frozen.cli import run_cli

    run_cli(argv)  # None: LightningCLI reads sys.argv itself


if __name__ == "__main__":
    main()
