"""FrozenCLI: LightningCLI over FrozenModule and FrozenDataModule (fit / validate / test / predict).

The `lightning-frozen` command (``lightning_frozen.cli``) dispatches to it; the demo uses it
to run the same `fit` a user would.
"""
from __future__ import annotations

from typing import Any, Optional

from lightning_fabric.plugins import CheckpointIO
from pytorch_lightning import Trainer
from pytorch_lightning.cli import LightningArgumentParser, LightningCLI

from . import ipu  # noqa: F401  registers `accelerator: ipu` and the IPU strategy names
from .callbacks import EmbeddingWriter
from .checkpoint_io import SafeCheckpointIO
from .data.datamodule import FrozenDataModule
from .module import FrozenModule

PROG = "lightning-frozen"


class FrozenCLI(LightningCLI):
    """LightningCLI over FrozenModule and FrozenDataModule, with the tokenizer linked to the text model."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("model.text.name_or_path", "data.tokenizer")
        parser.add_lightning_class_args(EmbeddingWriter, "embeddings")

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        plugins = self._get(self.config_init, "trainer", default={}).get("plugins") or []
        plugins = list(plugins) if isinstance(plugins, (list, tuple)) else [plugins]
        if not any(isinstance(p, CheckpointIO) for p in plugins):
            plugins.append(SafeCheckpointIO())  # every --ckpt_path read goes through the restricted unpickler
        return super().instantiate_trainer(plugins=plugins, **kwargs)

    def after_instantiate_classes(self) -> None:
        if self.subcommand and self.config_init[self.subcommand].get("ckpt_path"):
            self.model.weights_from_checkpoint()  # the checkpoint's weights win: init_from is not read


def run_cli(args: Optional[list[str]] = None, run: bool = True) -> FrozenCLI:
    """Parse `args` (default sys.argv) and run the subcommand (`run=False`: only build the objects)."""
    return FrozenCLI(FrozenModule, FrozenDataModule, args=args, run=run,
                     save_config_kwargs={"overwrite": True}, parser_kwargs={"prog": PROG})
