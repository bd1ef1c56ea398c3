"""FrameCurriculum: frame switching, per-stage checkpoints, best-weight reload, resuming."""
import hashlib

import pytest
import pytorch_lightning as pl
import torch
from helpers import tiny_config

from lightning_frozen.callbacks import FrameCurriculum
from lightning_frozen.cli import run_cli


class FrameProbe(pl.Callback):
    """Records the clip length of the first training batch of every epoch."""

    def __init__(self):
        self.frames = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.frames.setdefault(trainer.current_epoch, batch["video"].shape[1])


def _digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _fit(config, extra=(), ckpt_path=None, callbacks=()):
    cli = run_cli(["--config", str(config), *extra], run=False)
    for cb in callbacks:
        cli.trainer.callbacks.append(cb)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule, ckpt_path=ckpt_path, weights_only=False)
    return cli


STAGES = [{"frames": 1, "epochs": 1}, {"frames": 2, "epochs": 2}]


def test_stage_arithmetic():
    cur = FrameCurriculum([{"frames": 1, "epochs": 2}, {"frames": 2, "epochs": 1}, {"frames": 4, "epochs": 3}])
    assert cur.total_epochs == 6
    assert [cur.stage_of_epoch(e) for e in range(6)] == [0, 0, 1, 2, 2, 2]
    with pytest.raises(ValueError, match="stage 1 has frames=0"):
        FrameCurriculum([{"frames": 1, "epochs": 1}, {"frames": 0, "epochs": 1}])


def test_curriculum_switches_frames_writes_stage_checkpoints_and_resumes(tmp_path, tiny_msrvtt, text_dir):
    config = tiny_config(tmp_path, tiny_msrvtt, text_dir, stages=STAGES, limit_train_batches=2,
                         enable_checkpointing=True)
    every_epoch = pl.callbacks.ModelCheckpoint(dirpath=tmp_path / "epochs", filename="e{epoch}", save_top_k=-1,
                                               every_n_epochs=1)
    probe = FrameProbe()
    cli = _fit(config, callbacks=[every_epoch, probe])
    assert probe.frames == {0: 1, 1: 2, 2: 2}
    assert cli.trainer.current_epoch == 3 and cli.trainer.global_step == 6
    stages = tmp_path / "stages"
    names = sorted(p.name for p in stages.iterdir())
    assert names == ["stage0-1f-best.ckpt", "stage0-1f-last.ckpt", "stage1-2f-best.ckpt", "stage1-2f-last.ckpt"]
    best0 = torch.load(stages / "stage0-1f-best.ckpt", weights_only=True)
    assert best0["epoch"] == 0
    assert best0["hyper_parameters"]["video"]["num_frames"] == 2  # plain dicts: weights_only loads work
    stage0_digests = {p.name: _digest(p) for p in stages.glob("stage0-*")}
    curves = tmp_path / "checkpoints" / "curves.png"  # next to the first ModelCheckpoint's (Lightning's default)
    assert curves.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and curves.stat().st_size > 10_000
    history = next(c for c in cli.trainer.callbacks if type(c).__name__ == "TrainingCurves").history
    assert history["val_epoch"] == [0, 1, 2] and history["epoch_start"] == {0: 0, 1: 2, 2: 4}

    # Resume from the end of epoch 1 (the first epoch of stage 1): one more 2-frame epoch.
    probe = FrameProbe()
    resumed = _fit(config, ckpt_path=tmp_path / "epochs" / "eepoch=1.ckpt", callbacks=[probe])
    assert probe.frames == {2: 2}
    assert resumed.trainer.global_step == 6
    assert {p.name: _digest(p) for p in stages.glob("stage0-*")} == stage0_digests  # earlier stage untouched


def test_resume_at_stage_boundary_starts_next_stage_from_best(tmp_path, tiny_msrvtt, text_dir):
    config = tiny_config(tmp_path, tiny_msrvtt, text_dir, stages=STAGES, limit_train_batches=1, max_epochs=3)
    first = _fit(config, extra=["--trainer.max_epochs", "3"])
    stages = tmp_path / "stages"
    best0 = torch.load(stages / "stage0-1f-best.ckpt", weights_only=True)["state_dict"]

    probe = FrameProbe()
    loaded = {}

    class WeightsAtStart(pl.Callback):
        def on_train_epoch_start(self, trainer, pl_module):
            loaded.setdefault(trainer.current_epoch, {k: v.clone() for k, v in pl_module.state_dict().items()})

    # Callbacks run in order: the curriculum (from the config) reloads before this spy looks.
    _fit(config, ckpt_path=stages / "stage0-1f-last.ckpt", callbacks=[probe, WeightsAtStart()])
    assert probe.frames[1] == 2
    for key, value in best0.items():
        assert torch.equal(loaded[1][key], value), key
    assert first.trainer.current_epoch == 3


def test_refuses_to_overwrite_foreign_checkpoint(tmp_path, tiny_msrvtt, text_dir):
    config = tiny_config(tmp_path, tiny_msrvtt, text_dir, stages=[{"frames": 1, "epochs": 1}], limit_train_batches=1)
    stages = tmp_path / "stages"
    stages.mkdir()
    precious = stages / "stage0-1f-last.ckpt"
    precious.write_bytes(b"user data")
    with pytest.raises(FileExistsError, match="already holds checkpoints of an earlier run"):
        _fit(config)
    assert precious.read_bytes() == b"user data"


def test_model_must_hold_enough_temporal_rows(tmp_path, tiny_msrvtt, text_dir):
    config = tiny_config(tmp_path, tiny_msrvtt, text_dir, stages=[{"frames": 8, "epochs": 1}], limit_train_batches=1)
    with pytest.raises(ValueError, match="set it to 8"):
        _fit(config)


def test_stage_change_reaches_persistent_workers_without_rebuilding_loaders(tmp_path, tiny_msrvtt, text_dir):
    """The frame count lives in shared memory: running workers read the new stage's value."""
    config = tiny_config(tmp_path, tiny_msrvtt, text_dir, stages=STAGES, limit_train_batches=2, limit_val_batches=1)
    cli = run_cli(["--config", str(config), "--data.num_workers", "2", "--data.persistent_workers", "true"],
                  run=False)
    built = []
    train_dataloader = cli.datamodule.train_dataloader

    def counting_train_dataloader():
        loader = train_dataloader()
        built.append(loader)
        return loader

    cli.datamodule.train_dataloader = counting_train_dataloader
    probe = FrameProbe()
    cli.trainer.callbacks.append(probe)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    assert probe.frames == {0: 1, 1: 2, 2: 2}
    assert len(built) == 1
