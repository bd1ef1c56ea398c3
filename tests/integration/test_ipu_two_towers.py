"""IPUStrategy drives any LightningModule: two linear towers with a contrastive loss, against plain CPU runs."""
from __future__ import annotations

import copy

import pytorch_lightning as pl
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

from lightning_frozen.ipu import IPUOptions, IPUStrategy
from lightning_frozen.ipu import emulator as emu

MICRO, REPLICAS, ACCUMULATION, STEPS = 2, 2, 3, 3


class TwoTowers(pl.LightningModule):
    """Queries and keys through their own tower; InfoNCE within the micro-batch; a decaying learning rate."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.query_tower = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 8))
        self.key_tower = nn.Sequential(nn.Linear(5, 16), nn.Tanh(), nn.Linear(16, 8))

    def forward(self, queries: torch.Tensor, keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return F.normalize(self.query_tower(queries), dim=-1), F.normalize(self.key_tower(keys), dim=-1)

    def training_loss(self, batch: list[torch.Tensor]) -> torch.Tensor:
        queries, keys = self(*batch)
        return F.cross_entropy(queries @ keys.T / 0.1, torch.arange(len(queries)))

    def training_step(self, batch: list[torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self.training_loss(batch)

    def predict_step(self, batch: list[torch.Tensor], batch_idx: int) -> torch.Tensor:
        queries, keys = self(*batch)
        return (queries * keys).sum(-1)  # host side: the similarity of each pair

    def configure_optimizers(self) -> dict:
        optimizer = torch.optim.AdamW(self.parameters(), lr=0.05, weight_decay=0.01)
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1 / (1 + step))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}


def pairs(n: int, seed: int) -> DataLoader:
    g = torch.Generator().manual_seed(seed)
    queries = torch.randn(n, 6, generator=g)
    keys = queries[:, :5] + 0.3 * torch.randn(n, 5, generator=g)
    return DataLoader(TensorDataset(queries, keys), batch_size=MICRO, shuffle=False)


def trainer(**kwargs) -> pl.Trainer:
    return pl.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False, **kwargs)


def test_two_towers_on_two_stages_and_two_replicas_match_a_cpu_run():
    reference = TwoTowers()
    emulated = copy.deepcopy(reference)
    start = {k: v.clone() for k, v in reference.state_dict().items()}
    train = pairs(MICRO * REPLICAS * ACCUMULATION * STEPS, seed=1)
    trainer(accelerator="cpu", max_steps=STEPS, accumulate_grad_batches=REPLICAS * ACCUMULATION).fit(reference, train)

    strategy = IPUStrategy(stage_map={"query_tower": 0, "key_tower": 1}, emulator=True,
                           training_opts=IPUOptions(replication_factor=REPLICAS, execution="pipelined"))
    emu.set_available_ipus(2 * REPLICAS)  # one executor attached at a time
    try:
        run = trainer(accelerator="ipu", devices=2 * REPLICAS, strategy=strategy, max_steps=STEPS,
                      accumulate_grad_batches=ACCUMULATION)
        run.fit(emulated, train)
        predicted = torch.cat(run.predict(emulated, pairs(7, seed=2)))  # 7: the last combined batch is padded
    finally:
        emu.set_available_ipus(None)

    assert run.global_step == STEPS and strategy.gradient_accumulation == ACCUMULATION
    assert run.optimizers[0].param_groups[0]["lr"] == 0.05 / (1 + STEPS)  # the schedule ran per host step
    for key, value in reference.state_dict().items():
        assert not torch.equal(value, start[key]), key
        torch.testing.assert_close(emulated.state_dict()[key], value, rtol=0, atol=1e-5,
                                   msg=lambda m, key=key: f"{key}: {m}")
    expected = torch.cat(trainer(accelerator="cpu").predict(reference, pairs(7, seed=2)))
    assert predicted.shape == (7,)
    torch.testing.assert_close(predicted, expected, rtol=0, atol=1e-5)


def test_stage_map_paths_become_stage_boundaries_with_checkpoints():
    module = TwoTowers()
    strategy = IPUStrategy(stage_map={"query_tower": 0, "key_tower": 1}, emulator=True,
                           training_opts=IPUOptions(replication_factor=REPLICAS, execution="pipelined"))
    compiled = []
    original = emu.PoplarExecutor._compile

    def record(self, args, leaves):
        original(self, args, leaves)
        compiled.append((self.training, self.last_trace.blocks, self.last_trace.checkpoints))

    emu.PoplarExecutor._compile = record
    try:
        trainer(accelerator="ipu", devices=2 * REPLICAS, strategy=strategy, max_steps=1,
                accumulate_grad_batches=ACCUMULATION).fit(module, pairs(MICRO * REPLICAS * ACCUMULATION, seed=1))
    finally:
        emu.PoplarExecutor._compile = original
    # each tower begins its IPU's stage, and each stage's output is a recomputation checkpoint
    assert compiled == [(True, [("query_tower", 0), ("key_tower", 1)], [0, 1])]
