"""Computation reuse across frames, token merging and the frame cache, against the exact towers."""
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from lightning_frozen.models import FrozenInTime, create_model, load_checkpoint
from lightning_frozen.models.reuse import merge_tokens
from lightning_frozen.module import FrozenModule

VIDEO = dict(tower="clip", arch=None, img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, num_frames=6,
             temporal_layers=1)


def model(tiny_text, temporal="mean", **reuse):
    torch.manual_seed(0)
    text = dict(tiny_text, config_overrides={"num_hidden_layers": 1})
    return FrozenInTime(dict(VIDEO, temporal=temporal, reuse=reuse), text, projection_dim=16).eval()


def flops(fn, *args):
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        out = fn(*args)
    return counter.get_total_flops(), out


def moving_clip(frames=6, batch=2):
    """A static random background with one 8-pixel square (a patch) that moves a patch per frame."""
    torch.manual_seed(3)
    clip = torch.randn(batch, 1, 3, 32, 32).repeat(1, frames, 1, 1, 1)
    for t in range(frames):
        clip[:, t, :, 8:16, 8 * (t % 4):8 * (t % 4) + 8] = 2.0
    return clip


@pytest.mark.parametrize("temporal", ["mean", "transformer", "space_time"])
def test_threshold_zero_computes_everything_and_equals_the_exact_path(tiny_text, temporal):
    reusing = model(tiny_text, temporal, mode="diff", threshold=0.0)
    clip = moving_clip()
    with torch.no_grad():
        exact = reusing.encode_video(clip, reuse=False)
        got = reusing.encode_video(clip)
    torch.testing.assert_close(got, exact, atol=1e-6, rtol=1e-5)
    assert reusing.reuse.total > 0 and reusing.reuse.rate() == 0.0


@pytest.mark.parametrize("temporal, most, rate", [("mean", 0.55, 5 / 6 * 16 / 17), ("space_time", 0.65, 80 / 97)])
def test_identical_frames_reuse_every_later_patch_token_and_skip_its_flops(tiny_text, temporal, most, rate):
    reusing = model(tiny_text, temporal, mode="diff", threshold=1e-4)
    clip = torch.randn(2, 1, 3, 32, 32).repeat(1, 6, 1, 1, 1)
    exact_flops, exact = flops(lambda v: reusing.encode_video(v, reuse=False), clip)
    reuse_flops, got = flops(reusing.encode_video, clip)
    torch.testing.assert_close(got, exact, atol=1e-5, rtol=1e-5)
    # Frames 1-5 repeat frame 0 (the space-time tower's temporal embedding starts at zero): only the
    # class tokens (one a frame, or one a clip), attention, its projection and the patch embedding
    # remain for them (and the space-time tower's last block, computed exactly: half of this tower).
    assert reusing.reuse.rate() == pytest.approx(rate)
    assert reuse_flops < most * exact_flops


def test_a_temporal_embedding_makes_space_time_tokens_differ_between_frames(tiny_text):
    reusing = model(tiny_text, "space_time", mode="diff", threshold=1e-4)
    torch.nn.init.normal_(reusing.video_model.temporal_embed, std=0.5)
    with torch.no_grad():
        reusing.encode_video(torch.randn(2, 1, 3, 32, 32).repeat(1, 6, 1, 1, 1))
    assert reusing.reuse.rate() == 0.0


def test_keyframes_are_computed_in_full(tiny_text):
    reusing = model(tiny_text, mode="diff", threshold=1e-4, keyframe_interval=3)
    with torch.no_grad():
        reusing.encode_video(torch.randn(1, 1, 3, 32, 32).repeat(1, 6, 1, 1, 1))
    assert reusing.reuse.rate() == pytest.approx(4 / 6 * 16 / 17)  # frames 0 and 3 and the class tokens computed


def test_a_moving_patch_is_recomputed_where_it_moved(tiny_text):
    """Block 0's qkv: in each later frame the square's old and new patches change, the other 14 do not
    (the class token is always computed)."""
    reusing = model(tiny_text, mode="diff", threshold=1e-4)
    calls = []
    original = reusing.reuse.tokens

    def spy(site, fn, x, importance=None, first_always=False):
        out = original(site, fn, x, importance, first_always)
        calls.append((site, reusing.reuse.computed))
        return out

    reusing.reuse.tokens = spy
    with torch.no_grad():
        reusing.encode_video(moving_clip(frames=4, batch=1))
    assert calls[0] == (0, 17 + 3 * 3)  # all of frame 0, then the class token and 2 patches a frame


@pytest.mark.parametrize("threshold", [0.2, 1e9])
def test_reuse_with_loose_thresholds_stays_close_and_counts(tiny_text, threshold):
    reusing = model(tiny_text, "transformer", mode="diff", threshold=threshold)
    clip = moving_clip()
    exact_flops, exact = flops(lambda v: reusing.encode_video(v, reuse=False), clip)
    reuse_flops, got = flops(reusing.encode_video, clip)
    assert reuse_flops < exact_flops and 0 < reusing.reuse.rate() <= 5 / 6
    assert torch.nn.functional.cosine_similarity(got, exact).min() > (0.9 if threshold < 1 else 0.0)


def test_tome_without_merging_is_exact_and_merging_skips_work(tiny_text):
    plain = model(tiny_text, mode="tome", tome_r=0)
    merging = model(tiny_text, mode="tome", tome_r=4)
    clip = moving_clip(frames=2)
    exact_flops, exact = flops(lambda v: plain.encode_video(v, reuse=False), clip)
    with torch.no_grad():
        torch.testing.assert_close(plain.encode_video(clip), exact, atol=1e-6, rtol=1e-5)
    merged_flops, merged = flops(merging.encode_video, clip)
    # 2 blocks: merged after block 0's attention, so block 0's MLP and block 1's qkv see 12 of 16 patches
    assert merged_flops < 0.95 * exact_flops and merging.reuse.rate() == pytest.approx(8 / 48)
    assert torch.isfinite(merged).all()


def test_merge_tokens_keeps_the_class_token_and_the_size_weighted_sum():
    torch.manual_seed(0)
    x, metric = torch.randn(3, 9, 4), torch.randn(3, 9, 5)
    merged, size = merge_tokens(x, None, metric, r=3)
    assert merged.shape == (3, 6, 4) and size.shape == (3, 6, 1)
    torch.testing.assert_close(merged[:, 0], x[:, 0])  # the class token, first and alone
    assert size[:, 0].eq(1).all() and size.sum(1).eq(9).all()
    torch.testing.assert_close((merged * size).sum(1), x.sum(1))  # nothing lost: a weighted average
    again, size2 = merge_tokens(merged, size, torch.randn(3, 6, 5), r=2)
    torch.testing.assert_close((again * size2).sum(1), x.sum(1))


def test_learned_reuse_trains_only_its_decisions_and_its_checkpoint_loads(tiny_text, tmp_path):
    module = FrozenModule(video=dict(VIDEO, temporal="mean", reuse={"mode": "learned", "target_rate": 0.6}),
                          text=dict(tiny_text, config_overrides={"num_hidden_layers": 1}), projection_dim=16)
    learned = module.model.train()
    assert [g["name"] for g in module.parameter_groups()] == ["all", "all/no_decay"]  # the decisions alone
    gates = {n for n, _ in learned.named_parameters() if n.startswith("reuse.gates.")}
    assert len(gates) == 6 * 2 * VIDEO["depth"]  # three linear layers, weight and bias, per block part
    clip = moving_clip(frames=4)
    loss, stats = learned.reuse.distillation_loss(learned.encode_video, clip)
    loss.backward()
    with_grad = {n for n, p in learned.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert with_grad and with_grad <= gates
    assert 0.0 < float(stats["rate"]) < 1.0 and -1.0 <= float(stats["cosine"]) <= 1.0
    learned.eval()
    with torch.no_grad():
        reference = learned.encode_video(clip)
    path = tmp_path / "reuse.ckpt"
    config = {"video": learned.video_config.to_dict(), "text": learned.text_config.to_dict(), "projection_dim": 16}
    torch.save({"state_dict": {f"model.{k}": v for k, v in learned.state_dict().items()},
                "hyper_parameters": config}, path)
    loaded = create_model(weights=path).eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded.encode_video(clip), reference, rtol=0, atol=0)
    plain = model(tiny_text)  # a model without decisions loads only where they may be missing
    with pytest.raises(ValueError, match="reuse.gates"):
        load_checkpoint(learned, {k: v for k, v in plain.state_dict().items()})
    load_checkpoint(learned, plain.state_dict(), allowed_missing=("reuse.",))


@pytest.mark.parametrize("temporal", ["mean", "transformer", "space_time"])
def test_encode_windows_equals_each_window_encoded_alone(tiny_text, temporal):
    exact = model(tiny_text, temporal)
    torch.manual_seed(4)
    frames = torch.randn(10, 3, 32, 32)
    windows = torch.tensor([[0, 1, 2, 3], [2, 3, 4, 5], [4, 5, 6, 7], [6, 7, 8, 9]])  # half-window stride
    with torch.no_grad():
        expected = torch.cat([exact.encode_video(frames[w].unsqueeze(0)) for w in windows])
    cached_flops, got = flops(lambda: exact.encode_windows(frames, windows, batch_size=4))
    alone_flops, _ = flops(lambda: exact.encode_video(frames[windows]))
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    if temporal != "space_time":  # 10 distinct frames encoded instead of 16
        assert cached_flops < 0.7 * alone_flops
    with pytest.raises(ValueError, match="indices into 10 frames"):
        exact.encode_windows(frames, [[0, 10]])


@pytest.mark.parametrize("temporal", ["mean", "space_time"])
def test_predict_encodes_each_frame_shared_by_index_windows_once(tiny_text, temporal):
    """Search windows at half-window stride (two videos in one batch): predict_step gives the embeddings of
    each window's clip encoded alone, and with a per-frame tower computes each distinct frame once."""
    torch.manual_seed(0)
    module = FrozenModule(video=dict(VIDEO, temporal=temporal, num_frames=4),
                          text=dict(tiny_text, config_overrides={"num_hidden_layers": 1}), projection_dim=16).eval()
    torch.manual_seed(5)
    videos = {"a.mp4": torch.randn(10, 3, 32, 32), "b.mp4": torch.randn(6, 3, 32, 32)}
    windows = [("a.mp4", (0, 1, 2, 3)), ("a.mp4", (2, 3, 4, 5)), ("a.mp4", (4, 5, 6, 7)), ("b.mp4", (0, 1, 2, 3)),
               ("b.mp4", (2, 3, 4, 5))]
    clips = torch.stack([videos[path][list(frames)] for path, frames in windows])
    meta = {"id": [f"{p}#{i}" for i, (p, _) in enumerate(windows)], "path": [p for p, _ in windows],
            "index": list(range(len(windows))), "frames": [f for _, f in windows]}
    batch = {"video": clips, "meta": meta}
    with torch.no_grad():
        expected = torch.nn.functional.normalize(torch.cat([module.model.encode_video(c[None]) for c in clips]), dim=-1)
    cached_flops, got = flops(lambda: module.predict_step(batch, 0)["video"])
    plain_flops, _ = flops(lambda: module.predict_step({**batch, "meta": {**meta, "frames": [None] * 5}}, 0))
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    if temporal == "mean":  # 8 + 6 distinct frames instead of 20
        assert cached_flops < 0.8 * plain_flops
    else:  # the space-time tower sees each clip whole
        assert cached_flops == plain_flops
