"""FrozenCLI: LightningCLI over FrozenModule and FrozenDataModule (fit / validate / test / predict).

The `lightning-frozen` command (``lightning_frozen.cli``) dispatches to it; the demo uses it
to run the same `fit` a user would. The model is FrozenModule or a subclass of it, chosen by
``model.class_path`` (LightningCLI's subclass mode; FrozenModule when a config names none, so
its flat ``model:`` sections stay as they are), e.g. ``lightning_frozen.classification.VideoClassifier``.
"""
from __future__ import annotations

import importlib
import inspect
import os
import re
import sys
from pathlib import Path
from typing import Any, NoReturn, Optional

from jsonargparse import Namespace
from lightning_fabric.plugins import CheckpointIO
from pytorch_lightning import Trainer
from pytorch_lightning.callbacks import ModelCheckpoint, ModelSummary
from pytorch_lightning.cli import LightningArgumentParser, LightningCLI

from .arguments import PROG, UsageError
from .callbacks import EmbeddingWriter, ExactResume, FrameCurriculum, ParameterSummary, RunFolder, TrainingCurves
from .callbacks.resume import checkpoint_folders, refuse_used_folder
from .callbacks.run_folder import check_run_folder, default_loggers
from .checkpoint_io import SafeCheckpointIO
from .data.datamodule import FrozenDataModule
from .folders import FolderLock
from .ipu import register as register_ipu
from .models import ModelConfig
from .module import FrozenModule
from .quiet import quiet_library_output
from .safe_load import safe_torch_load

GEOMETRY = ("video", "text", "projection_dim")  # the model settings that decide the weights' names and shapes
register_ipu()  # `accelerator: ipu` and the IPU strategy names in configs

RUN_DIR_HELP = ("The run folder: checkpoints, TensorBoard events, csv/, config.yaml and curves.png go there "
                "(sets trainer.default_root_dir; default: that, else lightning_logs/version_N)")


class FrozenArgumentParser(LightningArgumentParser):
    """LightningCLI's parser; a command line or config that does not parse raises one ``UsageError`` (printed
    as one message by `lightning-frozen`) instead of printing the whole usage."""

    def error(self, message: str, ex: Optional[Exception] = None) -> NoReturn:
        if not self.exit_on_error:  # jsonargparse trying alternatives: it catches its own errors
            super().error(message, ex)
        lines = [line.strip() for line in _without_union_preamble(message).strip().splitlines()]
        raise UsageError(" ".join(lines) if len(lines) <= 3 else "\n".join(lines)) from None  # a long list stays one


class FrozenCLI(LightningCLI):
    """LightningCLI over FrozenModule and FrozenDataModule; the data's tokenizer and frames per clip follow the
    model's, its seed `seed_everything`.

    Every trainer gets `SafeCheckpointIO` (restricted reads, atomic writes), `ExactResume`
    (random states in checkpoints), `TrainingCurves` (curves.png next to the checkpoints) and
    `RunFolder`: one folder per run (``--run_dir``), written only once every check has passed.
    Without a ``trainer.logger``, the run folder gets TensorBoard and CSV logs.
    With ``--ckpt_path FILE`` the checkpoint's recorded model settings fill in what the config
    and the command line leave unset (theirs win), and the checkpoint's weights win over
    ``init_from`` and pretrained towers.

    Before a command writes anything it checks what it will write to: the run folder is absent,
    empty or a run folder of ours (a fresh ``fit`` also needs it unused), the checkpoint fits the
    model, ``predict``'s output does not exist; then it locks the run folder for its duration.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._command_line = kwargs.get("args")
        self.argv = [str(a) for a in (sys.argv[1:] if self._command_line is None else self._command_line)]
        self._only = self.argv[0] if self.argv and self.argv[0] in LightningCLI.subcommands() else None
        self._checkpoint_seen: Optional[dict[str, Any]] = None
        super().__init__(*args, **kwargs)

    def subcommands(self) -> dict[str, set[str]]:  # type: ignore[override]
        # Only the subcommand that runs gets a parser: `fit --help` builds one, not four.
        everything = LightningCLI.subcommands()
        return {self._only: everything[self._only]} if self._only else everything

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        try:
            super().parse_arguments(parser, args)
        except UsageError as error:
            command = f"{PROG} {self._only}" if self._only else PROG
            raise UsageError(f"{error} (`{command} --help` lists the options)") from None

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument("--run_dir", type=Optional[str], default=None, help=RUN_DIR_HELP)
        # What the data must agree on with the model is said once, by the model: its tokenizer and
        # the frames per clip (a frame curriculum schedules fewer per epoch).
        parser.set_defaults({"model": {"class_path": f"{FrozenModule.__module__}.{FrozenModule.__name__}"}})
        parser.link_arguments("model.init_args.text.name_or_path", "data.tokenizer")
        parser.link_arguments("model.init_args.video.num_frames", "data.num_frames")
        parser.link_arguments("seed_everything", "data.seed", compute_fn=_data_seed)
        parser.add_lightning_class_args(EmbeddingWriter, "embeddings")

    def _parse_ckpt_path(self) -> None:
        # Lightning's version reads the file with torch.load and lays its hyperparameters over the
        # config *and the command line*; here they are defaults under both, read with the restricted loader.
        subcommand = self.config.get("subcommand")
        path = self.config[subcommand].get("ckpt_path") if subcommand else None
        if not path or not Path(path).is_file():
            return  # none, or "last"/"best", which Lightning resolves later
        checkpoint = self._checkpoint_seen = safe_torch_load(path, mmap=True)
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

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        self.run_dir = run_folder(config.get("run_dir"), config.trainer.get("default_root_dir"))
        config.trainer.default_root_dir = str(self.run_dir)
        # The run's seed (after LightningCLI drew one for `seed_everything: true`) is the data's:
        # every sample's frames and caption and every epoch's order derive from it.
        config["data"]["seed"] = _data_seed(config.get("seed_everything"))

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        config = self._get(self.config_init, "trainer", default={})
        plugins, callbacks = _as_list(config.get("plugins")), _as_list(config.get("callbacks"))
        if not any(isinstance(p, CheckpointIO) for p in plugins):
            plugins.append(SafeCheckpointIO())  # restricted reads of --ckpt_path, atomic writes
        for kind in (ExactResume, TrainingCurves):  # random states in checkpoints; curves.png after a fit
            if not any(isinstance(c, kind) for c in callbacks):
                callbacks.append(kind())
        if config.get("enable_model_summary") is not False and not any(isinstance(c, ModelSummary) for c in callbacks):
            callbacks.append(ParameterSummary())  # Lightning's, without a FLOPs column of zeros
            kwargs["enable_model_summary"] = False  # Lightning's own would be skipped, with a line saying so
        logger = config.get("logger")
        loggers = default_loggers(self.run_dir) if logger in (None, True) else _as_list(logger) if logger else []
        parser, settings = self._parser(self.subcommand), self.config.get(str(self.subcommand), self.config)
        self.run_folder = RunFolder(self.run_dir, loggers, parser.dump(settings, skip_none=False),
                                    self.argv if self.subcommand else None)
        callbacks.append(self.run_folder)
        # The loggers reach the trainer when the run starts (RunFolder): until then nothing is written.
        trainer = super().instantiate_trainer(plugins=plugins, callbacks=callbacks, logger=False, **kwargs)
        for callback in trainer.callbacks:  # every checkpoint in the run folder, whatever the loggers
            if isinstance(callback, (ModelCheckpoint, FrameCurriculum)) and callback.dirpath is None:
                callback.dirpath = os.path.realpath(self.run_dir / "checkpoints")
        return trainer

    def after_instantiate_classes(self) -> None:
        if self.subcommand and self._restores_a_checkpoint():
            self.model.weights_from_checkpoint()  # the checkpoint's weights win: init_from is not read

    def _checkpoint_file(self) -> Optional[Path]:
        """The file ``--ckpt_path`` names (``last``: the newest last*.ckpt in the checkpoint folders), if any."""
        path = self.config_init[self.subcommand].get("ckpt_path")
        if path == "last":
            found = [p for callback in self.trainer.checkpoint_callbacks if isinstance(callback, ModelCheckpoint)
                     for p in callback._find_last_checkpoints(self.trainer)]
            return Path(max(found, key=os.path.getmtime)) if found else None
        return Path(path) if path and Path(path).is_file() else None

    def _restores_a_checkpoint(self) -> bool:
        path = self.config_init[self.subcommand].get("ckpt_path")
        # a first run with --ckpt_path last finds none and starts from init_from
        return self._checkpoint_file() is not None if path == "last" else bool(path)

    # -- check everything, then write ---------------------------------------------------------
    def _run_subcommand(self, subcommand: str) -> None:
        lock = self._check_before_writing(subcommand) if self.trainer.global_rank == 0 else None
        try:
            super()._run_subcommand(subcommand)
        finally:
            if lock is not None:  # a run that wrote nothing leaves no lock file (nor a folder it made)
                lock.release(keep=self.run_folder.opened)

    def _check_before_writing(self, subcommand: str) -> Optional[FolderLock]:
        """Everything a command can be refused for before it writes: the checkpoint, the output, the run
        folder (checked again once locked: another run may have taken it meanwhile)."""
        self._check_checkpoint_fits()
        if subcommand == "predict":
            for callback in self.trainer.callbacks:
                if isinstance(callback, EmbeddingWriter):
                    callback.check_output(self.trainer)
            return None  # predict writes its embeddings file, nothing in the run folder
        if subcommand != "fit" and not self.run_folder.loggers:
            return None  # validate/test without loggers write nothing
        continues = self._continues_the_run(subcommand)
        check_run_folder(self.run_dir, subcommand, continues)
        if subcommand == "fit" and not continues:
            for folder in checkpoint_folders(self.trainer):  # folders named by a callback's dirpath too
                refuse_used_folder(folder)
        lock = FolderLock(self.run_dir, subcommand).acquire()
        try:
            check_run_folder(self.run_dir, subcommand, continues)
        except BaseException:
            lock.release(keep=False)
            raise
        return lock

    def _continues_the_run(self, subcommand: str) -> bool:
        """Whether ``--ckpt_path`` continues the run of this run folder (``last``, or one of its files)."""
        path = self.config_init[subcommand].get("ckpt_path")
        if not path:
            return False
        if path in ("last", "best", "hpc"):
            return True
        inside = [Path(self.run_dir).resolve(), *(folder.resolve() for folder in checkpoint_folders(self.trainer))]
        return any(folder in Path(path).resolve().parents for folder in inside)

    def _check_checkpoint_fits(self) -> None:
        """A checkpoint whose weights do not fit the model is named with the settings that differ, before
        Lightning's load_state_dict would fail on it (with a page of size mismatches)."""
        path = self._checkpoint_file()
        if path is None:
            return
        checkpoint = self._checkpoint_seen if self._checkpoint_seen is not None else safe_torch_load(path, mmap=True)
        self._checkpoint_seen = None  # Lightning reads the file again when it restores it
        state = checkpoint.get("state_dict") if isinstance(checkpoint, dict) else None
        if isinstance(state, dict):
            problem = geometry_mismatch(path, self.model, checkpoint)
            if problem:
                raise ValueError(problem)

    # validate/test: FrozenModule prints its own retrieval table; Lightning's would repeat it.
    def validate(self, **kwargs: Any) -> Any:
        return self.trainer.validate(**{**kwargs, "verbose": False})

    def test(self, **kwargs: Any) -> Any:
        return self.trainer.test(**{**kwargs, "verbose": False})


def _without_union_preamble(message: str) -> str:
    """jsonargparse's error for a bad key of a class chosen by class_path (the model, in subclass mode) lists
    every subtype it tried; the user needs the key and the reason: "model.lr: Expected a <class 'float'>..."."""
    tried = re.search(r'Parser key "([^"]+)":\s*Does not validate against any of the Union subtypes.*?'
                      r"- Problem with given class_path '[^']+':\s*(.*?)(?=\n\s*- |\Z)", message, re.S)
    if not tried:
        return message
    outer, inner = tried.groups()
    key = re.match(r'Parser key "([^"]+)":\s*(.*)', inner, re.S)
    return f"{outer}.{key.group(1)}: {key.group(2).strip()}" if key else f"{outer}: {inner.strip()}"


def _data_seed(seed_everything: Any) -> int:
    """The data's seed from `seed_everything` (an int; true or false before LightningCLI draws one: 0)."""
    return seed_everything if isinstance(seed_everything, int) and not isinstance(seed_everything, bool) else 0


def run_folder(run_dir: Optional[str], default_root_dir: Optional[str]) -> Path:
    """``--run_dir``, else ``trainer.default_root_dir``, else a new ``lightning_logs/version_N`` (Lightning's own
    default place)."""
    if run_dir or default_root_dir:
        return Path(run_dir or default_root_dir)
    versions = [int(match.group(1)) for p in Path("lightning_logs").glob("version_*")
                if (match := re.fullmatch(r"version_(\d+)", p.name))]
    return Path("lightning_logs") / f"version_{max(versions, default=-1) + 1}"


def geometry_mismatch(path: Path, module: Any, checkpoint: dict[str, Any]) -> Optional[str]:
    """Why the checkpoint's weights do not load into `module` (None when they do): the model settings that
    differ, or else the first weight that does not fit, and the fix."""
    expected = {key: tuple(value.shape) for key, value in module.state_dict().items()}
    found = {key: tuple(value.shape) for key, value in checkpoint["state_dict"].items() if hasattr(value, "shape")}
    if not set(expected) & set(found):
        return (f"{path} is not a checkpoint of this model (none of its {len(found)} weights has a name the model "
                "knows); published Frozen-in-Time weights go in --model.init_from, --ckpt_path takes a .ckpt "
                "written by lightning-frozen")
    differences = [*(f"{key} is {found[key]} there, {expected[key]} here" for key in expected
                     if key in found and found[key] != expected[key]),
                   *(f"{key} is missing there" for key in sorted(set(expected) - set(found))),
                   *(f"{key} is unknown here" for key in sorted(set(found) - set(expected)))]
    if not differences:
        return None
    saved = {key: value for key, value in (checkpoint.get("hyper_parameters") or {}).items() if key in GEOMETRY}
    settings = _settings_that_differ(saved, dict(module.hparams))
    what = "; ".join(settings) if settings else differences[0]
    return (f"{path} holds a model of another geometry ({what}; {len(differences)} weights do not fit). Use the "
            "config it was trained with, or leave those model settings out of the config and the command line: "
            "the checkpoint's own then apply")


def _settings_that_differ(saved: dict[str, Any], current: dict[str, Any], prefix: str = "model") -> list[str]:
    """'model.video.embed_dim is 32 there, 128 here' for every setting both record with different values."""
    differences = []
    for key in sorted(set(saved) & set(current)):
        mine = current[key].to_dict() if hasattr(current[key], "to_dict") else current[key]
        if isinstance(saved[key], dict) and isinstance(mine, dict):
            differences += _settings_that_differ(saved[key], mine, f"{prefix}.{key}")
        elif saved[key] != mine and not isinstance(mine, dict):
            differences.append(f"{prefix}.{key} is {saved[key]!r} there, {mine!r} here")
    return differences


def _as_list(value: Any) -> list:
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


def run_cli(args: Optional[list[str]] = None, run: bool = True) -> FrozenCLI:
    """Parse `args` (default sys.argv) and run the subcommand (`run=False`: only build the objects)."""
    quiet_library_output()
    return FrozenCLI(FrozenModule, FrozenDataModule, args=args, run=run, subclass_mode_model=True,
                     save_config_callback=None, parser_class=FrozenArgumentParser, parser_kwargs={"prog": PROG})
