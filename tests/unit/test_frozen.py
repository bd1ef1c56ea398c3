"""The dual encoder's configuration, outputs and offline behaviour."""
import pytest
import torch
import torch.nn.functional as F
from helpers import TINY_VIDEO

from lightning_frozen.models import FrozenInTime, VideoConfig, build_tokenizer, create_model


def test_encoders_output_projection_dim(tiny_model, text_dir):
    tok = build_tokenizer(text_dir)
    batch = tok(["a red circle moving left", "blue square"], padding=True, return_tensors="pt")
    video = torch.randn(2, 2, 3, 32, 32)
    text_emb, video_emb = tiny_model(video, batch["input_ids"], batch["attention_mask"])
    assert text_emb.shape == (2, 16) and video_emb.shape == (2, 16)
    sims = tiny_model.similarity(text_emb, video_emb)
    torch.testing.assert_close(sims, F.cosine_similarity(text_emb[:, None], video_emb[None], dim=-1))


def test_text_embedding_is_first_token_projected(tiny_model):
    tiny_model.eval()  # BERT dropout off
    ids = torch.tensor([[101, 2000, 3000, 102]])
    mask = torch.ones_like(ids)
    hidden = tiny_model.text_model(input_ids=ids, attention_mask=mask).last_hidden_state
    expected = torch.relu(hidden[:, 0]) @ tiny_model.txt_proj[1].weight.t() + tiny_model.txt_proj[1].bias
    torch.testing.assert_close(tiny_model.encode_text(ids, mask), expected)


def test_mean_pooling_averages_real_tokens_and_ignores_padding(tiny_text, text_dir):
    torch.manual_seed(0)
    model = FrozenInTime(video=dict(TINY_VIDEO), text=dict(tiny_text, pooling="mean"), projection_dim=16).eval()
    tok = build_tokenizer(text_dir)
    short, long = "a disc rising", "a yellow square drifting to the left over a purple background"
    batch = tok([short, long], padding=True, return_tensors="pt")
    alone = tok([short], return_tensors="pt")
    assert batch["input_ids"].shape[1] > alone["input_ids"].shape[1]  # the short caption is padded in the batch
    with torch.no_grad():
        hidden = model.text_model(**alone).last_hidden_state
        expected = model.txt_proj(hidden[0].mean(0, keepdim=True))
        torch.testing.assert_close(model.encode_text(alone["input_ids"], alone["attention_mask"]), expected)
        padded = model.encode_text(batch["input_ids"], batch["attention_mask"])[:1]
    torch.testing.assert_close(padded, expected, atol=1e-5, rtol=1e-5)


def test_unknown_pooling_fails_by_name(tiny_text):
    with pytest.raises(ValueError, match="pooling"):
        FrozenInTime(video=dict(TINY_VIDEO), text=dict(tiny_text, pooling="max"), projection_dim=16)


def test_presets_and_overrides():
    assert VideoConfig().geometry() == dict(img_size=224, patch_size=16, embed_dim=768, depth=12, num_heads=12)
    assert VideoConfig(arch="base_patch32_224", depth=4).geometry()["patch_size"] == 32
    with pytest.raises(ValueError, match="video.arch 'huge'"):
        VideoConfig(arch="huge").geometry()
    with pytest.raises(ValueError, match="video.depth is required"):
        VideoConfig(arch=None, img_size=32, patch_size=16, embed_dim=32, num_heads=2).geometry()


def test_unknown_config_key_is_named(tiny_text):
    with pytest.raises(ValueError, match="unknown VideoConfig keys \\['frames'\\]"):
        FrozenInTime(video=dict(TINY_VIDEO, frames=4), text=tiny_text)


def test_pretrained_without_network_gives_one_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(OSError, match="text.name_or_path to a local Hugging Face directory"):
        create_model({"video": dict(TINY_VIDEO), "text": dict(name_or_path="someone/not-cached-model")})
    with pytest.raises(OSError, match="video.pretrained_path"):
        create_model({"video": dict(arch="base_patch16_224", depth=1, pretrained=True),
                      "text": dict(pretrained=False, config_overrides={"n_layers": 1})})


def test_constructor_reads_no_weights(tmp_path, tiny_text):
    """FrozenInTime only builds modules; create_model loads what the config names."""
    missing = tmp_path / "vit.pth"
    video = dict(TINY_VIDEO, pretrained=True, pretrained_path=str(missing))
    model = FrozenInTime(video=video, text=dict(tiny_text, pretrained=True))
    assert model.video_config.pretrained_path == str(missing)
    with pytest.raises(FileNotFoundError, match="vit.pth"):
        create_model({"video": video, "text": tiny_text})


def test_distilbert_architecture_builds_offline():
    model = FrozenInTime(video=dict(TINY_VIDEO), text=dict(pretrained=False, config_overrides={"n_layers": 1}))
    assert type(model.text_model).__name__ == "DistilBertModel"
    assert model.txt_proj[1].weight.shape == (256, 768)
    assert len(model.text_layers) == 1
