"""poptorch.Options built from the IPU configs, and the stage map's checks and annotations."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from lightning_frozen.ipu import (
    IPUOptions,
    IPUStrategy,
    StageMapError,
    build_options,
    pipeline,
)
from lightning_frozen.ipu import emulator as poptorch
from lightning_frozen.ipu.options import options_summary
from lightning_frozen.models import bundled_text_model_path
from lightning_frozen.module import FrozenModule

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
SEED_AMP = [0.6, 0.3, 0.3, 0.5, 0.1, 0.19, 0.2, 0.18]


def skeleton(text_layers: int = 6, video_blocks: int = 12) -> FrozenModule:
    """FrozenModule with the seed's layer counts but tiny widths (the stage map checks counts only)."""
    return FrozenModule(
        video={"arch": None, "img_size": 32, "patch_size": 16, "embed_dim": 16, "depth": video_blocks,
               "num_heads": 2, "num_frames": 2},
        text={"name_or_path": str(bundled_text_model_path()), "pretrained": False, "config_overrides": {
            "num_hidden_layers": text_layers, "hidden_size": 16, "num_attention_heads": 2,
            "intermediate_size": 32}},
        projection_dim=8,
    )


def strategy_from(config: str) -> tuple[IPUStrategy, dict]:
    cfg = yaml.safe_load((CONFIGS / config).read_text())
    args = dict(cfg["trainer"]["strategy"]["init_args"])
    args["emulator"] = True
    return IPUStrategy(**args), cfg


@pytest.mark.parametrize("config", ["webvid2m_8ipu_1f.yaml", "webvid2m_8ipu_2f.yaml", "webvid2m_8ipu_4f.yaml",
                                    "msrvtt_8ipu_4f.yaml"])
def test_options_from_8ipu_configs_hold_the_seed_settings(config):
    strategy, cfg = strategy_from(config)
    assert cfg["trainer"]["devices"] == 8 and cfg["trainer"]["accelerator"] == "ipu"
    accumulation = cfg["trainer"]["accumulate_grad_batches"]
    train = build_options(poptorch, strategy.training_opts, training=True, gradient_accumulation=accumulation)
    got = options_summary(train)
    assert got == {
        "device_iterations": 8, "replication_factor": 1, "gradient_accumulation": 15,
        "output_mode": poptorch.OutputMode.Final,
        "available_memory_proportion": dict(enumerate(SEED_AMP)),
        "cache_path": "runs/ipu_cache", "partials_type": "half", "stochastic_rounding": True,
        "floating_point_exceptions": False, "optimizer_on_chip": False, "replicated_tensor_sharding": False,
        "random_seed": 0, "auto_round_num_ipus": False,
    }
    assert isinstance(train._execution_strategy, poptorch.PipelinedExecution)
    infer = options_summary(build_options(poptorch, strategy.inference_opts, training=False))
    assert infer["gradient_accumulation"] == 1 and infer["output_mode"] == poptorch.OutputMode.All
    assert infer["stochastic_rounding"] is False
    # precision "16.32": FP16 weights, FP32 accumulators, loss scaling 1024
    spec = strategy.precision_plugin.spec
    assert (spec.weights, spec.accum_type, strategy.loss_scaling) == (torch.float16, torch.float32, 1024)
    # the stage map fits the seed's model (6 text layers, 12 blocks) on 8 IPUs, 8 stages, 15 >= 2*8-1
    stage_map = strategy.stage_map
    placed = {e.name: e.ipu for e in pipeline.validate(stage_map, skeleton(), num_ipus=8, replication_factor=1)}
    assert pipeline.num_stages(stage_map) == 8 and accumulation >= 2 * pipeline.num_stages(stage_map) - 1
    assert placed["model.text_model.embeddings"] == 0 and placed["model.video_model.patch_embed"] == 3
    assert {placed[f"model.text_layers[{i}]"] for i in range(6)} == {1, 2}
    assert {placed[f"model.video_model.blocks[{i}]"] for i in range(12)} == {4, 5, 6, 7}
    assert placed["model.txt_proj"] == 2 and placed["model.vid_proj"] == 7
    assert strategy.recompute is True


def test_demo_ipu_config_builds_two_replicas_two_stages():
    strategy, cfg = strategy_from("demo_ipu.yaml")
    o = build_options(poptorch, strategy.training_opts, training=True,
                      gradient_accumulation=cfg["trainer"]["accumulate_grad_batches"])
    assert (o.replication_factor, o.device_iterations, o.Training.gradient_accumulation) == (2, 2, 2)
    assert pipeline.num_stages(strategy.stage_map) == 2
    assert cfg["trainer"]["devices"] == pipeline.ipus_per_replica(strategy.stage_map) * o.replication_factor
    blocks = pipeline.apply(strategy.stage_map, skeleton(text_layers=6, video_blocks=4), poptorch)
    assert blocks == [("model.text_model.embeddings", 0), ("model.video_model.patch_embed", 1)]


def test_gradient_accumulation_defaults_to_trainer_setting():
    from lightning_frozen.ipu.options import resolve_accumulation

    assert resolve_accumulation(IPUOptions(), 15) == 15
    assert resolve_accumulation(IPUOptions(gradient_accumulation=4), 15) == 4


def test_options_reject_bad_combinations():
    with pytest.raises(ValueError, match="replication_factor >= 2"):
        build_options(poptorch, IPUOptions(replicated_tensor_sharding=True), training=True)
    with pytest.raises(ValueError, match="inference_opts.gradient_accumulation is 2.*cannot accumulate"):
        build_options(poptorch, IPUOptions(gradient_accumulation=2), training=False)
    with pytest.raises(AssertionError, match="output_return_period"):
        build_options(poptorch, IPUOptions(output_mode="every_n"), training=True)
    o = build_options(poptorch, IPUOptions(replication_factor=2, replicated_tensor_sharding=True,
                                           optimizer_state_offchip=True, floating_point_exceptions=True,
                                           auto_round_num_ipus=True), training=True)
    s = options_summary(o)
    assert s["replicated_tensor_sharding"] and not s["optimizer_on_chip"] and s["floating_point_exceptions"]
    assert s["auto_round_num_ipus"]


def test_strategy_without_poptorch_fails_at_construction():
    pytest.importorskip("lightning_frozen")
    try:
        import poptorch as _  # noqa: F401
        pytest.skip("real poptorch is installed")
    except ImportError:
        pass
    with pytest.raises(ModuleNotFoundError, match="Poplar SDK.*emulator: true"):
        IPUStrategy()


# ------------------------------------------------------------------ stage map checks
TEXT, VIDEO = "model.text_layers", "model.video_model.blocks"
GOOD = {"model.text_model.embeddings": 0, TEXT: [1, 1, 1, 2, 2, 2], "model.txt_proj": 2,
        "model.video_model.patch_embed": 3, VIDEO: [4, 4, 4, 5, 5, 5, 6, 6, 6, 7, 7, 7], "model.vid_proj": 7}


def mutated(changes: dict) -> dict:
    return {**GOOD, **changes}


@pytest.fixture(scope="module")
def model() -> FrozenModule:
    return skeleton()


@pytest.mark.parametrize("stage_map,kwargs,pattern", [
    (mutated({TEXT: [1, 1, 2, 2, 2]}), {},
     r"model\.text_layers has 5 entries but the model has 6 BertLayer modules .*model\.text_layers\[5\].*Fix"),
    (mutated({VIDEO: [4] * 13}), {},
     r"blocks has 13 entries .* 12 SpaceTimeBlock modules.*model\.video_model\.blocks\[12\].*Fix"),
    (mutated({VIDEO: [4, 4, 4, 5, 5, 5, 6, 6, 6, 7, 7, 9]}), {"num_ipus": 8},
     r"model\.video_model\.blocks\[11\] = 9 is out of range.*fix"),
    (mutated({TEXT: [1, 1, 2, 1, 2, 2]}), {},
     r"model\.text_layers\[3\] = 1 comes after model\.text_layers\[2\] = 2.*fix"),
    (mutated({"model.video_model.patch_embed": 1}), {}, r"model\.video_model\.patch_embed = 1 comes after "
                                                        r"model\.txt_proj = 2.*fix"),
    (mutated({TEXT: [1, 1, 1, 2, 2, -1]}), {}, r"model\.text_layers\[5\] = -1 is not an IPU id.*fix"),
    (mutated({"model.txt_proj": 3, "model.video_model.patch_embed": 4, VIDEO: [4, 4, 4, 5, 5, 5, 6, 6, 6, 8, 8, 8],
              "model.vid_proj": 8}), {}, r"IPU\(s\) \[7\] get no module.*fix"),
    (GOOD, {"num_ipus": 16, "replication_factor": 1},
     r"8 IPU\(s\) per replica x replication factor 1 = 8 IPUs, but trainer.devices is 16; fix: set trainer.devices: 8"),
    (GOOD, {"num_ipus": 8, "replication_factor": 2},
     r"model\.video_model\.blocks\[0\] = 4 is out of range.*4 IPU\(s\).*trainer.devices: 16"),
    (GOOD, {"num_ipus": 9, "replication_factor": 2}, r"cannot hold 2 replicas; fix"),
    (mutated({"model.video_model.block": 4}), {},
     r"'model\.video_model\.block' is not a module of FrozenModule .*did you mean 'model\.video_model\.blocks'"),
    (mutated({"model.text_layers.0": 1}), {},
     r"model\.text_layers\.0 is the same module as model\.text_layers\[0\]; fix"),
    (mutated({"model.vid_proj": [7, 7]}), {}, r"model\.vid_proj has 2 entries but the model has 1 Linear modules.*Fix"),
    (mutated({"model.video_model.patch_embed": [3]}), {}, r"patch_embed is a VideoPatchEmbed, not a ModuleList.*fix"),
])
def test_every_stage_map_mistake_names_path_index_and_fix(model, stage_map, kwargs, pattern):
    with pytest.raises(StageMapError, match=pattern):
        pipeline.validate(stage_map, model, **kwargs)


def test_good_map_with_replication_validates(model):
    assert len(pipeline.validate(GOOD, model, num_ipus=16, replication_factor=2)) == 1 + 6 + 1 + 1 + 12 + 1
    with pytest.raises(StageMapError, match="out of range.*set trainer.devices: 16"):
        pipeline.validate(GOOD, model, num_ipus=8, replication_factor=2)


def test_apply_places_blocks_and_checkpoints_in_execution_order():
    model = skeleton(text_layers=2, video_blocks=4)
    stage_map = {"model.text_model.embeddings": 0, TEXT: [0, 1], "model.video_model.patch_embed": 2,
                 VIDEO: [2, 2, 3, 3]}
    blocks = pipeline.apply(stage_map, model, poptorch)
    assert blocks == [("model.text_model.embeddings", 0), ("model.text_layers[1]", 1),
                      ("model.video_model.patch_embed", 2), ("model.video_model.blocks[2]", 3)]

    class Step(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.module = model

        def forward(self, video, ids, mask):
            return self.module(video, ids, mask)

    o = poptorch.Options()
    executor = poptorch.inferenceModel(Step(), o)
    video = torch.randn(2, 2, 3, 32, 32)
    ids = torch.randint(1, 100, (2, 6))
    text_emb, video_emb = executor(video, ids, torch.ones_like(ids))
    assert executor.last_trace.blocks == blocks
    # one checkpoint at the end of every stage's last named module: text_layers[0] (IPU 0),
    # text_layers[1] (IPU 1), blocks[1] (IPU 2), blocks[3] (IPU 3)
    assert executor.last_trace.checkpoints == [0, 1, 2, 3]
    assert executor.num_ipus_per_replica == 4
    model.eval()  # inference executors run the model in eval mode (no dropout)
    expected_text, expected_video = model(video, ids, torch.ones_like(ids))
    torch.testing.assert_close(text_emb, expected_text.detach())
    torch.testing.assert_close(video_emb, expected_video.detach())
    # applying again replaces the hooks instead of stacking them
    pipeline.apply(stage_map, model, poptorch)
    executor.destroy()
    executor(video, ids, torch.ones_like(ids))
    assert executor.last_trace.checkpoints == [0, 1, 2, 3]
