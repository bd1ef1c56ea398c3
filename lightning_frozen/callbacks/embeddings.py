"""EmbeddingWriter: what `lightning-frozen predict` leaves on disk for search."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import BasePredictionWriter


class EmbeddingWriter(BasePredictionWriter):
    """Collects predict_step outputs into one file: ids, paths, video and text embeddings.

    The file holds only tensors, strings and lists, so `torch.load(path, weights_only=True)`
    reads it. An existing file is never overwritten. Under DDP each rank writes
    `<stem>.rank<k>.pt`.
    """

    def __init__(self, output: str = "embeddings.pt"):
        super().__init__(write_interval="epoch")
        self.output = Path(output)

    def _target(self, trainer: pl.Trainer) -> Path:
        if trainer.world_size > 1:
            return self.output.with_name(f"{self.output.stem}.rank{trainer.global_rank}{self.output.suffix}")
        return self.output

    def on_predict_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        target = self._target(trainer)
        if target.exists():
            raise FileExistsError(f"{target} exists; refusing to overwrite it. Choose another --output path.")

    def write_on_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           predictions: Sequence[Any], batch_indices: Sequence[Any]) -> None:
        batches = predictions[0] if predictions and isinstance(predictions[0], list) else predictions
        if not batches:
            return
        out = {
            "ids": [i for b in batches for i in b["ids"]],
            "paths": [p for b in batches for p in b["paths"]],
            "video": torch.cat([b["video"] for b in batches]),
            "text": torch.cat([b["text"] for b in batches]),
        }
        target = self._target(trainer)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(target.suffix + ".tmp")
        torch.save(out, tmp)
        tmp.rename(target)
