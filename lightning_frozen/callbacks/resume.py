"""ExactResume: what a killed run needs, beyond Lightning's own checkpoint, to go on as if it never stopped.

Lightning's checkpoint holds the weights, the optimiser, the loops' progress and (through
the DataModule's ``StatefulDataLoader``) each training loader's position. Two things are
missing, and this callback adds them:

* The global random states (torch, CUDA, numpy, Python), from which dropout and the
  on-device augmentation draw. They are saved in every checkpoint and put back when training
  starts again (``on_train_start``), after Lightning has rebuilt the loaders, so nothing drawn
  while setting up can shift them. (Data workers need no state: each item's randomness comes
  from its place in the run, see ``lightning_frozen.data.core.RunState``.)
* A run folder that belongs to one run: a fresh ``fit`` refuses a checkpoint folder that
  already holds checkpoints (``--ckpt_path last`` continues that run instead), so a new run
  never overwrites another's ``last.ckpt`` and nothing is found missing an epoch later. A
  resumed run removes the temporary files of saves that the kill cut short.

The ``lightning-frozen`` command adds this callback to every run.
"""
from __future__ import annotations

import random
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint


def random_states() -> dict[str, Any]:
    """The global random states, as tensors and plain Python (the file stays loadable with weights_only)."""
    kind, keys, position, has_gauss, cached = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "position": int(position),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "python": random.getstate(),
    }


def set_random_states(states: dict[str, Any]) -> None:
    """Put back what ``random_states`` returned (CUDA only where the saving run had it and this one has it)."""
    torch.set_rng_state(states["torch"])
    if states.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
    saved = states["numpy"]
    np.random.set_state((saved["kind"], saved["keys"].numpy().astype(np.uint32), saved["position"],
                         saved["has_gauss"], saved["cached_gaussian"]))
    version, state, gauss = states["python"]
    random.setstate((version, tuple(state), gauss))


class ExactResume(pl.Callback):
    """Saves and restores the global random states; refuses to start a fresh fit over another run's checkpoints."""

    def __init__(self) -> None:
        self._pending: Optional[dict[str, Any]] = None

    def state_dict(self) -> dict[str, Any]:
        return {"random_states": random_states()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._pending = state_dict.get("random_states")

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        for callback in trainer.checkpoint_callbacks:
            if isinstance(callback, ModelCheckpoint) and callback.dirpath and trainer.ckpt_path is None:
                refuse_used_folder(Path(callback.dirpath))
        if trainer.ckpt_path is not None and trainer.is_global_zero:
            for folder in checkpoint_folders(trainer):
                remove_partial_saves(folder)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._pending is not None:
            set_random_states(self._pending)
            self._pending = None


def checkpoint_folders(trainer: pl.Trainer) -> list[Path]:
    """Every folder this run writes checkpoints to: the ModelCheckpoints' and the frame curriculum's."""
    folders = [Path(c.dirpath) for c in trainer.checkpoint_callbacks if isinstance(c, ModelCheckpoint) and c.dirpath]
    folders += [Path(c.stage_folder(trainer)) for c in trainer.callbacks if callable(getattr(c, "stage_folder", None))]
    return list(dict.fromkeys(folders))


def refuse_used_folder(folder: Path, names: Optional[list[str]] = None) -> None:
    """Raise when `folder` holds checkpoints (`names`, default: any ``*.ckpt``) that a fresh run would overwrite."""
    found = sorted(p.name for p in folder.glob("*.ckpt")) if names is None else [
        n for n in names if (folder / n).is_file()]
    if found:
        shown = ", ".join(found[:5]) + (f" and {len(found) - 5} more" if len(found) > 5 else "")
        raise FileExistsError(
            f"{folder} already holds checkpoints of an earlier run ({shown}). Continue that run with "
            "--ckpt_path last, or start a new one in an empty folder (another --run_dir, or move the old run away)."
        )


def remove_partial_saves(folder: Path) -> None:
    """Delete the temporary files of saves that a kill interrupted (``.<name>.ckpt.<random>.tmp``, see
    ``lightning_frozen.atomic``); the checkpoints themselves are whole, these never are."""
    for partial in folder.glob(".*.ckpt.*.tmp"):
        partial.unlink(missing_ok=True)
