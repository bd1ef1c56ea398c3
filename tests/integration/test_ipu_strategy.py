"""IPUStrategy on the emulator, checked against plain Lightning CPU runs."""
from __future__ import annotations

import copy

import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

from lightning_frozen.ipu import IPUOptions, IPUStrategy, StageMapError
from lightning_frozen.ipu import emulator as emu
from lightning_frozen.models import TextConfig, VideoConfig, bundled_text_model_path
from lightning_frozen.module import FrozenModule

FRAMES = 2
TOKENS = 8
# A 4-stage map of the tiny model (2 text layers, 4 video blocks), and a 2-stage map by whole towers.
FOUR_STAGES = {"model.text_model.embeddings": 0, "model.text_layers": [0, 1], "model.txt_proj": 1,
               "model.video_model.patch_embed": 2, "model.video_model.blocks": [2, 2, 3, 3], "model.vid_proj": 3}
TWO_STAGES = {"model.text_model": 0, "model.video_model": 1}


def tiny_module(lr: float = 1e-3, num_frames: int = FRAMES) -> FrozenModule:
    torch.manual_seed(0)
    return FrozenModule(
        video=VideoConfig(arch=None, img_size=32, patch_size=16, embed_dim=32, depth=4, num_heads=2,
                          num_frames=num_frames, time_init="rand"),
        text=TextConfig(name_or_path=str(bundled_text_model_path()), pretrained=False, config_overrides={
            "num_hidden_layers": 2, "hidden_size": 32, "num_attention_heads": 2, "intermediate_size": 64,
            "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}),
        projection_dim=16, lr=lr, weight_decay=0.01,
    )


class PairDataset(Dataset):
    """Deterministic already-normalised clips and token ids (as the DataModule yields after transforms)."""

    def __init__(self, n: int, frames: int = FRAMES, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.video = torch.randn(n, frames, 3, 32, 32, generator=g)
        self.ids = torch.randint(1, 1000, (n, TOKENS), generator=g)
        lengths = torch.randint(3, TOKENS + 1, (n,), generator=g)
        self.mask = (torch.arange(TOKENS)[None] < lengths[:, None]).long()

    def __len__(self) -> int:
        return len(self.video)

    def __getitem__(self, i: int) -> dict:
        return {"video": self.video[i], "input_ids": self.ids[i], "attention_mask": self.mask[i],
                "meta": {"index": i}}


def loader(n: int, batch_size: int, frames: int = FRAMES) -> DataLoader:
    return DataLoader(PairDataset(n, frames), batch_size=batch_size, shuffle=False)


def trainer(**kwargs) -> pl.Trainer:
    defaults = dict(logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                    num_sanity_val_steps=0, limit_val_batches=0)
    return pl.Trainer(**{**defaults, **kwargs})


def ipu_strategy(stage_map=FOUR_STAGES, **opts) -> IPUStrategy:
    execution = opts.pop("execution", "sharded")
    return IPUStrategy(stage_map=stage_map, emulator=True, training_opts=IPUOptions(execution=execution, **opts))


def test_emulated_ipu_run_matches_plain_cpu_run():
    """replication 2 x device iterations 2 x accumulation 3, 4 stages: same weights as CPU with 6-batch accumulation.

    poptorch pipelines 4 training stages only with accumulation >= 7 (see the next test), so the 4 stages
    run sharded here; pipelined and sharded execution compute the same update.
    """
    stage_map, devices, execution = FOUR_STAGES, 8, "sharded"
    micro, repl, iters, accum, calls = 2, 2, 2, 3, 1
    n = micro * repl * iters * accum * calls
    reference = tiny_module()
    emulated = copy.deepcopy(reference)
    start = {k: v.clone() for k, v in reference.state_dict().items()}

    trainer(accelerator="cpu", max_steps=iters * calls, accumulate_grad_batches=repl * accum).fit(
        reference, loader(n, micro))
    strategy = ipu_strategy(stage_map, replication_factor=repl, device_iterations=iters, execution=execution)
    run = trainer(accelerator="ipu", devices=devices, strategy=strategy, max_steps=calls,
                  accumulate_grad_batches=accum)
    run.fit(emulated, loader(n, micro))

    assert strategy.gradient_accumulation == accum
    assert run.accumulate_grad_batches == 1
    ref, got = reference.state_dict(), emulated.state_dict()
    moved = [k for k in ref if not torch.equal(ref[k], start[k])]
    assert len(moved) > 20  # training really changed the weights
    for key in ref:
        torch.testing.assert_close(got[key], ref[key], rtol=0, atol=1e-5, msg=lambda m, key=key: f"{key}: {m}")


def test_four_stage_pipeline_with_too_little_accumulation_is_rejected():
    """poptorch: a pipelined N-stage training model needs gradientAccumulation >= 2N - 1."""
    strategy = ipu_strategy(FOUR_STAGES, replication_factor=2, execution="pipelined")
    run = trainer(accelerator="ipu", devices=8, strategy=strategy, max_steps=1, accumulate_grad_batches=3)
    with pytest.raises(emu.Error, match=r"greater than or equal to the number of pipeline stages \(7\)"):
        run.fit(tiny_module(), loader(12, 2))


def test_stage_map_checked_against_trainer_devices_before_compiling():
    strategy = ipu_strategy(FOUR_STAGES, replication_factor=2)
    run = trainer(accelerator="ipu", devices=4, strategy=strategy, max_steps=1)
    with pytest.raises(StageMapError, match=r"model\.video_model\.patch_embed = 2 is out of range.*trainer.devices: 8"):
        run.fit(tiny_module(), loader(8, 2))
    assert strategy._train_exec is None  # nothing compiled


def test_validation_uses_inference_executor_with_training_weights():
    module = tiny_module()
    strategy = ipu_strategy(TWO_STAGES, replication_factor=1, device_iterations=2, execution="sharded")
    run = trainer(accelerator="ipu", devices=2, strategy=strategy, max_steps=2, limit_val_batches=None,
                  val_check_interval=1, check_val_every_n_epoch=None)
    seen = []
    original = FrozenModule.update_retrieval

    def spy(self, stage, batch, text_emb, video_emb):
        # the embeddings the metric receives come from the device; compare with a host forward
        infer = strategy._infer_exec
        assert infer is not None and infer.isAttached() and not strategy._train_exec.isAttached()
        with torch.no_grad():
            host_text, host_video = self.model(batch["video"], batch["input_ids"], batch["attention_mask"])
        seen.append((self.global_step, torch.allclose(text_emb, host_text, atol=1e-5),
                     torch.allclose(video_emb, host_video, atol=1e-5),
                     {k: v.clone() for k, v in self.model.state_dict().items()}))
        return original(self, stage, batch, text_emb, video_emb)

    FrozenModule.update_retrieval = spy
    try:
        run.fit(module, loader(8, 2), loader(5, 2))  # 5 samples: the last combined batch is padded
    finally:
        FrozenModule.update_retrieval = original
    assert [s[0] for s in seen] == [1, 1, 2, 2]
    assert all(s[1] and s[2] for s in seen)
    # the weights used at step 1 differ from those at step 2: training weights reached the inference executor
    assert any(not torch.equal(seen[0][3][k], seen[2][3][k]) for k in seen[0][3])


class TwoFrameCounts(Dataset):
    """Two batches of 2-frame clips, then two of 4-frame clips (a frame curriculum in one epoch)."""

    def __init__(self) -> None:
        self.parts = [PairDataset(4, 2, seed=1), PairDataset(4, 4, seed=2)]

    def __len__(self) -> int:
        return 8

    def __getitem__(self, i: int) -> dict:
        return self.parts[i // 4][i % 4]


def test_frame_count_change_recompiles_and_keeps_training_state():
    reference = tiny_module(num_frames=4)
    emulated = copy.deepcopy(reference)
    trainer(accelerator="cpu", max_epochs=1).fit(reference, DataLoader(TwoFrameCounts(), batch_size=2))

    compiles = []
    original = emu.PoplarExecutor._compile

    def counting(self, args, leaves):
        compiles.append((self.training, tuple(t.shape[1] for t in leaves if t.dim() == 5)))
        return original(self, args, leaves)

    strategy = ipu_strategy(TWO_STAGES, replication_factor=1)
    emu.PoplarExecutor._compile = counting
    try:
        trainer(accelerator="ipu", devices=2, strategy=strategy, max_epochs=1).fit(
            emulated, DataLoader(TwoFrameCounts(), batch_size=2))
    finally:
        emu.PoplarExecutor._compile = original
    assert compiles == [(True, (2,)), (True, (4,))]
    assert [stage for stage, _ in strategy.recompilations] == ["train"]
    # weights and AdamW moments survived the recompilation: same result as the CPU run
    for key, value in reference.state_dict().items():
        torch.testing.assert_close(emulated.state_dict()[key], value, rtol=0, atol=1e-5)


def test_emulator_rejects_new_shapes_without_recompiling():
    model = tiny_module(num_frames=4).model
    executor = emu.inferenceModel(model, emu.Options())
    executor(*encode_inputs(2, frames=2))
    with pytest.raises(emu.Error, match="call destroy"):
        executor(*encode_inputs(2, frames=4))
    executor.destroy()
    text, video = executor(*encode_inputs(2, frames=4))
    assert video.shape == (2, 16) and executor.compile_count == 2


def encode_inputs(n, frames):
    data = PairDataset(n, frames)
    return data.video, data.ids, data.mask


def test_checkpoints_hold_the_device_weights(tmp_path):
    module = tiny_module()
    initial = {k: v.clone() for k, v in module.state_dict().items()}
    strategy = ipu_strategy(TWO_STAGES, replication_factor=1)
    snapshots = []

    class SaveMidRun(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if batch_idx == 0:
                executor = strategy._train_exec
                snapshots.append({k: v.clone() for k, v in executor._device_state.items()})
                assert executor._dirty_host_weights  # host copy is stale until someone asks for it
                trainer.save_checkpoint(tmp_path / "mid.ckpt")

    run = trainer(accelerator="ipu", devices=2, strategy=strategy, max_steps=2, callbacks=[SaveMidRun()])
    run.fit(module, loader(4, 2))
    with torch.serialization.safe_globals([VideoConfig, TextConfig]):
        saved = torch.load(tmp_path / "mid.ckpt", weights_only=True)["state_dict"]
    device = snapshots[0]  # the training executor's step holds the LightningModule as `module`
    assert any(not torch.equal(saved[k], initial[k]) for k in saved)
    assert set(saved) <= {k[len("module."):] for k in device}  # device also holds non-persistent buffers
    for key, value in saved.items():
        assert torch.equal(value, device["module." + key]), key


def test_host_weight_writes_reach_the_device():
    """A mid-run load_state_dict (as the frame curriculum's best-weights reload) wins over device weights."""
    start = tiny_module()
    initial = {k: v.clone() for k, v in start.state_dict().items()}

    class Reload(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if batch_idx == 1:
                pl_module.load_state_dict(initial)

    reference, emulated = copy.deepcopy(start), copy.deepcopy(start)
    trainer(accelerator="cpu", max_steps=2, callbacks=[Reload()]).fit(reference, loader(4, 2))
    strategy = ipu_strategy(TWO_STAGES, replication_factor=1)
    trainer(accelerator="ipu", devices=2, strategy=strategy, max_steps=2, callbacks=[Reload()]).fit(
        emulated, loader(4, 2))
    for key, value in reference.state_dict().items():
        torch.testing.assert_close(emulated.state_dict()[key], value, rtol=0, atol=1e-5)


def test_registered_names_resolve_to_the_strategy():
    run = pl.Trainer(accelerator="ipu", devices=2, strategy="ipu_emulator", logger=False)
    assert isinstance(run.strategy, IPUStrategy) and run.strategy.is_emulated
    assert len(run.strategy.parallel_devices) == 2


def test_fp16_weights_with_fp32_accumulators():
    module = tiny_module()
    # a small static loss scale: this tiny random model's FP16 gradients overflow at x1024
    # (on an IPU as in the emulator); the 8-IPU configs use the seed's 1024
    strategy = IPUStrategy(stage_map=TWO_STAGES, emulator=True, precision="16.32", loss_scaling=8,
                           training_opts=IPUOptions(execution="sharded", half_partials=True))
    run = trainer(accelerator="ipu", devices=2, strategy=strategy, max_steps=2)
    run.fit(module, loader(4, 2))
    opt = strategy._poptorch_optimizer if strategy._poptorch_optimizer is not None else None
    assert module.model.vid_proj[0].weight.dtype == torch.float16
    assert torch.isfinite(run.callback_metrics["train/loss"])
    assert opt is not None and opt.loss_scaling == 8 and opt.accum_type == torch.float32
    moments = [s["exp_avg"] for s in opt.state.values()]
    assert moments and all(m.dtype == torch.float32 for m in moments)


def test_ipu_accelerator_without_ipu_strategy_is_rejected():
    from pytorch_lightning.utilities.exceptions import MisconfigurationException

    run = trainer(accelerator="ipu", devices=1, max_steps=1)
    with pytest.raises(MisconfigurationException, match="needs the IPU strategy"):
        run.fit(tiny_module(), loader(2, 2))
