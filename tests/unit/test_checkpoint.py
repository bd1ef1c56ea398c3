"""Weight loading: published-style files, Lightning-style files, refusal of unsafe pickles."""
import os
import pickle
import sys
import types

import pytest
import torch
from helpers import TINY_VIDEO

from lightning_frozen.models import (
    PRESETS,
    FrozenInTime,
    UnsafePickleError,
    create_model,
    load_checkpoint,
    safe_torch_load,
)
from lightning_frozen.models.checkpoint import adapt_temporal_embed
from lightning_frozen.safe_load import ForeignObject


def _fake_original_config_module():
    """A stand-in for the original code base's `parse_config` module, gone before loading."""
    module = types.ModuleType("parse_config")

    class ConfigParser:
        def __init__(self):
            self.config = {"arch": {"type": "FrozenInTime"}, "n_gpu": 8}

    ConfigParser.__module__ = "parse_config"
    ConfigParser.__qualname__ = "ConfigParser"
    module.ConfigParser = ConfigParser
    return module


def _inputs(frames=4, batch=2):
    torch.manual_seed(5)
    video = torch.randn(batch, frames, 3, 32, 32)
    ids = torch.randint(1000, 2000, (batch, 6))
    return video, ids, torch.ones_like(ids)


def _save_published_style(model, path):
    module = _fake_original_config_module()
    sys.modules["parse_config"] = module
    try:
        torch.save({
            "arch": "FrozenInTime",
            "epoch": 3,
            "state_dict": {f"module.{k}": v for k, v in model.state_dict().items()},
            "config": module.ConfigParser(),
        }, path)
    finally:
        del sys.modules["parse_config"]


def test_published_style_checkpoint_round_trips(tmp_path, tiny_text):
    torch.manual_seed(0)
    source = FrozenInTime(video=dict(TINY_VIDEO), text=tiny_text, projection_dim=16).eval()
    path = tmp_path / "cc-webvid2m-4f_stformer_b_16_224.pth.tar"
    _save_published_style(source, path)
    raw = safe_torch_load(path)
    assert isinstance(raw["config"], ForeignObject)
    assert raw["config"]._foreign_state["config"]["n_gpu"] == 8
    torch.manual_seed(1)
    target = FrozenInTime(video=dict(TINY_VIDEO), text=tiny_text, projection_dim=16).eval()
    report = load_checkpoint(target, path)
    assert report.missing == [] and report.unexpected == []
    with torch.no_grad():
        for a, b in zip(source(*_inputs()), target(*_inputs())):
            torch.testing.assert_close(a, b, atol=0, rtol=0)


def test_lightning_style_checkpoint_with_model_prefix(tmp_path, tiny_model, tiny_text):
    path = tmp_path / "last.ckpt"
    torch.save({"state_dict": {f"model.{k}": v for k, v in tiny_model.state_dict().items()}, "global_step": 7}, path)
    torch.manual_seed(3)
    target = FrozenInTime(video=dict(TINY_VIDEO), text=tiny_text, projection_dim=16)
    load_checkpoint(target, path)
    for (name, a), b in zip(tiny_model.state_dict().items(), target.state_dict().values()):
        assert torch.equal(a, b), name


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _EvalPayload:
    def __reduce__(self):
        return (eval, ("__import__('os').getcwd()",))


@pytest.mark.parametrize("payload_kind", ["os.system", "eval"])
def test_malicious_pickle_is_refused_and_never_runs(tmp_path, tiny_model, payload_kind):
    marker = tmp_path / "pwned"
    payload = _Payload(marker) if payload_kind == "os.system" else _EvalPayload()
    path = tmp_path / "evil.pth.tar"
    torch.save({"state_dict": tiny_model.state_dict(), "config": payload}, path)
    with pytest.raises(UnsafePickleError, match="refusing") as info:
        load_checkpoint(tiny_model, path)
    assert "evil.pth.tar" in str(info.value)
    assert ("system" in str(info.value)) or ("eval" in str(info.value))
    assert not marker.exists()


def test_plain_pickle_file_with_payload_is_refused(tmp_path, tiny_model):
    """Legacy (non-zip) torch files go through the same unpickler."""
    marker = tmp_path / "pwned2"
    path = tmp_path / "legacy.pt"
    torch.save({"state_dict": tiny_model.state_dict(), "x": _Payload(marker)}, path,
               _use_new_zipfile_serialization=False)
    with pytest.raises(UnsafePickleError):
        load_checkpoint(tiny_model, path)
    assert not marker.exists()


def test_temporal_inflation_one_to_four_frames(tmp_path, tiny_text):
    torch.manual_seed(0)
    one = FrozenInTime(video=dict(TINY_VIDEO, num_frames=1), text=tiny_text, projection_dim=16).eval()
    torch.nn.init.normal_(one.video_model.temporal_embed)
    path = tmp_path / "one_frame.pth"
    _save_published_style(one, path)
    four = FrozenInTime(video=dict(TINY_VIDEO, num_frames=4), text=tiny_text, projection_dim=16).eval()
    report = load_checkpoint(four, path, temporal_fix="zeros")
    assert report.adapted and "(1, 1, 32) -> (1, 4, 32)" in report.adapted[0]
    te = four.video_model.temporal_embed.detach()
    assert torch.equal(te[:, :1], one.video_model.temporal_embed.detach())
    assert torch.count_nonzero(te[:, 1:]) == 0
    # a one-frame clip gives the same embedding in both models
    video, ids, mask = _inputs(frames=1)
    with torch.no_grad():
        torch.testing.assert_close(four.encode_video(video), one.encode_video(video), atol=1e-6, rtol=1e-6)


def test_temporal_interp_modes_and_cut():
    loaded = torch.tensor([[[0.0, 10.0], [3.0, 13.0]]])  # (1, 2, 2)
    linear = adapt_temporal_embed(loaded, 4, "bilinear")
    torch.testing.assert_close(linear[0, :, 0], torch.tensor([0.0, 1.0, 2.0, 3.0]))
    nearest = adapt_temporal_embed(loaded, 4, "interp")
    torch.testing.assert_close(nearest[0, :, 1], torch.tensor([10.0, 10.0, 13.0, 13.0]))
    assert torch.equal(adapt_temporal_embed(loaded, 1), loaded[:, :1])
    with pytest.raises(ValueError, match="temporal_fix"):
        adapt_temporal_embed(loaded, 4, "cubic")


def test_other_shape_mismatch_is_refused_with_keys_named(tmp_path, tiny_model, tiny_text):
    path = tmp_path / "other.pth"
    torch.save({"state_dict": tiny_model.state_dict()}, path)
    wider = FrozenInTime(video=dict(TINY_VIDEO), text=tiny_text, projection_dim=24)
    with pytest.raises(ValueError, match=r"vid_proj.0.weight: file \(16, 32\) vs model \(24, 32\)"):
        load_checkpoint(wider, path)


def test_missing_keys_are_reported(tmp_path, tiny_model):
    state = {k: v for k, v in tiny_model.state_dict().items() if not k.startswith("txt_proj")}
    path = tmp_path / "partial.pth"
    torch.save(state, path)
    with pytest.raises(ValueError, match="txt_proj.1.weight"):
        load_checkpoint(tiny_model, path)
    report = load_checkpoint(tiny_model, path, strict=False)
    assert "txt_proj.1.weight" in report.missing


def test_missing_file_error_names_it(tmp_path, tiny_model):
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        load_checkpoint(tiny_model, tmp_path / "nope.pth")


def test_foreign_class_protocol0_pickle_is_inert(tmp_path):
    module = _fake_original_config_module()
    sys.modules["parse_config"] = module
    try:
        blob = pickle.dumps({"cfg": module.ConfigParser()}, protocol=0)
    finally:
        del sys.modules["parse_config"]
    from lightning_frozen.safe_load import restricted_pickle

    obj = restricted_pickle.loads(blob)
    assert isinstance(obj["cfg"], ForeignObject)


def test_create_model_builds_presets_and_loads_published_weights(tmp_path, tiny_text):
    """The factory: a preset gives the published geometry; weights go through the one loader."""
    model = create_model("stformer_b_16_224", pretrained=False)
    assert PRESETS["stformer_b_16_224"]["projection_dim"] == 256
    assert model.video_model.patch_embed.proj.weight.shape == (768, 3, 16, 16)
    assert len(model.video_model.blocks) == 12 and model.video_model.num_frames == 4
    assert type(model.text_model).__name__ == "DistilBertModel" and model.vid_proj[0].out_features == 256
    with pytest.raises(ValueError, match="unknown model preset 'stformer_b_99'"):
        create_model("stformer_b_99")

    torch.manual_seed(0)
    config = {"video": dict(TINY_VIDEO), "text": tiny_text, "projection_dim": 16}
    source = create_model(config).eval()
    path = tmp_path / "published.pth.tar"
    _save_published_style(source, path)
    loaded = create_model(config, weights=path).eval()
    video, ids, mask = _inputs()
    with torch.no_grad():
        for got, want in zip(loaded(video, ids, mask), source(video, ids, mask)):
            torch.testing.assert_close(got, want, rtol=0, atol=0)
    with pytest.raises(ValueError, match="does not record its model config"):
        create_model(weights=path)


def test_create_model_reads_the_config_a_lightning_checkpoint_records(tmp_path, tiny_text):
    torch.manual_seed(0)
    config = {"video": dict(TINY_VIDEO), "text": tiny_text, "projection_dim": 16}
    source = create_model(config).eval()
    path = tmp_path / "run.ckpt"
    torch.save({"state_dict": {f"model.{k}": v for k, v in source.state_dict().items()},
                "hyper_parameters": {**config, "lr": 1e-4, "init_from": None}}, path)
    loaded = create_model(weights=path).eval()
    assert loaded.video_config.depth == TINY_VIDEO["depth"] and loaded.vid_proj[0].out_features == 16
    video, ids, mask = _inputs()
    with torch.no_grad():
        torch.testing.assert_close(loaded.encode_video(video), source.encode_video(video), rtol=0, atol=0)


