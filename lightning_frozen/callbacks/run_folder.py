"""RunFolder: one folder per run, written only once every check has passed.

A run folder (``--run_dir``, or ``trainer.default_root_dir``) holds everything a run leaves:
``checkpoints/`` (with ``curves.png``), TensorBoard event files, ``csv/version_N/metrics.csv``,
``config.yaml`` and the folder's marker (``lightning_frozen.folders``). Lightning's loggers create
their files when a run sets up, before the data, the model and the callbacks have been checked;
this callback holds the loggers back and hands them to the trainer when the stage starts
(``on_fit_start``, ``on_validation_start``, ``on_test_start``), after every check, together with
the config and the marker. A run refused at setup (a bad value, a used folder, a checkpoint of
another geometry) therefore leaves its folder exactly as it was.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Optional

import pytorch_lightning as pl
import yaml
from pytorch_lightning.loggers import CSVLogger, Logger, TensorBoardLogger
from pytorch_lightning.trainer.states import TrainerFn

from ..atomic import write_atomically
from ..folders import contents, read_marker, shown, write_marker

CONFIG = "config.yaml"
RUN_COMMANDS = tuple(f"lightning-frozen {command}" for command in ("fit", "validate", "test"))


def default_loggers(folder: Path) -> list[Logger]:
    """TensorBoard event files in the run folder itself and CSV metrics in ``csv/version_N``."""
    return [TensorBoardLogger(save_dir=str(folder), name="", version=""), CSVLogger(save_dir=str(folder), name="csv")]


class RunFolder(pl.Callback):
    """Writes a run's own files into `folder` when its stage starts, after every check.

    Args:
        folder: the run folder.
        loggers: given to the trainer when the stage starts (the trainer is built without them).
        config: the run's configuration as YAML, saved by ``fit`` as ``config.yaml`` (a resumed run
            with other settings saves its own as ``config-2.yaml``, ``config-3.yaml``, ...; nothing
            is overwritten).
        command: the command line, recorded in the folder's marker; None records no marker (a
            trainer built in Python rather than by the ``lightning-frozen`` command).
    """

    def __init__(self, folder: Path, loggers: Optional[list[Logger]] = None, config: Optional[str] = None,
                 command: Optional[list[str]] = None):
        self.folder, self.loggers, self.config, self.command = Path(folder), list(loggers or []), config, command
        self.opened = False

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._open(trainer, "fit")  # Lightning logs the hyperparameters right after on_fit_start

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.state.fn == TrainerFn.VALIDATING:
            self._open(trainer, "validate")

    def on_test_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._open(trainer, "test")

    def _open(self, trainer: pl.Trainer, stage: str) -> None:
        if self.opened:
            return
        self.opened = True
        writes = stage == "fit" or bool(self.loggers)  # validate/test without loggers write nothing, not even a marker
        if trainer.is_global_zero and writes:
            if self.command is not None:
                self._mark(stage)
            if stage == "fit" and self.config is not None:
                save_config(self.folder, self.config)
        if self.loggers:
            trainer.loggers = self.loggers
            if stage != "fit":  # Lightning logged them (to no logger) before this hook; fit logs them after it
                from pytorch_lightning.loggers.utilities import _log_hyperparams

                _log_hyperparams(trainer)

    def _mark(self, stage: str) -> None:
        marker = read_marker(self.folder)
        run = {"command": stage, "argv": self.command, "started": time.strftime("%Y-%m-%d %H:%M:%S")}
        if marker is None:
            write_marker(self.folder, f"lightning-frozen {stage}", {"argv": self.command}, runs=[run])
        else:
            write_marker(self.folder, marker["made_by"], marker.get("inputs", {}), created=marker.get("created"),
                         runs=[*marker.get("runs", []), run])


def check_run_folder(folder: Path, command: str, continues: bool) -> None:
    """Raise unless `command` may write into `folder`: absent, empty, or a run folder of ours, which a fresh
    ``fit`` (`continues` False) also needs unused by another fit. A folder from before markers that holds
    checkpoints counts as a run folder."""
    names = contents(folder)
    if not names:
        return
    marker = read_marker(folder)
    checkpoints = sorted(p.name for p in (folder / "checkpoints").glob("*.ckpt"))
    if marker is None and not checkpoints:
        raise FileExistsError(f"{folder} is neither empty nor a run folder of lightning-frozen (it holds "
                              f"{shown(names)}); nothing there is overwritten: choose an empty or new --run_dir")
    if marker is not None and not str(marker.get("made_by", "")).startswith(RUN_COMMANDS):
        raise FileExistsError(f"{folder} holds the output of {marker.get('made_by')}, not a run: choose an empty or "
                              "new --run_dir")
    fits = [run for run in (marker or {}).get("runs", []) if run.get("command") == "fit"]
    if command == "fit" and not continues and (fits or checkpoints):
        since = f", started {fits[0].get('started')}" if fits else ""
        held = f"; checkpoints: {shown(checkpoints)}" if checkpoints else ""
        raise FileExistsError(f"{folder} holds an earlier run (lightning-frozen fit{since}{held}). Continue it with "
                              "--ckpt_path last, or start a new run in an empty folder (another --run_dir, or move "
                              "the old run away)")


def save_config(folder: Path, config: str) -> Path:
    """``config.yaml``, or for a resumed run whose settings differ (other than ``ckpt_path``), the next free
    ``config-N.yaml``; returns the file that holds this run's config."""
    path = folder / CONFIG
    if path.is_file():
        if _settings(path.read_text()) == _settings(config):
            return path
        number = 2
        while (folder / f"config-{number}.yaml").exists():
            number += 1
        path = folder / f"config-{number}.yaml"
    write_atomically(path, lambda handle: handle.write(config.encode()))
    return path


def _settings(text: str) -> Any:
    try:
        settings = yaml.safe_load(text)
    except yaml.YAMLError:
        return None
    if isinstance(settings, dict):
        settings.pop("ckpt_path", None)
    return settings
