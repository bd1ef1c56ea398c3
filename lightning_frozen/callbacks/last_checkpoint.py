"""LastCheckpoint: `last.ckpt` every N training steps in the run's folder, what `--ckpt_path last` resumes.

A ModelCheckpoint(save_last=True, save_top_k=0, every_n_train_steps=N), with one change: a
save that falls on an epoch's last batch waits until that epoch's validation has run.
Lightning resumes from a checkpoint taken between the two without running the validation,
so its score would be lost (and with it, the frame curriculum's choice of the best epoch).
"""
from __future__ import annotations

from typing import Any, Optional

import pytorch_lightning as pl
from pytorch_lightning.callbacks import ModelCheckpoint


class LastCheckpoint(ModelCheckpoint):
    """`last.ckpt` every `every_n_train_steps` steps (default: the logger's folder/checkpoints)."""

    def __init__(self, every_n_train_steps: int = 50, dirpath: Optional[str] = None):
        if every_n_train_steps < 1:
            raise ValueError(f"every_n_train_steps must be >= 1, got {every_n_train_steps}")
        super().__init__(dirpath=dirpath, save_last=True, save_top_k=0, every_n_train_steps=every_n_train_steps)
        self._after_validation = False

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        due = trainer.global_step % self._every_n_train_steps == 0
        if due and _validation_follows(trainer, batch_idx):
            self._after_validation = True
            return
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)
        if self._after_validation and not self._should_skip_saving_checkpoint(trainer):
            self._after_validation = False
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))


def _validation_follows(trainer: pl.Trainer, batch_idx: int) -> bool:
    """Whether this is the epoch's last batch and the epoch's validation runs next."""
    if batch_idx + 1 < trainer.num_training_batches or not trainer.enable_validation:
        return False
    batches = trainer.num_val_batches
    if not (sum(batches) if isinstance(batches, list) else batches):
        return False
    every = trainer.check_val_every_n_epoch
    return every is None or (trainer.current_epoch + 1) % every == 0
