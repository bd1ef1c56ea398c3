"""Video-transformer initialisation options: a Conv3d tubelet embedding inflated from 2D weights, time
attention copied from space attention, MAE checkpoints through the one loader."""
import logging

import pytest
import timm
import torch
from torch import nn

from lightning_frozen.models import SpaceTimeTransformer, load_checkpoint

GEOMETRY = dict(img_size=32, patch_size=16, embed_dim=32, depth=2, num_heads=2)


def video_only(**video) -> nn.Module:
    """What the loader fills: a model whose video tower is `video_model` (no text tower needed here)."""
    holder = nn.Module()
    holder.video_model = SpaceTimeTransformer(**GEOMETRY, **video)
    return holder


def towers(inflate: str):
    """A 2-frame Conv2d tower and a 4-frame Conv3d tower (tubelets of 2) holding its weights, via the loader."""
    torch.manual_seed(0)
    flat = video_only(num_frames=2, time_init="rand")
    tubelet = video_only(num_frames=4, time_init="rand", patch_embed="conv3d", tubelet_size=2, inflate=inflate)
    report = load_checkpoint(tubelet, flat.state_dict(), name="2d")
    assert any("patch_embed.proj.weight" in line and f"{inflate} inflation" in line for line in report.adapted)
    return flat.video_model.eval(), tubelet.video_model.eval()


@pytest.mark.parametrize("inflate", ["central", "average"])
def test_inflated_tubelets_equal_the_2d_model_on_a_static_clip(inflate):
    flat, tubelet = towers(inflate)
    frame = torch.randn(2, 1, 3, 32, 32)
    with torch.no_grad():
        # 4 equal frames make 2 tubelets, the 2 time steps of the 2D model's 2 equal frames
        torch.testing.assert_close(tubelet.forward_features(frame.expand(-1, 4, -1, -1, -1)),
                                   flat.forward_features(frame.expand(-1, 2, -1, -1, -1)), atol=1e-5, rtol=1e-5)


def test_central_and_average_inflation_read_a_moving_clip_differently():
    clip = torch.randn(2, 4, 3, 32, 32)
    with torch.no_grad():
        flat, central = towers("central")
        # the middle frame (index t // 2 = 1) of each tubelet of 2
        torch.testing.assert_close(central(clip), flat(clip[:, 1::2]), atol=1e-5, rtol=1e-5)
        flat, average = towers("average")
        torch.testing.assert_close(average(clip), flat((clip[:, 0::2] + clip[:, 1::2]) / 2), atol=1e-5, rtol=1e-5)


def test_tubelets_need_whole_clips():
    tower = SpaceTimeTransformer(**GEOMETRY, num_frames=4, patch_embed="conv3d", tubelet_size=2)
    assert tower.temporal_embed.shape[1] == 2 and tower.time_steps(4) == 2
    with pytest.raises(ValueError, match="tubelets of 2"):
        tower(torch.randn(1, 3, 3, 32, 32))
    with pytest.raises(ValueError, match="multiple of tubelet_size"):
        SpaceTimeTransformer(**GEOMETRY, num_frames=3, patch_embed="conv3d", tubelet_size=2)


def timm_vit():
    torch.manual_seed(1)
    return timm.models.vision_transformer.VisionTransformer(img_size=32, patch_size=16, embed_dim=32, depth=2,
                                                            num_heads=2, num_classes=0, qkv_bias=True)


def test_time_init_copy_starts_time_attention_as_space_attention():
    tower = SpaceTimeTransformer(**GEOMETRY, time_init="copy")
    for block in tower.blocks:
        space = block.attn.state_dict()
        for name, time_weight in block.timeattn.state_dict().items():
            assert torch.equal(time_weight, space[name]), name
        assert torch.equal(block.norm3.weight, block.norm1.weight)
    assert tower.temporal_embed.std() > 0  # drawn, as for "rand"
    # from image weights: the loaded space attention is copied, not the random one
    model = video_only(time_init="copy")
    vit = timm_vit().state_dict()
    load_checkpoint(model, vit, name="vit")
    for i, block in enumerate(model.video_model.blocks):
        assert torch.equal(block.timeattn.qkv.weight, vit[f"blocks.{i}.attn.qkv.weight"])
        assert torch.equal(block.timeattn.proj.bias, vit[f"blocks.{i}.attn.proj.bias"])
        assert torch.equal(block.norm3.weight, vit[f"blocks.{i}.norm1.weight"])


def mae_pytorch_checkpoint(vit_state: dict) -> dict:
    """An MAE-pytorch pretraining checkpoint of `vit_state`'s encoder: `encoder.` keys, separate q/v biases
    (no k bias), no class token or position embedding (its sinusoid table is not saved), a decoder."""
    encoder = {}
    for key, value in vit_state.items():
        if key in ("cls_token", "pos_embed"):
            continue
        if key.endswith("attn.qkv.bias"):
            q, _, v = value.chunk(3)
            encoder[f"encoder.{key[:-len('qkv.bias')]}q_bias"] = q
            encoder[f"encoder.{key[:-len('qkv.bias')]}v_bias"] = v
        else:
            encoder[f"encoder.{key}"] = value
    decoder = {"decoder.blocks.0.mlp.fc1.weight": torch.randn(8, 8), "encoder_to_decoder.weight": torch.randn(8, 32),
               "mask_token": torch.zeros(1, 1, 8)}
    return {"model": {**encoder, **decoder}}


def test_mae_checkpoint_fills_the_video_tower_and_draws_the_class_token(caplog):
    vit = timm_vit()
    for block in vit.blocks:  # MAE has no k bias: the joined qkv bias holds zeros there
        block.attn.qkv.bias.data[32:64] = 0
    torch.manual_seed(5)
    model = video_only(num_frames=1)
    pos_before = model.video_model.pos_embed.detach().clone()
    with caplog.at_level(logging.INFO, logger="lightning_frozen.models.checkpoint"):
        report = load_checkpoint(model, mae_pytorch_checkpoint(vit.state_dict()), name="mae.pth")
    assert "video_model.cls_token: not in mae.pth, drawn from a truncated normal" in caplog.text
    assert any(line.startswith("video_model.cls_token") for line in report.adapted)
    tower = model.video_model
    cls = tower.cls_token.detach()
    assert 0.01 < cls.std() < 0.03 and cls.abs().max() <= 0.04  # N(0, 0.02) cut at 2 std
    assert torch.equal(tower.pos_embed.detach(), pos_before)  # not in the file: kept
    for i, block in enumerate(tower.blocks):
        assert torch.equal(block.attn.qkv.bias, vit.blocks[i].attn.qkv.bias)
        assert torch.equal(block.mlp.fc2.weight, vit.blocks[i].mlp.fc2.weight)
    assert torch.equal(tower.patch_embed.proj.weight, vit.patch_embed.proj.weight)
    # with the class token and position embedding copied in, the tower is that ViT on one frame
    tower.cls_token.data.copy_(vit.cls_token.data)
    tower.pos_embed.data.copy_(vit.pos_embed.data)
    image = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(tower.eval()(image.unsqueeze(1)), vit.eval().forward_features(image)[:, 0],
                                   atol=1e-5, rtol=1e-5)


def test_official_mae_checkpoint_keeps_its_class_token():
    vit = timm_vit().state_dict()
    official = {"model": {**vit, "decoder_embed.weight": torch.randn(8, 32), "decoder_pos_embed": torch.randn(1, 5, 8),
                          "mask_token": torch.zeros(1, 1, 8)}}
    model = video_only(num_frames=1)
    report = load_checkpoint(model, official, name="mae_official.pth")
    assert torch.equal(model.video_model.cls_token, vit["cls_token"])
    assert not any("cls_token" in line for line in report.adapted)
