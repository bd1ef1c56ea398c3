"""The pipeline planner: FLOPs against torch's FLOP counter, memory accounting, balancing, CLI."""
from __future__ import annotations

import json

import pytest
import torch
import yaml
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from lightning_frozen.ipu import StageMapError, pipeline, planner
from lightning_frozen.models import FrozenInTime, bundled_text_model_path
from lightning_frozen.similarity import sim_matrix

B, F, L = 3, 2, 12
VIDEO = {"arch": None, "img_size": 64, "patch_size": 16, "embed_dim": 48, "depth": 4, "num_heads": 3, "num_frames": F}
TEXT = {"name_or_path": str(bundled_text_model_path()), "pretrained": False, "config_overrides": {
    "num_hidden_layers": 3, "hidden_size": 48, "num_attention_heads": 3, "intermediate_size": 96}}
CONFIG = {
    "trainer": {"accumulate_grad_batches": 5, "devices": 3, "strategy": {"init_args": {
        "precision": "32", "stage_map": {"model.text_model": 0, "model.video_model.patch_embed": 1,
                                         "model.video_model.blocks": [1, 1, 2, 2]},
        "training_opts": {"replication_factor": 1}}}},
    "model": {"video": VIDEO, "text": TEXT, "projection_dim": 24},
    "data": {"train_batch_sizes": B, "max_length": L},
}


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    model = FrozenInTime(VIDEO, TEXT, projection_dim=24)
    geometry = planner._geometry_from_config(CONFIG, model)
    items = planner.build_items(model, geometry, act_bytes=4)
    inputs = (torch.randn(B, F, 3, 64, 64), torch.randint(1, 1000, (B, L)), torch.ones(B, L, dtype=torch.long))
    return model, geometry, items, inputs


def torch_flops(model, inputs, backward=False):
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        text, video = model(*inputs)
        sims = sim_matrix(text, video)
        if backward:
            sims.logsumexp(1).sum().backward()
    return counter.get_total_flops(), counter.get_flop_counts()


def test_forward_flops_agree_with_torch_flop_counter(setup):
    model, geometry, items, inputs = setup
    total, per_module = torch_flops(model, inputs)
    ours = sum(it.forward_flops for it in items)
    assert abs(ours - total) / total < 0.05, (ours, total)

    def counted(name):
        return sum(per_module.get(f"FrozenInTime.{name}", {}).values())

    # per group, where torch attributes the work to the same module
    block = counted("video_model.blocks.0")
    assert abs(planner.video_block_flops(geometry) - block) / block < 0.05
    layer = counted("text_model.encoder.layer.0")
    assert abs(planner.text_layer_flops(geometry) - layer) / layer < 0.05
    patch = counted("video_model.patch_embed")
    assert planner.forward_flops(geometry)["vid_patch_embed"] == patch


def test_training_flops_agree_with_torch_flop_counter(setup):
    model, _, items, inputs = setup
    total, _ = torch_flops(model, inputs, backward=True)
    stage_map = CONFIG["trainer"]["strategy"]["init_args"]["stage_map"]
    assignment = planner.assignment_from_map(items, stage_map, planner.lightning_root(model))
    # the whole text tower (and the text projection after it) on IPU 0, the patch embedding and two blocks on 1
    assert assignment == [0] * (1 + 3 + 1) + [1] * 3 + [2] * 3
    no_recompute = planner.plan(items, assignment, recompute=False)
    ours = sum(s.training_flops for s in no_recompute.stages)
    assert abs(ours - total) / total < 0.05, (ours, total)
    with_recompute = planner.plan(items, assignment, recompute=True)
    forward = sum(it.forward_flops for it in items)
    assert sum(s.training_flops for s in with_recompute.stages) == ours + forward  # one recomputed forward


def test_memory_accounting_follows_precision_and_optimizer_location(setup):
    model, _, items, _ = setup
    assignment = [0] * len(items)
    params = sum(p.numel() for p in model.parameters())
    fp32 = planner.plan(items, assignment, precision="32").stages[0]
    assert fp32.params == params
    assert (fp32.weight_bytes, fp32.grad_bytes, fp32.optimizer_bytes) == (4 * params, 4 * params, 8 * params)
    mixed = planner.plan(items, assignment, precision="16.32").stages[0]
    assert (mixed.weight_bytes, mixed.grad_bytes, mixed.optimizer_bytes) == (2 * params, 4 * params, 8 * params)
    half = planner.plan(items, assignment, precision="16.16", offchip=True).stages[0]
    assert (half.weight_bytes, half.grad_bytes, half.optimizer_bytes) == (2 * params, 2 * params, 0)
    sharded = planner.plan(items, assignment, precision="32", sharding=4).stages[0]
    assert sharded.optimizer_bytes == 8 * params // 4


def test_balance_minimises_the_slowest_stage_within_memory(setup, monkeypatch):
    model, _, items, _ = setup
    assignment = planner.balance(items, 3)
    proposed = planner.map_from_assignment(items, assignment)
    root = planner.lightning_root(model)
    pipeline.validate(proposed, root, num_ipus=3)
    assert planner.assignment_from_map(items, proposed, root) == assignment
    costs = [it.training_flops(True) for it in items]

    def slowest(assign):
        return max(sum(c for c, a in zip(costs, assign) if a == k) for k in set(assign))

    # exhaustive check over all contiguous 3-way splits
    n = len(items)
    best = min(slowest([0] * i + [1] * (j - i) + [2] * (n - j)) for i in range(1, n - 1) for j in range(i + 1, n))
    assert slowest(assignment) == best
    # with too little memory per IPU nothing fits
    monkeypatch.setattr(planner, "IPU_MEMORY_BYTES", 1000)
    assert planner.balance(items, 3) is None


def test_cli_prints_every_ipu_and_writes_json(tmp_path, capsys):
    path = tmp_path / "plan.yaml"
    path.write_text(yaml.safe_dump(CONFIG, sort_keys=False))  # the stage map lists modules in execution order
    assert planner.main(["--config", str(path), "--balance", "--json", str(tmp_path / "plan.json")]) == 0
    out = capsys.readouterr().out
    for ipu in range(3):
        assert f"\n  {ipu}  " in out
    assert "estimated efficiency" in out and "balanced stage map" in out
    data = json.loads((tmp_path / "plan.json").read_text())
    assert [s["ipu"] for s in data["current"]["stages"]] == [0, 1, 2]
    assert data["current"]["fill"] == pytest.approx(5 / (5 + 4))


def test_map_finer_than_a_layer_is_named(setup):
    model, _, items, _ = setup
    with pytest.raises(StageMapError, match=r"model\.video_model\.blocks\.1\.attn holds none of the planned units"):
        planner.assignment_from_map(items, {"model.text_model": 0, "model.video_model.blocks.1.attn": 1},
                                    planner.lightning_root(model))
