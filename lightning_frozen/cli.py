"""The `lightning-frozen` command: LightningCLI (fit / validate / test / predict) plus data and IPU tools.

    lightning-frozen fit --config configs/demo.yaml
    lightning-frozen test --config configs/demo.yaml --ckpt_path runs/demo/.../stage1-4f-best.ckpt
    lightning-frozen synthetic --root data/synthetic_msrvtt --layout msrvtt
    lightning-frozen index --ckpt BEST.ckpt --videos my_videos --out my_index
    lightning-frozen search my_index "a dog catches a frisbee"
    lightning-frozen --help          # every subcommand, one line each
"""
from __future__ import annotations

import importlib
import os
import pickle
import re
import sys
from typing import Any, Callable, Optional, Sequence

from lightning_fabric.utilities.exceptions import MisconfigurationException

from .data.video import VideoReadError
from .lightning_cli import PROG, run_cli

DEBUG_ENV = "LIGHTNING_FROZEN_DEBUG"
# What a user's input causes (a path, a file, a config value): one message, exit code 2. Anything
# else is a bug and keeps its traceback.
USER_ERRORS = (ValueError, OSError, pickle.UnpicklingError, MisconfigurationException, VideoReadError)

# LightningCLI's subcommands (Trainer methods) and ours (a module with `main(argv)`), in --help order.
TRAINER_COMMANDS = {
    "fit": "train a model (frame curriculum, checkpoints per stage)",
    "validate": "retrieval metrics on the validation split",
    "test": "retrieval metrics on the test split",
    "predict": "write video and caption embeddings of a dataset to a .pt file",
}
TOOL_COMMANDS = {
    "synthetic": ("lightning_frozen.data.synthetic.cli", "write synthetic data in the MSR-VTT / WebVid / CC3M layout"),
    "prepare": ("lightning_frozen.data.prepare", "re-encode a dataset's videos into a fast training mirror"),
    "shard": ("lightning_frozen.data.shard", "write LitData shards of a dataset for streaming (local or s3://)"),
    "index": ("lightning_frozen.search.index", "embed a folder of videos as windows into a search index"),
    "search": ("lightning_frozen.search.query", "rank an index's videos for a text query"),
    "serve": ("lightning_frozen.search.server", "a search page and JSON API over an index (FastAPI)"),
    "ipu-plan": ("lightning_frozen.ipu.planner", "per-IPU memory / FLOPs / balance report for a stage map"),
    "demo": ("lightning_frozen.demo", "synthetic data -> frame curriculum 1->4 -> test table (CPU, minutes)"),
}


def usage() -> str:
    """`lightning-frozen --help`: every subcommand with one line each."""
    width = max(map(len, [*TRAINER_COMMANDS, *TOOL_COMMANDS]))
    lines = [f"usage: {PROG} <command> [options]   ({PROG} <command> --help for its options)", "",
             "Frozen-in-Time text-video retrieval with PyTorch Lightning.", "", "commands:"]
    lines += [f"  {name:<{width}}  {text}" for name, text in TRAINER_COMMANDS.items()]
    lines += [f"  {name:<{width}}  {text}" for name, (_, text) in TOOL_COMMANDS.items()]
    return "\n".join(lines)


def tool_main(name: str) -> Callable[[Sequence[str]], Any]:
    """The `main(argv)` of a tool subcommand."""
    return importlib.import_module(TOOL_COMMANDS[name][0]).main


def user_message(error: BaseException) -> str:
    """The part of an error's text a person acts on.

    An error raised in a DataLoader worker comes back with the worker's traceback inside its
    text, and one raised while LightningCLI builds a class comes wrapped in jsonargparse's
    list of union subtypes; both are cut down to the original message.
    """
    text = str(error).strip()
    lines = [line for line in text.splitlines() if line.strip()]
    if lines and lines[0].startswith("Caught ") and "Original Traceback" in text:
        return re.sub(r"^[\w.]+: ", "", lines[-1].strip())
    inner = [line.strip()[2:] for line in lines if line.startswith("  - ") and "Expected a <class" not in line]
    if lines and "Does not validate against any of the Union subtypes" in lines[0] and inner:
        return "\n".join(inner)
    return text


def main(argv: Optional[Sequence[str]] = None) -> None:
    """Entry point of the installed `lightning-frozen` command (and of `python cli.py`).

    A user's mistake (bad path, unreadable file, invalid config value) prints one message and
    exits with code 2; set LIGHTNING_FROZEN_DEBUG=1 to see the traceback as well.
    """
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        code = dispatch(args)
    except USER_ERRORS as error:
        if os.environ.get(DEBUG_ENV, "") not in ("", "0"):
            raise
        print(f"{PROG}: error: {user_message(error)}\n(set {DEBUG_ENV}=1 to see the traceback)", file=sys.stderr)
        raise SystemExit(2) from None
    if code:
        raise SystemExit(code)


def dispatch(args: list[str]) -> int:
    """Run one subcommand; its exit code (a tool's `main` may return one, or an object with `exit_code`)."""
    if not args or args[0] in ("-h", "--help"):
        print(usage())
        return 0
    if args[0] in TOOL_COMMANDS:
        result = tool_main(args[0])(args[1:])
        return result if isinstance(result, int) else int(getattr(result, "exit_code", 0))
    if args[0] not in TRAINER_COMMANDS and not args[0].startswith("-"):
        print(f"{PROG}: unknown command {args[0]!r}\n\n{usage()}", file=sys.stderr)
        return 2
    run_cli(args)
    return 0


if __name__ == "__main__":
    main()
