"""The prediction writer of ``index``: commits each group of whole videos as its embeddings arrive."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import pytorch_lightning as pl
from pytorch_lightning.callbacks import BasePredictionWriter

from . import store


class IndexWriter(BasePredictionWriter):
    """Gathers ``predict_step``'s window embeddings per video and commits a group of videos (one
    SQLite transaction) when the batch that closes it arrives (``WindowBatches`` marks it).

    Under DDP every rank commits its own groups into the same database; SQLite serialises them.
    """

    def __init__(self, folder: Path, progress: bool = False, total: int = 0):
        super().__init__(write_interval="batch")
        self.folder = Path(folder)
        self.progress = progress
        self.total = total

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._db = store.connect(self.folder)
        self._windows: dict[str, list[np.ndarray]] = {}
        self._bar = None
        if self.progress and trainer.global_rank == 0 and self.total:
            from tqdm import tqdm

            share = -(-self.total // trainer.world_size)
            self._bar = tqdm(total=share, unit="video", desc="indexing", dynamic_ncols=True)

    def write_on_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, prediction: dict[str, Any],
                           batch_indices: Optional[Sequence[int]], batch: Any, batch_idx: int,
                           dataloader_idx: int = 0) -> None:
        for path, vector, group in zip(prediction["paths"], prediction["video"].numpy(), batch["meta"]["closes"]):
            self._windows.setdefault(path, []).append(vector)
            if group is not None:  # the last window of a group: every video of it is embedded
                for record in group.records:
                    record.embeddings = np.stack(self._windows.pop(record.path))
                store.commit_videos(self._db, group.records)
                if self._bar is not None:
                    self._bar.update(len(group.records))

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._db.close()
        if self._bar is not None:
            self._bar.close()
