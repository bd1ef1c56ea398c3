"""FrameCurriculum: train on 1, then 2, then 4 frames in one run, with a best and last checkpoint per stage.

At each stage boundary the best weights of the stage just ended are reloaded (the
published recipe starts each stage from the previous stage's best checkpoint). The frame
count follows the stages through the DataModule's run state, which this callback hands its
schedule: the datasets read the count per item from shared memory, so no loader is rebuilt
and workers, loader state and the epoch carry on.
"""
from __future__ import annotations

import bisect
import itertools
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import pytorch_lightning as pl
from pytorch_lightning.trainer.states import TrainerFn
from pytorch_lightning.utilities import rank_zero_info

from ..models import load_checkpoint
from .resume import refuse_used_folder


@dataclass
class Stage:
    frames: int
    epochs: int


class FrameCurriculum(pl.Callback):
    """Stages such as ``[{frames: 1, epochs: 8}, {frames: 2, epochs: 1}, {frames: 4, epochs: 1}]``.

    Args:
        stages: frame count and epoch count of each stage, in order.
        monitor: metric that picks each stage's best checkpoint.
        mode: "max" or "min" for `monitor`.
        dirpath: where stage checkpoints go (default: the logger's directory/checkpoints).
    """

    def __init__(self, stages: list[Stage], monitor: str = "val/t2v_gmean", mode: str = "max",
                 dirpath: Optional[str] = None):
        if not stages:
            raise ValueError("FrameCurriculum needs at least one stage, e.g. [{frames: 1, epochs: 1}]")
        self.stages = [s if isinstance(s, Stage) else Stage(**s) for s in stages]
        for i, stage in enumerate(self.stages):
            if stage.frames < 1 or stage.epochs < 1:
                raise ValueError(f"stage {i} has frames={stage.frames}, epochs={stage.epochs}: both must be >= 1")
        if mode not in ("max", "min"):
            raise ValueError(f"mode must be 'max' or 'min', got {mode!r}")
        self.monitor, self.mode, self.dirpath = monitor, mode, dirpath
        self._ends = list(itertools.accumulate(s.epochs for s in self.stages))  # first epoch after each stage
        self.best_scores: dict[int, float] = {}
        self.best_paths: dict[int, str] = {}
        self.last_paths: dict[int, str] = {}
        self.entered_stage: Optional[int] = None  # the stage whose starting weights are in place

    # -- stage arithmetic ------------------------------------------------------------------
    @property
    def total_epochs(self) -> int:
        return self._ends[-1]

    def stage_of_epoch(self, epoch: int) -> int:
        return min(bisect.bisect_right(self._ends, epoch), len(self.stages) - 1)

    def frames_at_epoch(self, epoch: int) -> int:
        return self.stages[self.stage_of_epoch(epoch)].frames

    def stage_starts(self) -> list[tuple[int, str]]:
        """(first epoch, label such as "4f") of each stage."""
        return [(end - stage.epochs, f"{stage.frames}f") for stage, end in zip(self.stages, self._ends)]

    def _is_last_epoch_of_stage(self, epoch: int) -> bool:
        return epoch + 1 in self._ends

    def stage_folder(self, trainer: pl.Trainer) -> Path:
        """Where the stage checkpoints go."""
        return Path(self.dirpath) if self.dirpath else Path(trainer.log_dir or trainer.default_root_dir) / "checkpoints"

    def _path(self, trainer: pl.Trainer, index: int, kind: str) -> Path:
        return self.stage_folder(trainer) / f"stage{index}-{self.stages[index].frames}f-{kind}.ckpt"

    def _save(self, trainer: pl.Trainer, path: Path) -> None:
        # Another run's stage files were refused when this fit started (on_fit_start): every file
        # here belongs to this run, or to the run it resumes.
        trainer.save_checkpoint(path, weights_only=False)

    # -- hooks -----------------------------------------------------------------------------
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        model_frames = pl_module.model.video_model.num_frames
        most = max(s.frames for s in self.stages)
        if most > model_frames:
            raise ValueError(f"the curriculum reaches {most} frames but model.video.num_frames is {model_frames}: "
                             f"set it to {most}")
        run_state = getattr(trainer.datamodule, "run_state", None)
        if run_state is None:
            raise TypeError("FrameCurriculum needs a DataModule with a run_state (FrozenDataModule)")
        # The run state applies it whenever a training loader begins an epoch, after a resume has
        # restored the epoch, so a resumed run continues in the right stage. Installed here, before
        # the LightningModule's setup checks the data against the model: the frame counts that
        # matter are then the stages' (checked above).
        run_state.set_schedule(self.frames_at_epoch)

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.max_epochs != self.total_epochs:
            if trainer.max_epochs not in (None, -1, 1000):  # Lightning's values for "not set"
                raise ValueError(
                    f"trainer.max_epochs is {trainer.max_epochs} but the FrameCurriculum's stages add up to "
                    f"{self.total_epochs} epochs ({' + '.join(str(s.epochs) for s in self.stages)}): leave "
                    "trainer.max_epochs out (the curriculum sets it) or change the stages' epochs"
                )
            trainer.fit_loop.max_epochs = self.total_epochs
        if trainer.ckpt_path is None:  # a fresh run: find another run's stage files now, not after epoch 0
            names = [self._path(trainer, i, kind).name for i in range(len(self.stages)) for kind in ("best", "last")]
            refuse_used_folder(self.stage_folder(trainer), names)
        if self.entered_stage is None:
            self.entered_stage = 0

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or trainer.state.fn != TrainerFn.FITTING:
            return  # `validate` never writes checkpoints
        if self.monitor not in trainer.callback_metrics:
            logged = sorted(trainer.callback_metrics)
            raise ValueError(f"FrameCurriculum monitor {self.monitor!r} was not logged by the validation; it logged "
                             f"{logged}. Set the callback's monitor to one of them.")
        index = self.stage_of_epoch(trainer.current_epoch)
        score = float(trainer.callback_metrics[self.monitor])
        if math.isnan(score):
            return
        best = self.best_scores.get(index)
        if best is None or (score > best if self.mode == "max" else score < best):
            self.best_scores[index] = score
            path = self._path(trainer, index, "best")
            self._save(trainer, path)
            self.best_paths[index] = str(path)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        epoch = trainer.current_epoch
        if not self._is_last_epoch_of_stage(epoch):
            return
        index = self.stage_of_epoch(epoch)
        path = self._path(trainer, index, "last")
        self._save(trainer, path)
        self.last_paths[index] = str(path)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Entering a new stage: start from the best weights of the one before (also after a resume)."""
        index = self.stage_of_epoch(trainer.current_epoch)
        if self.entered_stage is not None and index <= self.entered_stage:
            return
        best = self.best_paths.get(index - 1)
        if best:
            load_checkpoint(pl_module.model, best)
            rank_zero_info(f"FrameCurriculum: stage {index - 1} best {self.monitor}="
                           f"{self.best_scores[index - 1]:.4f} reloaded from {Path(best).name}")
        self.entered_stage = index
        reset_compiled = getattr(pl_module, "reset_compiled", None)
        if reset_compiled is not None:  # a new frame count: compile this stage's shapes afresh
            reset_compiled()
        rank_zero_info(f"FrameCurriculum: stage {index} ({self.stages[index].frames} frames) starts")

    # -- resumable state -------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"best_scores": self.best_scores, "best_paths": self.best_paths, "last_paths": self.last_paths,
                "entered_stage": self.entered_stage}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.best_scores = {int(k): v for k, v in state_dict["best_scores"].items()}
        self.best_paths = {int(k): v for k, v in state_dict["best_paths"].items()}
        self.last_paths = {int(k): v for k, v in state_dict["last_paths"].items()}
        self.entered_stage = state_dict.get("entered_stage")
