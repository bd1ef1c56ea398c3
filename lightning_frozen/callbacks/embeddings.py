"""EmbeddingWriter: what `lightning-frozen predict` leaves on disk, one file of a dataset's embeddings.

Search does not read it: `lightning-frozen index` runs the same ``predict_step`` with its own
writer (``lightning_frozen.search.writer``), which commits whole videos to the index as they come.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import BasePredictionWriter
from pytorch_lightning.utilities import rank_zero_info

from ..atomic import save_atomically
from ..data.metadata_checks import offender_list


class EmbeddingWriter(BasePredictionWriter):
    """Collects predict_step outputs into one file: ids, paths, video and text embeddings, and
    ``skipped``, the videos lax loading could not read (they get no row).

    The file holds only tensors, strings and lists, so `torch.load(path, weights_only=True)`
    reads it. An existing file is never overwritten; the file appears whole or not at all.
    Under DDP each rank writes `<stem>.rank<k>.pt`.
    """

    def __init__(self, output: str = "embeddings.pt"):
        super().__init__(write_interval="epoch")
        self.output = Path(output)

    def _target(self, trainer: pl.Trainer) -> Path:
        if trainer.world_size > 1:
            return self.output.with_name(f"{self.output.stem}.rank{trainer.global_rank}{self.output.suffix}")
        return self.output

    def check_output(self, trainer: pl.Trainer) -> None:
        """Raise when the output file exists (the `lightning-frozen` command asks before the run starts)."""
        target = self._target(trainer)
        if target.exists():
            raise FileExistsError(f"{target} exists; refusing to overwrite it: choose another --embeddings.output")

    def on_predict_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.check_output(trainer)

    def write_on_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           predictions: Sequence[Any], batch_indices: Sequence[Any]) -> None:
        batches = predictions[0] if predictions and isinstance(predictions[0], list) else predictions
        if not batches:
            return
        out = one_row_per_video(batches)
        save_atomically(out, self._target(trainer))
        skipped = out["skipped"]
        rank_zero_info(f"EmbeddingWriter: {len(out['ids'])} videos written to {self._target(trainer)}"
                       + (f"; {len(skipped)} unreadable and left out: {offender_list(skipped)}" if skipped else ""))


def one_row_per_video(batches: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Concatenate predict outputs, keeping the first row of each position.

    Lax loading answers an unreadable video with the next readable one (same position as
    that one): the repeat is dropped, so no unreadable video gets another's embedding, and
    its path goes to ``skipped``.
    """
    seen: set[int] = set()
    keep: list[int] = []
    row = 0
    for batch in batches:
        for index in batch.get("index", range(row, row + len(batch["ids"]))):
            if index not in seen:
                seen.add(index)
                keep.append(row)
            row += 1
    rows = torch.as_tensor(keep, dtype=torch.long)
    ids = [i for b in batches for i in b["ids"]]
    paths = [p for b in batches for p in b["paths"]]
    return {
        "ids": [ids[r] for r in keep],
        "paths": [paths[r] for r in keep],
        "video": torch.cat([b["video"] for b in batches])[rows],
        "text": torch.cat([b["text"] for b in batches])[rows],
        "skipped": sorted({p for b in batches for p in b.get("skipped", [])}),
    }
