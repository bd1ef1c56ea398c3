"""Two-process DDP (gloo, CPU) trains exactly like one process on the same global batch."""
import pytest
import pytorch_lightning as pl
import torch
from helpers import TINY_VIDEO
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from lightning_frozen.module import FrozenModule


class FixedPairs(Dataset):
    """Deterministic float clips and token ids: no augmentation, no randomness in loading."""

    def __init__(self, n: int = 16):
        g = torch.Generator().manual_seed(0)
        self.video = torch.randn(n, 2, 3, 32, 32, generator=g)
        self.ids = torch.randint(1000, 3000, (n, 6), generator=g)

    def __len__(self):
        return len(self.video)

    def __getitem__(self, i):
        return {"video": self.video[i], "input_ids": self.ids[i], "attention_mask": torch.ones(6, dtype=torch.long)}


def _module(text_dir):
    torch.manual_seed(0)
    text = dict(name_or_path=text_dir, pretrained=False,
                config_overrides={"num_hidden_layers": 1, "hidden_dropout_prob": 0.0,
                                  "attention_probs_dropout_prob": 0.0})
    # time_init="rand": the zero/ones start of time attention makes some gradients pure cancellation
    return FrozenModule(video=dict(TINY_VIDEO, time_init="rand"), text=text, projection_dim=16, lr=1e-3)


class OrderedData(pl.LightningDataModule):
    """Unshuffled sharding: rank r takes samples r, r + world, ... (built inside each process)."""

    def __init__(self, batch_size):
        super().__init__()
        self.batch_size = batch_size

    def train_dataloader(self):
        world, rank = self.trainer.world_size, self.trainer.global_rank
        sampler = DistributedSampler(FixedPairs(), num_replicas=world, rank=rank, shuffle=False)
        return DataLoader(FixedPairs(), batch_size=self.batch_size, sampler=sampler)


class Recorder(pl.Callback):
    """Rank 0 writes each step's loss and the first step's (DDP-averaged) gradients to a file."""

    def __init__(self, path):
        self.path, self.losses, self.grads = str(path), [], None

    def on_after_backward(self, trainer, pl_module):
        if self.grads is None:
            self.grads = {n: p.grad.detach().clone() for n, p in pl_module.named_parameters() if p.grad is not None}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.losses.append(float(outputs["loss"]))

    def on_train_end(self, trainer, pl_module):
        if trainer.global_rank == 0:
            torch.save({"losses": self.losses, "grads": self.grads}, self.path)


def _fit(module, devices, batch_size, tmp_path):
    record = tmp_path / f"record{devices}.pt"
    trainer = pl.Trainer(accelerator="cpu", devices=devices, strategy="ddp_spawn" if devices > 1 else "auto",
                         max_steps=3, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, default_root_dir=tmp_path, use_distributed_sampler=False,
                         callbacks=[Recorder(record)])
    trainer.fit(module, datamodule=OrderedData(batch_size))
    return torch.load(record, weights_only=True)


def test_two_process_ddp_equals_one_process(tmp_path, text_dir):
    single = _module(text_dir)
    one = _fit(single, devices=1, batch_size=8, tmp_path=tmp_path)
    ddp = _module(text_dir)
    two = _fit(ddp, devices=2, batch_size=4, tmp_path=tmp_path)
    # Rank 0 takes samples 0,2,4,6 and rank 1 samples 1,3,5,7: the single process's global
    # batch 0..7. The contrastive loss spans all ranks, so loss and gradients match exactly.
    assert len(one["losses"]) == len(two["losses"]) == 3
    assert two["losses"][0] == pytest.approx(one["losses"][0], rel=1e-6)
    assert one["grads"].keys() == two["grads"].keys()
    # Absolute tolerance on the scale of the largest gradient: some gradients are zero in
    # exact arithmetic (key biases under softmax) and hold only round-off.
    scale = max(float(g.abs().max()) for g in one["grads"].values())
    for name, grad in one["grads"].items():
        torch.testing.assert_close(two["grads"][name], grad, atol=1e-6 * scale, rtol=1e-4,
                                   msg=lambda m, name=name: f"{name}: {m}")
    # Later steps agree to float round-off amplified by Adam's normalisation.
    assert two["losses"] == pytest.approx(one["losses"], rel=1e-3)
    for (name, a), b in zip(single.state_dict().items(), ddp.state_dict().values()):
        torch.testing.assert_close(b, a, atol=5e-3, rtol=0, msg=name)
    assert one["losses"][0] != pytest.approx(one["losses"][1], rel=1e-3)  # it trained
