"""The `lightning-frozen` command: LightningCLI (fit / validate / test / predict) plus data and IPU tools.

Importing this module loads neither torch nor Lightning: a subcommand imports what it needs when it
runs, so `--help` answers at once.

    lightning-frozen fit --config configs/demo.yaml
    lightning-frozen test --config configs/demo.yaml --ckpt_path runs/demo/.../stage1-4f-best.ckpt
    lightning-frozen synthetic --root data/synthetic_msrvtt --layout msrvtt
    lightning-frozen index --ckpt BEST.ckpt --videos my_videos --out my_index
    lightning-frozen search my_index "a dog catches a frisbee"
    lightning-frozen --help          # every subcommand, one line each
"""
from __future__ import annotations

import difflib
import importlib
import os
import pickle
import re
import sys
from typing import Any, Callable, Optional, Sequence

from .arguments import PROG, UsageError
from .help_cache import print_help

DEBUG_ENV = "LIGHTNING_FROZEN_DEBUG"
INTERRUPTED = 130  # the shell's code for a process stopped by Ctrl-C (128 + SIGINT)

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


def run_cli(args: Optional[list[str]] = None, run: bool = True) -> Any:
    """`lightning_frozen.lightning_cli.run_cli`, imported on first use (it loads torch and Lightning)."""
    from .lightning_cli import run_cli as run_lightning_cli

    return run_lightning_cli(args, run)


def user_errors() -> tuple[type[BaseException], ...]:
    """What a user's input causes (a path, a file, a config value): one message, exit code 2. Anything
    else is a bug and keeps its traceback. Lightning's and the video reader's errors count only once
    their modules are loaded (an error cannot come from a module that never ran)."""
    kinds: list[type[BaseException]] = [ValueError, OSError, pickle.UnpicklingError]
    for module, name in (("lightning_fabric.utilities.exceptions", "MisconfigurationException"),
                         ("lightning_frozen.data.video", "VideoReadError")):
        if module in sys.modules:
            kinds.append(getattr(sys.modules[module], name))
    return tuple(kinds)


def hint(error: BaseException, command: str) -> str:
    """The fix a message leaves out, where the command knows it."""
    video = sys.modules.get("lightning_frozen.data.video")
    if video is not None and isinstance(error, video.VideoReadError):
        flag = "--data.predict_dataset.loading lax" if command == "predict" else "loading: lax on the dataset"
        return (f"\n(data loading is strict: fix or remove the file, or skip and count unreadable files with "
                f"{flag})")
    return ""


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

    A user's mistake (bad path, unreadable file, invalid config value, an argument that does not
    parse) prints one message and exits with code 2; set LIGHTNING_FROZEN_DEBUG=1 to see the
    traceback as well. Ctrl-C prints one line and exits with code 130.
    """
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args = list(sys.argv[1:] if argv is None else argv)
    debug = os.environ.get(DEBUG_ENV, "") not in ("", "0")
    try:
        code = dispatch(args)
    except KeyboardInterrupt:
        if debug:
            raise
        print(f"\n{PROG}: interrupted. Files are written whole or not at all: the same command again continues "
              "(fit: with --ckpt_path last)", file=sys.stderr)
        raise SystemExit(INTERRUPTED) from None
    except Exception as error:
        if debug or not isinstance(error, user_errors()):
            raise
        debug_hint = "" if isinstance(error, UsageError) else f"\n(set {DEBUG_ENV}=1 to see the traceback)"
        print(f"{PROG}: error: {user_message(error)}{hint(error, args[0] if args else '')}{debug_hint}",
              file=sys.stderr)
        raise SystemExit(2) from None
    if code:
        raise SystemExit(code)


def dispatch(args: list[str]) -> int:
    """Run one subcommand; its exit code (a tool's `main` may return one, or an object with `exit_code`)."""
    if not args or args[0] in ("-h", "--help"):
        print(usage())
        return 0
    if len(args) == 2 and args[1] in ("-h", "--help") and args[0] in (*TRAINER_COMMANDS, *TOOL_COMMANDS):
        return print_help(args[0], lambda: run_command(args))
    return run_command(args)


def run_command(args: list[str]) -> int:
    if args[0] in TOOL_COMMANDS:
        result = tool_main(args[0])(args[1:])
        return result if isinstance(result, int) else int(getattr(result, "exit_code", 0))
    if args[0] not in TRAINER_COMMANDS and not args[0].startswith("-"):
        close = difflib.get_close_matches(args[0], [*TRAINER_COMMANDS, *TOOL_COMMANDS], n=1)
        raise UsageError(f"unknown command {args[0]!r}" + (f" (did you mean {close[0]!r}?)" if close else "")
                         + f"; `{PROG} --help` lists the commands")
    run_cli(args)
    return 0


if __name__ == "__main__":
    main()
