"""FrozenCLI: LightningCLI over FrozenModule and FrozenDataModule (fit / validate / test / predict).

The `lightning-frozen` command (``lightning_frozen.cli``) dispatches to it; the demo uses it
to run the same `fit` a user would. The model is FrozenModule or a subclass of it, chosen by
``model.class_path`` (LightningCLI's subclass mode; FrozenModule when a config names none, so
its flat ``model:`` sections stay as they are), e.g. ``lightning_frozen.classification.VideoClassifier``.
"""
from __future__ import annotations

import importlib
import inspect
from pathlib import Path
from typing import Any, Optional

from jsonargparse import Namespace
from lightning_fabric.plugins import CheckpointIO
from pytorch_lightning import Trainer
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.cli import LightningArgumentParser, LightningCLI

from . import ipu  # noqa: F401  registers `accelerator: ipu` and the IPU strategy names
from .callbacks import EmbeddingWriter, ExactResume, TrainingCurves
from .checkpoint_io import SafeCheckpointIO
from .data.datamodule import FrozenDataModule
from .models import ModelConfig
from .module import FrozenModule
from .quiet import quiet_library_output
from .safe_load import safe_torch_load

PROG = "lightning-frozen"


class FrozenCLI(LightningCLI):
    """LightningCLI over FrozenModule and FrozenDataModule; the data's tokenizer and frames per clip follow the
    model's, its seed `seed_everything`.

    Every trainer gets `SafeCheckpointIO` (restricted reads, atomic writes), `ExactResume`
    (random states in checkpoints) and `TrainingCurves` (curves.png next to the checkpoints).
    With ``--ckpt_path FILE`` the checkpoint's recorded model settings fill in what the config
    and the command line leave unset (theirs win), and the checkpoint's weights win over
    ``init_from`` and pretrained towers.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._command_line = kwargs.get("args")
        super().__init__(*args, **kwargs)

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        # What the data must agree on with the model is said once, by the model: its tokenizer and
        # the frames per clip (a frame curriculum schedules fewer per epoch).
        parser.set_defaults({"model": {"class_path": f"{FrozenModule.__module__}.{FrozenModule.__name__}"}})
        parser.link_arguments("model.init_args.text.name_or_path", "data.tokenizer")
        parser.link_arguments("model.init_args.video.num_frames", "data.num_frames")
        parser.link_arguments("seed_everything", "data.seed", compute_fn=_data_seed)
        parser.add_lightning_class_args(EmbeddingWriter, "embeddings")

    def before_instantiate_classes(self) -> None:
        # The run's seed (after LightningCLI drew one for `seed_everything: true`) is the data's:
        # every sample's frames and caption and every epoch's order derive from it.
        config = self.config[self.subcommand] if self.subcommand else self.config
        config["data"]["seed"] = _data_seed(config.get("seed_everything"))

    def _parse_ckpt_path(self) -> None:
        # Lightning's version reads the file with torch.load and lays its hyperparameters over the
        # config *and the command line*; here they are defaults under both, read with the restricted loader.
        subcommand = self.config.get("subcommand")
        path = self.config[subcommand].get("ckpt_path") if subcommand else None
        if not path or not Path(path).is_file():
            return  # none, or "last"/"best", which Lightning resolves later
        checkpoint = safe_torch_load(path)
        hparams = checkpoint.get("hyper_parameters") if isinstance(checkpoint, dict) else None
        if not hparams:
            return
        model = self.config[subcommand].get("model")
        class_path = hparams.get("_class_path") or (model.class_path if isinstance(model, Namespace) else None)
        if not class_path:
            return
        module, _, name = class_path.rpartition(".")
        accepted = inspect.signature(getattr(importlib.import_module(module), name).__init__).parameters
        init_args = {key: value for key, value in hparams.items() if key in accepted and key != "self"}
        if "video" in hparams:  # the recorded towers, as plain dicts of the current config fields
            init_args.update(ModelConfig.from_checkpoint(checkpoint, Path(path).name).to_dict())
        # the checkpoint's class and settings as defaults: the config and the command line are parsed over them
        self._parser(subcommand).set_defaults({"model": {"class_path": class_path, "init_args": init_args}})
        self.parse_arguments(self.parser, self._command_line)

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        config = self._get(self.config_init, "trainer", default={})
        plugins, callbacks = _as_list(config.get("plugins")), _as_list(config.get("callbacks"))
        if not any(isinstance(p, CheckpointIO) for p in plugins):
            plugins.append(SafeCheckpointIO())  # restricted reads of --ckpt_path, atomic writes
        for kind in (ExactResume, TrainingCurves):  # random states in checkpoints; curves.png after a fit
            if not any(isinstance(c, kind) for c in callbacks):
                callbacks.append(kind())
        return super().instantiate_trainer(plugins=plugins, callbacks=callbacks, **kwargs)

    def after_instantiate_classes(self) -> None:
        if self.subcommand and self._restores_a_checkpoint():
            self.model.weights_from_checkpoint()  # the checkpoint's weights win: init_from is not read

    def _restores_a_checkpoint(self) -> bool:
        path = self.config_init[self.subcommand].get("ckpt_path")
        if path == "last":  # a first run with --ckpt_path last finds none and starts from init_from
            return any(callback._find_last_checkpoints(self.trainer) for callback in self.trainer.checkpoint_callbacks
                       if isinstance(callback, ModelCheckpoint))
        return bool(path)

    # validate/test: FrozenModule prints its own retrieval table; Lightning's would repeat it.
    def validate(self, **kwargs: Any) -> Any:
        return self.trainer.validate(**{**kwargs, "verbose": False})

    def test(self, **kwargs: Any) -> Any:
        return self.trainer.test(**{**kwargs, "verbose": False})


def _data_seed(seed_everything: Any) -> int:
    """The data's seed from `seed_everything` (an int; true or false before LightningCLI draws one: 0)."""
    return seed_everything if isinstance(seed_everything, int) and not isinstance(seed_everything, bool) else 0


def _as_list(value: Any) -> list:
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


def run_cli(args: Optional[list[str]] = None, run: bool = True) -> FrozenCLI:
    """Parse `args` (default sys.argv) and run the subcommand (`run=False`: only build the objects)."""
    quiet_library_output()
    return FrozenCLI(FrozenModule, FrozenDataModule, args=args, run=run, subclass_mode_model=True,
                     save_config_kwargs={"overwrite": True}, parser_kwargs={"prog": PROG})
