"""model.compile through the CLI: static shapes, a bounded number of compiles, a fresh start per curriculum stage."""
import pytest
import pytorch_lightning as pl
from helpers import tiny_config
from torch._dynamo.utils import counters

from lightning_frozen.cli import run_cli

# "eager": torch.compile's graph capture (where recompiles happen) without inductor's slow CPU codegen
COMPILE = ["--model.compile", "default", "--model.compile_backend", "eager"]


class GraphCount(pl.Callback):
    """Graphs compiled so far, after each validation (the end of each epoch here)."""

    def __init__(self):
        self.after_epoch = []

    def on_validation_end(self, trainer, pl_module):
        self.after_epoch.append(counters["stats"]["unique_graphs"])


@pytest.mark.slow
def test_compiled_fit_compiles_each_shape_once_and_afresh_per_stage(tmp_path, tiny_msrvtt, text_dir, monkeypatch):
    # stage 0: 1 frame for two epochs, stage 1: 2 frames; 6 test clips in batches of 4 leave a short last batch
    stages = [{"frames": 1, "epochs": 2}, {"frames": 2, "epochs": 1}]
    config = tiny_config(tmp_path, tiny_msrvtt, text_dir, stages=stages, limit_train_batches=2)
    cli = run_cli(["--config", str(config), *COMPILE, "--data.padding", "max_length", "--data.eval_batch_size", "4"],
                  run=False)
    resets = []
    reset = cli.model.reset_compiled
    monkeypatch.setattr(cli.model, "reset_compiled", lambda: (resets.append(cli.trainer.current_epoch), reset()))
    count = GraphCount()
    cli.trainer.callbacks.append(count)
    counters.clear()
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    # per stage: the training step, evaluation, evaluation's short last batch; nothing new in epoch 2
    assert count.after_epoch == [3, 3, 6]
    assert resets == [2]
    assert cli.model._compiled is not None


def test_compile_refuses_batch_dependent_caption_lengths(tmp_path, tiny_msrvtt, text_dir):
    config = tiny_config(tmp_path, tiny_msrvtt, text_dir, max_steps=1)
    cli = run_cli(["--config", str(config), *COMPILE], run=False)
    with pytest.raises(ValueError, match="data.padding: max_length"):
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)


def test_tf32_for_training_steps_on_cuda_only_and_fused_adamw(tiny_text):
    import torch
    from helpers import TINY_VIDEO
    from pytorch_lightning.trainer.states import TrainerFn

    from lightning_frozen.module import FrozenModule

    module = FrozenModule(video=dict(TINY_VIDEO), text=tiny_text, projection_dim=16)
    module.trainer = pl.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False)
    module.trainer.state.fn = TrainerFn.FITTING
    assert torch.get_float32_matmul_precision() == "highest"
    module.on_train_start()
    assert torch.get_float32_matmul_precision() == "highest"  # a CPU run is left alone
    assert module.configure_optimizers()["optimizer"].defaults["fused"] is False
    module._device = torch.device("cuda", 0)  # where Lightning records the module's device; no CUDA call follows
    try:
        module.on_train_start()
        assert torch.get_float32_matmul_precision() == "high"  # TF32 for training steps
        module.on_validation_start()
        assert torch.get_float32_matmul_precision() == "highest"  # evaluation stays exact
        module.on_validation_end()
        assert torch.get_float32_matmul_precision() == "high"
        assert module.configure_optimizers()["optimizer"].defaults["fused"] is True
    finally:
        module.on_train_end()
    assert torch.get_float32_matmul_precision() == "highest"
