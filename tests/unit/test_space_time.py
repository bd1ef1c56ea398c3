"""The video tower against independent references: timm's ViT, a plain einsum attention, the reference path."""
import pytest
import timm
import torch

from lightning_frozen.models import SpaceTimeTransformer
from lightning_frozen.models.checkpoint import load_state_dict_into
from lightning_frozen.models.space_time import DividedAttention
from lightning_frozen.models.space_time_reference import (
    reference_attention,
    reference_block,
    reference_forward,
    reference_forward_features,
)


def reference_divided_attention(x, qkv_w, qkv_b, proj_w, proj_b, heads, frames, over):
    """Token-by-token reference: each query's key set written out explicitly, softmax by hand."""
    b, n, d = x.shape
    hd = d // heads
    patches = (n - 1) // frames
    q, k, v = (x @ qkv_w.t() + qkv_b).split(d, dim=-1)
    q, k, v = (t.reshape(b, n, heads, hd) for t in (q, k, v))
    out = torch.zeros(b, n, heads, hd)
    for i in range(n):
        if i == 0:
            keys = list(range(n))
        else:
            f, p = divmod(i - 1, patches)
            if over == "space":
                keys = [0] + [1 + f * patches + pp for pp in range(patches)]
            else:
                keys = [0] + [1 + ff * patches + p for ff in range(frames)]
        kk, vv = k[:, keys], v[:, keys]  # b, m, h, hd
        logits = torch.einsum("bhd,bmhd->bhm", q[:, i], kk) * hd ** -0.5
        weights = logits.exp() / logits.exp().sum(-1, keepdim=True)
        out[:, i] = torch.einsum("bhm,bmhd->bhd", weights, vv)
    return out.reshape(b, n, d) @ proj_w.t() + proj_b


@pytest.mark.parametrize("path", ["fast", "reference"])
@pytest.mark.parametrize("over", ["space", "time"])
@pytest.mark.parametrize("frames", [1, 3])
def test_divided_attention_matches_einsum_reference(path, over, frames):
    torch.manual_seed(1)
    dim, heads, patches = 16, 2, 4
    attn = DividedAttention(dim, heads).eval()
    x = torch.randn(2, 1 + frames * patches, dim)
    expected = reference_divided_attention(
        x, attn.qkv.weight, attn.qkv.bias, attn.proj.weight, attn.proj.bias, heads, frames, over
    )
    got = attn(x, frames, over) if path == "fast" else reference_attention(attn, x, frames, over)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    if over == "space":  # the CLS-only space attention of the last block
        torch.testing.assert_close(attn.forward_cls(x), expected[:, :1], atol=1e-5, rtol=1e-5)


def _assert_within(got, expected, name, tol=1e-4):
    """|got - expected| <= tol, relative to the tensor's scale once that passes 1."""
    err = (got - expected).abs().max().item()
    assert err <= tol * max(1.0, expected.abs().max().item()), f"{name}: max error {err:.2e}"


def _tower_and_grads(model, forward, clip, weights):
    clip = clip.detach().requires_grad_(True)
    model.zero_grad(set_to_none=True)
    out = forward(clip)
    (out * weights).sum().backward()
    grads = {"input": clip.grad}
    grads.update({name: p.grad for name, p in model.named_parameters()})
    return out.detach(), grads


@pytest.mark.parametrize("frames", [1, 2, 4])
@pytest.mark.parametrize("mode", ["train", "eval_with_dropout_configured"])
def test_fast_path_equals_reference_forward_and_gradients(frames, mode):
    """The fast tower (CLS-only last block included) against the straightforward one, fp32 CPU."""
    torch.manual_seed(frames)
    rates = dict(drop_rate=0.1, attn_drop_rate=0.1, drop_path_rate=0.2) if mode != "train" else {}
    model = SpaceTimeTransformer(img_size=32, patch_size=8, embed_dim=48, depth=3, num_heads=3, num_frames=4,
                                 time_init="rand", **rates)
    model.train(mode == "train")
    clip = torch.randn(3, frames, 3, 32, 32)
    weights = torch.randn(3, 48)
    fast, fast_grads = _tower_and_grads(model, model, clip, weights)
    ref, ref_grads = _tower_and_grads(model, lambda c: reference_forward(model, c), clip, weights)
    _assert_within(fast, ref, "output")
    assert fast_grads.keys() == ref_grads.keys()
    for name, grad in ref_grads.items():
        assert grad is not None and fast_grads[name] is not None, name
        _assert_within(fast_grads[name], grad, name)
    assert fast_grads["blocks.0.timeattn.qkv.weight"].abs().max() > 0  # time attention is in the graph
    with torch.no_grad():
        _assert_within(model.forward_features(clip), reference_forward_features(model, clip), "all tokens")


def test_cls_only_block_is_the_cls_row_of_the_full_block():
    torch.manual_seed(0)
    model = SpaceTimeTransformer(img_size=32, patch_size=8, embed_dim=32, depth=1, num_heads=2, time_init="rand")
    x = model.embed(torch.randn(2, 3, 3, 32, 32)).detach()
    block = model.blocks[0]
    with torch.no_grad():
        full = block(x, 3)
        torch.testing.assert_close(block(x, 3, cls_only=True), full[:, :1], atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(full, reference_block(block, x, 3), atol=1e-5, rtol=1e-5)


def test_attention_dropout_is_applied_in_training_only():
    torch.manual_seed(0)
    attn = DividedAttention(16, 2, attn_drop=0.5)
    x = torch.randn(2, 1 + 3 * 4, 16)
    for over in ("space", "time"):
        assert not torch.allclose(attn(x, 3, over), attn(x, 3, over))  # fresh masks each call
        attn.eval()
        torch.testing.assert_close(attn(x, 3, over), reference_attention(attn, x, 3, over), atol=1e-5, rtol=1e-5)
        attn.train()


@pytest.mark.parametrize("dtype", ["autocast", "bfloat16"])
def test_fast_path_runs_in_bf16_close_to_fp32(dtype):
    """bf16 autocast (what Lightning's bf16-mixed does) and bf16 weights both work; embeddings stay close."""
    torch.manual_seed(0)
    model = SpaceTimeTransformer(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=4, time_init="rand")
    clip = torch.randn(4, 4, 3, 32, 32)
    with torch.no_grad():
        expected = model(clip)
        if dtype == "autocast":
            with torch.autocast("cpu", dtype=torch.bfloat16):
                got = model(clip)
        else:
            got = model.to(torch.bfloat16)(clip.bfloat16())
            assert got.dtype == torch.bfloat16
    assert torch.nn.functional.cosine_similarity(got.float(), expected, dim=-1).min() > 0.99
    model.float().train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        model(clip).float().square().sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


def test_one_frame_with_zero_time_init_equals_timm_vit():
    """The 'frozen snapshot' property: an image is a one-frame video of the same ViT."""
    torch.manual_seed(0)
    vit = timm.models.vision_transformer.VisionTransformer(
        img_size=32, patch_size=8, embed_dim=48, depth=3, num_heads=3, num_classes=0, qkv_bias=True
    ).eval()
    stt = SpaceTimeTransformer(img_size=32, patch_size=8, embed_dim=48, depth=3, num_heads=3, num_frames=4,
                               time_init="zeros").eval()
    holder = torch.nn.Module()
    holder.video_model = stt
    report = load_state_dict_into(holder, vit.state_dict(), strict=True,
                                  allowed_missing=("timeattn", "norm3", "temporal_embed"))
    assert not report.unexpected
    image = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = vit.forward_features(image)[:, 0]
        got = stt(image.unsqueeze(1))
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_rand_time_init_differs_from_vit_on_multi_frame():
    torch.manual_seed(0)
    a = SpaceTimeTransformer(img_size=32, patch_size=16, embed_dim=32, depth=1, num_heads=2, time_init="zeros")
    b = SpaceTimeTransformer(img_size=32, patch_size=16, embed_dim=32, depth=1, num_heads=2, time_init="rand")
    assert torch.count_nonzero(a.blocks[0].timeattn.qkv.weight) == 0
    assert torch.all(a.blocks[0].timeattn.proj.weight == 1)
    assert torch.count_nonzero(b.blocks[0].timeattn.qkv.weight) > 0
    assert torch.count_nonzero(a.temporal_embed) == 0  # the image model's start
    assert b.temporal_embed.std() > 0.005  # frame order visible from the first step


def test_pos_init_std_sets_spatial_and_temporal_embedding_scale():
    torch.manual_seed(0)
    default = SpaceTimeTransformer(img_size=64, patch_size=16, embed_dim=64, depth=1, num_heads=2, time_init="rand")
    large = SpaceTimeTransformer(img_size=64, patch_size=16, embed_dim=64, depth=1, num_heads=2, time_init="rand",
                                 pos_init_std=0.5)
    assert default.pos_embed.std().item() == pytest.approx(0.02, rel=0.15)
    assert default.temporal_embed.std().item() == pytest.approx(0.02, rel=0.15)
    assert large.pos_embed.std().item() == pytest.approx(0.5, rel=0.15)
    assert large.temporal_embed.std().item() == pytest.approx(0.5, rel=0.15)
    assert large.cls_token.std().item() == pytest.approx(0.02, rel=0.3)  # only the position embeddings change
    zeros = SpaceTimeTransformer(img_size=64, patch_size=16, embed_dim=64, depth=1, num_heads=2, pos_init_std=0.5)
    assert torch.count_nonzero(zeros.temporal_embed) == 0  # "zeros" keeps the image model's start


def test_fewer_frames_use_first_temporal_rows_and_more_frames_fail():
    torch.manual_seed(0)
    model = SpaceTimeTransformer(img_size=32, patch_size=16, embed_dim=32, depth=1, num_heads=2, num_frames=4).eval()
    torch.nn.init.normal_(model.temporal_embed)
    clip = torch.randn(1, 2, 3, 32, 32)
    tokens = model.embed(clip)
    patches = model.patches_per_frame
    # frame 1's patch tokens carry temporal row 1, the same for every patch
    diff = tokens[0, 1 + patches:] - tokens[0, 1:1 + patches]
    frame_diff = (model.patch_embed(clip)[0, patches:] - model.patch_embed(clip)[0, :patches])
    step = model.temporal_embed[0, 1] - model.temporal_embed[0, 0]
    torch.testing.assert_close(diff - frame_diff, step.expand(patches, -1))
    with pytest.raises(ValueError, match="raise video.num_frames"):
        model(torch.randn(1, 5, 3, 32, 32))
    with pytest.raises(ValueError, match="input_res"):
        model(torch.randn(1, 2, 3, 48, 48))


def test_gradient_checkpointing_gives_reference_gradients():
    torch.manual_seed(0)
    plain = SpaceTimeTransformer(img_size=32, patch_size=16, embed_dim=32, depth=2, num_heads=2, time_init="rand")
    ckpt = SpaceTimeTransformer(img_size=32, patch_size=16, embed_dim=32, depth=2, num_heads=2, time_init="rand",
                                grad_checkpointing=True)
    ckpt.load_state_dict(plain.state_dict())
    clip = torch.randn(2, 3, 3, 32, 32)
    reference_forward(plain, clip).square().sum().backward()
    ckpt(clip).square().sum().backward()
    for (name, p), q in zip(plain.named_parameters(), ckpt.parameters()):
        _assert_within(q.grad, p.grad, name)


def test_published_geometry_shapes():
    model = SpaceTimeTransformer(num_frames=4)  # ViT-B/16 at 224
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert shapes["pos_embed"] == (1, 197, 768)
    assert shapes["temporal_embed"] == (1, 4, 768)
    assert shapes["patch_embed.proj.weight"] == (768, 3, 16, 16)
    assert shapes["blocks.11.timeattn.qkv.weight"] == (2304, 768)
    assert shapes["blocks.0.norm3.weight"] == (768,)
