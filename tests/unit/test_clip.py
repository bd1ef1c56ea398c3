"""CLIP towers against Hugging Face's CLIPModel (tiny random configs, no download), presets, settings."""
import pytest
import torch
import torch.nn.functional as F
import transformers
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
from torchvision.transforms.functional import normalize

from lightning_frozen.models import (
    FrozenInTime,
    ModelConfig,
    VideoConfig,
    build_tokenizer,
    create_model,
    load_checkpoint,
)
from lightning_frozen.models.clip import check_clip_tokenizer
from lightning_frozen.module import FrozenModule

# MiniLM's WordPiece ids: [CLS] 101, [SEP] 102 (the end-of-text token here), [PAD] 0.
TEXT = dict(hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=1, vocab_size=30522,
            max_position_embeddings=16, bos_token_id=101, eos_token_id=102, pad_token_id=0)
VISION = dict(hidden_size=32, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2, image_size=32,
              patch_size=16)
GEOMETRY = dict(arch=None, img_size=32, patch_size=16, embed_dim=32, depth=2, num_heads=2)


@pytest.fixture(scope="module")
def clip_folder(tmp_path_factory):
    """A random CLIPModel saved as a folder, and the model itself (eval mode)."""
    torch.manual_seed(0)
    clip = transformers.CLIPModel(transformers.CLIPConfig(text_config=TEXT, vision_config=VISION,
                                                          projection_dim=64)).eval()
    folder = tmp_path_factory.mktemp("clip")
    clip.save_pretrained(folder)
    return str(folder), clip


@pytest.fixture(scope="module")
def designs(clip_folder):
    """Each video design with its text tower, made from the CLIP folder by ``create_model``."""
    folder, _ = clip_folder
    return {temporal: create_model({"video": dict(GEOMETRY, tower="clip", temporal=temporal, num_frames=4,
                                                  temporal_layers=2, pretrained_path=folder),
                                    "text": dict(tower="clip", name_or_path=folder, pretrained=True),
                                    "projection_dim": 64}).eval()
            for temporal in ("mean", "transformer", "space_time")}


def features(output):
    """transformers 5 returns the projected features as pooler_output, 4 returns the tensor."""
    return getattr(output, "pooler_output", output)


def images_and_features(clip, count):
    """Random images normalised as the data does (ImageNet's statistics), and CLIP's image features of
    the same images normalised as CLIP does."""
    images = torch.rand(count, 3, 32, 32)
    with torch.no_grad():
        expected = features(clip.get_image_features(pixel_values=normalize(images, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD)))
    return normalize(images, IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD), expected


def hf_layer(layer, hidden):
    """One Hugging Face CLIP encoder layer without a mask, across transformers 4 and 5."""
    try:
        return layer(hidden, None)
    except TypeError:
        return layer(hidden, None, None)[0]


def test_text_tower_equals_clip_text_features(clip_folder, designs, text_dir):
    clip = clip_folder[1]
    model = designs["mean"]
    tokens = build_tokenizer(text_dir)(["a red circle moving left", "blue square"], padding=True, return_tensors="pt")
    with torch.no_grad():
        ids, mask = tokens["input_ids"], tokens["attention_mask"]
        expected = features(clip.get_text_features(input_ids=ids, attention_mask=mask))
        got = model.encode_text(ids, mask)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("temporal", ["mean", "transformer", "space_time"])
def test_each_video_design_on_one_frame_equals_clip_image_features(clip_folder, designs, temporal):
    clip = clip_folder[1]
    model = designs[temporal]
    torch.manual_seed(1)
    images, expected = images_and_features(clip, 3)
    with torch.no_grad():
        if temporal == "space_time":  # time attention starts as the identity: one frame is CLIP's image tower
            got = model.encode_video(images.unsqueeze(1))
        else:
            got = model.encode_frames(images.unsqueeze(1))[:, 0]
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_mean_design_of_identical_frames_is_the_normalised_image_feature(clip_folder, designs):
    images, expected = images_and_features(clip_folder[1], 2)
    with torch.no_grad():
        got = designs["mean"].encode_video(images.unsqueeze(1).expand(-1, 4, -1, -1, -1))
    torch.testing.assert_close(got, F.normalize(expected, dim=-1), atol=1e-5, rtol=1e-5)


def test_temporal_transformer_starts_from_clip_text_layers_as_clip4clip(clip_folder, designs):
    """seqTransf: frame embedding x -> normalise(x + text layers(x + text position 0)), non-causal."""
    clip = clip_folder[1]
    images, frame = images_and_features(clip, 2)
    frame = frame.unsqueeze(1)
    with torch.no_grad():
        hidden = frame + clip.text_model.embeddings.position_embedding.weight[:1]
        for layer in clip.text_model.encoder.layers:
            hidden = hf_layer(layer, hidden)
        expected = F.normalize(hidden + frame, dim=-1)[:, 0]
        got = designs["transformer"].encode_video(images.unsqueeze(1))
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_the_one_loader_reads_a_clip_folder_and_leaves_time_untouched(clip_folder):
    folder, clip = clip_folder
    model = FrozenInTime(dict(GEOMETRY, tower="clip", temporal="space_time", num_frames=4),
                         dict(tower="clip", name_or_path=folder, pretrained=False), projection_dim=64)
    before = model.video_model.blocks[0].timeattn.qkv.weight.clone()
    report = load_checkpoint(model, folder)
    assert not report.unexpected and all(k.split(".")[-2] in ("timeattn", "norm3") or "temporal_embed" in k
                                         for k in report.missing if "." in k)
    torch.testing.assert_close(model.txt_proj[0].weight, clip.text_projection.weight, rtol=0, atol=0)
    torch.testing.assert_close(model.video_model.blocks[0].timeattn.qkv.weight, before, rtol=0, atol=0)
    assert "video_model.norm_pre.weight" in model.state_dict()


def test_presets_build_offline_and_weights_offline_name_the_local_folder(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    config = ModelConfig.from_name("clip4clip_seqtransf_b16")
    assert (config.video.tower, config.video.temporal, config.video.num_frames) == ("clip", "transformer", 12)
    assert config.video.geometry()["patch_size"] == 16 and ModelConfig.from_name("clip4clip_meanp_b32").video.\
        geometry()["patch_size"] == 32
    assert ModelConfig.from_name("stformer_clip_b16").video.temporal == "space_time"
    with torch.device("meta"):  # shapes only: no memory, no time
        model = create_model("clip4clip_meanp_b16", pretrained=False)
        assert model.vid_proj[0].weight.shape == (512, 768) and model.txt_proj[0].weight.shape == (512, 512)
        assert model.video_model.patch_embed.proj.bias is None and len(model.video_model.blocks) == 12
        with pytest.raises(OSError, match="local CLIPModel folder.*pretrained_path and model.text.name_or_path"):
            create_model("clip4clip_meanp_b16")


def test_unknown_tower_and_design_values_fail_naming_the_valid_ones():
    with pytest.raises(ValueError, match=r"video.tower 'clip2' is unknown: use one of \['frozen', 'clip'\]"):
        VideoConfig(tower="clip2")
    with pytest.raises(ValueError, match=r"video.temporal 'lstm' is unknown: use one of \['space_time', 'mean'"):
        VideoConfig(tower="clip", temporal="lstm")
    with pytest.raises(ValueError, match="per-frame design of the CLIP tower: set video.tower: clip"):
        VideoConfig(temporal="mean")
    with pytest.raises(ValueError, match=r"video.reuse.mode 'skip' is unknown: use one of \['off', 'diff'"):
        VideoConfig(reuse={"mode": "skip"})
    with pytest.raises(ValueError, match="text.tower 'bert' is unknown"):
        ModelConfig.from_dict({"text": {"tower": "bert"}})


def test_clip_text_tower_checks_the_tokenizer_ends_captions_with_its_pooling_token(text_dir):
    tokenizer = build_tokenizer(text_dir)  # WordPiece: captions end with [SEP] = 102
    check_clip_tokenizer(transformers.CLIPTextConfig(vocab_size=30522, eos_token_id=102), tokenizer, "minilm")
    with pytest.raises(ValueError, match="set model.text.config_overrides.eos_token_id: 102"):
        check_clip_tokenizer(transformers.CLIPTextConfig(vocab_size=30522), tokenizer, "minilm")  # CLIP's eos 2
    with pytest.raises(ValueError, match="set model.text.config_overrides.vocab_size: 30522"):
        check_clip_tokenizer(transformers.CLIPTextConfig(vocab_size=1000, eos_token_id=102), tokenizer, "minilm")


def test_clip4clip_learning_rates_new_parameters_apart_from_clips(clip_folder):
    folder, _ = clip_folder
    module = FrozenModule(video=dict(GEOMETRY, tower="clip", temporal="transformer", num_frames=4),
                          text=dict(tower="clip", name_or_path=folder, pretrained=False), projection_dim=64, lr=1e-4,
                          part_lr={"video": 1e-7, "text": 1e-7, "projections": 1e-7})
    names = {id(p): n for n, p in module.model.named_parameters()}
    by_name = {g["name"]: (g["lr"], {names[id(p)] for p in g["params"]}) for g in module.parameter_groups()}
    assert set(by_name) == {"video+text+projections", "video+text+projections/no_decay", "temporal",
                            "temporal/no_decay"}
    assert by_name["temporal"][0] == 1e-4 and by_name["video+text+projections"][0] == 1e-7
    assert by_name["temporal"][1] | by_name["temporal/no_decay"][1] == {n for n in names.values()
                                                                         if n.startswith("temporal.")}
