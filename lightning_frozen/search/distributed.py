"""Embedding on several devices through Lightning: ``Trainer.predict`` with DDP (spawned processes).

Each rank decodes and embeds its share of the videos (Lightning's distributed sampler) and
writes them to its own part, ``parts/rank<k>.sqlite`` (the index's schema). The calling
process then merges the parts into the index in the order of a single-process run, in the
same whole-video commits, so a kill during the merge leaves what a kill of a single run
would. Parts are scratch: a kill before the merge loses them and the next run re-embeds.
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

import numpy as np
import pytorch_lightning as pl
from pytorch_lightning.callbacks import BasePredictionWriter
from torch.utils.data import DataLoader

from . import store
from .encoder import Encoder
from .store import EmbeddingSettings, VideoRecord
from .windows import DecodedVideo, VideoWindows


class WindowEmbedder(pl.LightningModule):
    """predict_step: one video's windows -> its record with embeddings (no clips kept)."""

    def __init__(self, encoder: Encoder, batch_size: int):
        super().__init__()
        self.model = encoder.model
        self.encoder = encoder
        self.batch_size = batch_size

    def predict_step(self, video: DecodedVideo, batch_idx: int) -> VideoRecord:
        if video.clips is not None:  # the transform holds no tensors: it works on the clips' device
            video.record.embeddings = self.encoder.encode_clips(video.clips.to(self.device), self.batch_size)
        return video.record


class PartWriter(BasePredictionWriter):
    """Each rank commits its records to its own SQLite part as they come."""

    def __init__(self, parts: Path):
        super().__init__(write_interval="batch")
        self.parts = parts

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        folder = self.parts / f"rank{trainer.global_rank}"
        folder.mkdir(exist_ok=True)
        self._db = store.connect(folder)  # one connection per rank, for all its commits

    def write_on_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, prediction: VideoRecord,
                           batch_indices: Optional[Sequence[int]], batch: Any, batch_idx: int,
                           dataloader_idx: int = 0) -> None:
        store.commit_videos(self._db, [prediction])

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._db.close()


def read_records(part: Path) -> dict[str, VideoRecord]:
    """path -> record (windows, embeddings, thumbnails) of one part."""
    db = store.connect(part)
    try:
        out = {}
        for video_id, path, size, mtime, error, fps, frames, codec in db.execute(
                "SELECT id, path, size, mtime_ns, error, fps, frames, codec FROM videos"):
            windows = db.execute('SELECT w.start, w."end", w.embedding, t.jpeg FROM windows w JOIN thumbnails t '
                                 "ON t.window_id = w.id WHERE w.video_id = ? ORDER BY w.position",
                                 (video_id,)).fetchall()
            embeddings = np.stack([np.frombuffer(w[2], np.float32) for w in windows]) if windows else None
            out[path] = VideoRecord(path, size, mtime, fps, frames, codec, error,
                                    tuple((w[0], w[1]) for w in windows), embeddings, tuple(w[3] for w in windows))
        return out
    finally:
        db.close()


def embed_with_trainer(root: Path, pending: list[str], settings: EmbeddingSettings, encoder: Encoder,
                       batch_size: int, num_workers: int, devices: int, accelerator: str,
                       parts: Path) -> Iterator[VideoRecord]:
    """Records of ``pending`` (in order), embedded by ``devices`` processes through ``Trainer.predict``."""
    shutil.rmtree(parts, ignore_errors=True)
    parts.mkdir(parents=True)
    trainer = pl.Trainer(accelerator=accelerator, devices=devices, strategy="ddp_spawn", logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         callbacks=[PartWriter(parts)])
    loader = DataLoader(VideoWindows(root, pending, settings), batch_size=None, num_workers=num_workers)
    trainer.predict(WindowEmbedder(encoder, batch_size), loader, return_predictions=False)
    merged: dict[str, VideoRecord] = {}
    for part in sorted(parts.iterdir()):
        if part.is_dir():
            merged.update(read_records(part))
    missing = [p for p in pending if p not in merged]
    if missing:
        raise RuntimeError(f"{len(missing)} video(s) came back from no rank (first: {missing[0]}); re-run to retry")
    for path in pending:
        yield merged.pop(path)
    shutil.rmtree(parts, ignore_errors=True)
