"""The video tower against independent references: timm's ViT and a plain einsum attention."""
import pytest
import timm
import torch

from lightning_frozen.models import SpaceTimeTransformer
from lightning_frozen.models.checkpoint import load_state_dict_into
from lightning_frozen.models.space_time import DividedAttention


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


@pytest.mark.parametrize("over", ["space", "time"])
@pytest.mark.parametrize("frames", [1, 3])
def test_divided_attention_matches_einsum_reference(over, frames):
    torch.manual_seed(1)
    dim, heads, patches = 16, 2, 4
    attn = DividedAttention(dim, heads).eval()
    x = torch.randn(2, 1 + frames * patches, dim)
    expected = reference_divided_attention(
        x, attn.qkv.weight, attn.qkv.bias, attn.proj.weight, attn.proj.bias, heads, frames, over
    )
    torch.testing.assert_close(attn(x, frames, over), expected, atol=1e-5, rtol=1e-5)


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
    torch.testing.assert_close(diff - frame_diff, (model.temporal_embed[0, 1] - model.temporal_embed[0, 0]).expand(patches, -1))
    with pytest.raises(ValueError, match="raise video.num_frames"):
        model(torch.randn(1, 5, 3, 32, 32))
    with pytest.raises(ValueError, match="input_res"):
        model(torch.randn(1, 2, 3, 48, 48))


def test_gradient_checkpointing_gives_same_gradients():
    torch.manual_seed(0)
    plain = SpaceTimeTransformer(img_size=32, patch_size=16, embed_dim=32, depth=2, num_heads=2, time_init="rand")
    ckpt = SpaceTimeTransformer(img_size=32, patch_size=16, embed_dim=32, depth=2, num_heads=2, time_init="rand",
                                grad_checkpointing=True)
    ckpt.load_state_dict(plain.state_dict())
    clip = torch.randn(2, 3, 3, 32, 32)
    plain(clip).square().sum().backward()
    ckpt(clip).square().sum().backward()
    for (name, p), q in zip(plain.named_parameters(), ckpt.parameters()):
        torch.testing.assert_close(p.grad, q.grad, msg=name)


def test_published_geometry_shapes():
    model = SpaceTimeTransformer(num_frames=4)  # ViT-B/16 at 224
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert shapes["pos_embed"] == (1, 197, 768)
    assert shapes["temporal_embed"] == (1, 4, 768)
    assert shapes["patch_embed.proj.weight"] == (768, 3, 16, 16)
    assert shapes["blocks.11.timeattn.qkv.weight"] == (2304, 768)
    assert shapes["blocks.0.norm3.weight"] == (768,)
