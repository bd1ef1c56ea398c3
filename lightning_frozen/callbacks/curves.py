"""TrainingCurves: after a fit, a PNG of the run's curves next to its checkpoints.

Loss and learning rate per step, validation R@1 per epoch, and the frame curriculum's stage
starts marked on each. The history lives in the callback's checkpoint state, so a run that
was killed and resumed still draws its whole history, once.
"""
from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.trainer.states import TrainerFn
from pytorch_lightning.utilities import rank_zero_info, rank_zero_only

from ..atomic import write_atomically
from .resume import checkpoint_folders


class TrainingCurves(pl.Callback):
    """Records loss and learning rates every ``trainer.log_every_n_steps`` steps and val R@1 every
    validation; writes ``filename`` into the checkpoint folder when the fit ends."""

    def __init__(self, filename: str = "curves.png") -> None:
        self.filename = filename
        self.history: dict[str, Any] = {"step": [], "loss": [], "lr": [], "val_epoch": [], "t2v_R1": [],
                                        "v2t_R1": [], "epoch_start": {}}

    def state_dict(self) -> dict[str, Any]:
        return {"history": self.history}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = state_dict["history"]

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.history["epoch_start"][int(trainer.current_epoch)] = int(trainer.global_step)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any,
                           batch: Any, batch_idx: int) -> None:
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if loss is None or trainer.global_step % max(1, trainer.log_every_n_steps) != 0:
            return  # reading the loss syncs a GPU: only as often as the loggers do
        self.history["step"].append(int(trainer.global_step))
        self.history["loss"].append(float(loss))
        groups = trainer.optimizers[0].param_groups
        self.history["lr"].append([float(g["lr"]) for g in groups])
        self.history["lr_names"] = [str(g.get("name", f"param group {i}")) for i, g in enumerate(groups)]

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        metrics = trainer.callback_metrics
        if trainer.sanity_checking or trainer.state.fn != TrainerFn.FITTING or "val/t2v_R1" not in metrics:
            return
        self.history["val_epoch"].append(int(trainer.current_epoch))
        for key in ("t2v_R1", "v2t_R1"):
            self.history[key].append(float(metrics.get(f"val/{key}", float("nan"))))

    @rank_zero_only
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self.history["step"] and not self.history["val_epoch"]:
            return
        path = checkpoint_folder(trainer) / self.filename
        png = plot_curves(self.history, stage_starts(trainer))
        write_atomically(path, lambda handle: handle.write(png))
        rank_zero_info(f"training curves: {path}")


def checkpoint_folder(trainer: pl.Trainer) -> Path:
    """Where the run's checkpoints go: the ModelCheckpoint's folder, else the curriculum's, else the log dir."""
    folders = checkpoint_folders(trainer)
    return folders[0] if folders else Path(trainer.log_dir or trainer.default_root_dir)


def stage_starts(trainer: pl.Trainer) -> list[tuple[int, str]]:
    """(first epoch, label) of each frame-curriculum stage; empty without a curriculum."""
    for callback in trainer.callbacks:
        if callable(getattr(callback, "stage_starts", None)):
            return callback.stage_starts()
    return []


def plot_curves(history: dict[str, Any], stages: list[tuple[int, str]]) -> bytes:
    """The three panels as PNG bytes (matplotlib's Agg backend: no display needed)."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(13, 3.6), layout="constrained")
    loss_ax, lr_ax, val_ax = figure.subplots(1, 3)
    steps = history["step"]
    loss_ax.plot(steps, history["loss"], lw=1)
    loss_ax.set(title="training loss", xlabel="step")
    shown: list[tuple[float, ...]] = []
    names = history.get("lr_names") or []  # histories recorded before groups had names have none
    for group, rate in enumerate(zip(*history["lr"]) if history["lr"] else []):
        if rate not in shown:  # groups that differ only in weight decay share a rate
            shown.append(rate)
            name = names[group].removesuffix("/no_decay") if group < len(names) else f"param group {group}"
            lr_ax.plot(steps, rate, lw=1, label=f"{name} (peak {max(rate):.1e})")
    lr_ax.set(title="learning rate", xlabel="step")
    lr_ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))
    if shown:
        lr_ax.legend(fontsize="small", loc="center right")
    for key, label in (("t2v_R1", "text -> video"), ("v2t_R1", "video -> text")):
        val_ax.plot(history["val_epoch"], history[key], marker="o", ms=3, lw=1, label=label)
    val_ax.set(title="validation R@1 (%)", xlabel="epoch")
    val_ax.legend(fontsize="small", loc="lower right")
    _mark_stages(stages, history, (loss_ax, lr_ax), val_ax)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110)
    return buffer.getvalue()


def _mark_stages(stages: list[tuple[int, str]], history: dict[str, Any], step_axes: tuple, epoch_ax: Any) -> None:
    """Shade every other curriculum stage and name each one at the top of every panel."""
    epoch_start = {int(k): v for k, v in history["epoch_start"].items()}
    last_epoch = max([*history["val_epoch"], *epoch_start, 0]) + 1
    last_step = max([*history["step"], 0])
    for i, (first, label) in enumerate(stages):
        end = stages[i + 1][0] if i + 1 < len(stages) else last_epoch
        spans = [(epoch_ax, first - 0.5, end - 0.5)]
        if first in epoch_start:
            spans += [(ax, epoch_start[first], epoch_start.get(end, last_step)) for ax in step_axes]
        for ax, left, right in spans:
            if i % 2:
                ax.axvspan(left, right, color="grey", alpha=0.12, lw=0)
            ax.annotate(f"{label} stage", ((left + right) / 2, 1), xycoords=("data", "axes fraction"),
                        xytext=(0, -11), textcoords="offset points", ha="center", fontsize="small", color="dimgrey")
