"""The LightningCLI behind `cli.py`: FrozenModule + FrozenDataModule, configs in `configs/`."""
from __future__ import annotations

from typing import Any, Optional

from pytorch_lightning.cli import LightningArgumentParser, LightningCLI

from . import ipu  # noqa: F401  registers `accelerator: ipu` and the IPU strategy names
from .callbacks import EmbeddingWriter
from .data.datamodule import FrozenDataModule
from .module import FrozenModule


class FrozenCLI(LightningCLI):
    """LightningCLI with the text model's tokenizer linked into the DataModule."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("model.text.name_or_path", "data.tokenizer")
        parser.add_lightning_class_args(EmbeddingWriter, "embeddings")


def _extras_epilog() -> str:
    import cli as entry  # the top-level script; only present when run from the repository

    return f"More commands: {', '.join(entry.EXTRA_COMMANDS)} (python cli.py <command> --help)."


def run_cli(args: Optional[list[str]] = None, run: bool = True) -> FrozenCLI:
    """Parse `args` (default sys.argv) and run the subcommand."""
    try:
        epilog = _extras_epilog()
    except ImportError:
        epilog = None
    parser_kwargs: dict[str, Any] = {}
    if epilog:
        parser_kwargs["epilog"] = epilog
    return FrozenCLI(
        FrozenModule,
        FrozenDataModule,
        args=args,
        run=run,
        save_config_kwargs={"overwrite": True},
        parser_kwargs=parser_kwargs,
    )
