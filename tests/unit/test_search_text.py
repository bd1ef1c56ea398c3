"""The text side an index stores for queries gives the full model's text embeddings, bit for bit."""
import numpy as np
import pytest
import torch

from lightning_frozen.models import FrozenInTime
from lightning_frozen.search.store import DamagedIndexError, EmbeddingSettings, Manifest
from lightning_frozen.search.text import TEXT_TOWER, QueryEncoder, save_text_side
from lightning_frozen.tokenizer import build_tokenizer

TEXTS = ["a white circle moving to the left on a blue background", "a dog", "Ça va? naïve café", "x " * 40]


def manifest_for(folder, files, tokenizer_settings, dim=16) -> Manifest:
    return Manifest(checkpoint="", fingerprint="0" * 64, model_config={}, model_config_source=None, embedding_dim=dim,
                    settings=EmbeddingSettings(1.0, 0.5, 4, 32, 128, 128), videos_root=str(folder), follow_links=False,
                    tokenizer=tokenizer_settings, files=files)


@pytest.mark.parametrize("pooling, settings", [("first", {"max_length": None, "padding": "longest"}),
                                               ("mean", {"max_length": 12, "padding": "max_length"})])
def test_stored_text_tower_equals_the_full_model_and_a_changed_file_is_refused(tmp_path, tiny_text, pooling,
                                                                               settings):
    torch.manual_seed(0)
    model = FrozenInTime(video=dict(arch=None, img_size=32, patch_size=16, embed_dim=32, depth=2, num_heads=2,
                                    num_frames=4), text={**tiny_text, "pooling": pooling}, projection_dim=16)
    tokenizer = build_tokenizer(model.text_config.name_or_path)
    files = save_text_side(tmp_path, model, tokenizer, settings)
    assert model.training and all(p.requires_grad for p in model.parameters())  # the model is left as it was
    encoder = QueryEncoder(tmp_path, manifest_for(tmp_path, files, settings))
    model.eval()
    for texts in (TEXTS[:1], TEXTS):
        tokens = tokenizer(texts, padding=settings["padding"], truncation=True, max_length=settings["max_length"],
                           return_tensors="pt")
        with torch.no_grad():
            want = torch.nn.functional.normalize(model.encode_text(tokens["input_ids"], tokens["attention_mask"]),
                                                 dim=-1)
        np.testing.assert_array_equal(encoder.encode(texts), want.numpy())
    video_bytes = sum(p.numel() * 4 for p in model.video_model.parameters())
    text_bytes = sum(p.numel() * 4 for name, p in model.named_parameters() if name.startswith(("text_", "txt_")))
    assert (tmp_path / TEXT_TOWER).stat().st_size < text_bytes + video_bytes / 2  # the video tower is not stored
    (tmp_path / "tokenizer" / "tokenizer.json").write_text("{}")
    with pytest.raises(DamagedIndexError, match="tokenizer/tokenizer.json changed since the index was built"):
        QueryEncoder(tmp_path, manifest_for(tmp_path, files, settings))
    (tmp_path / TEXT_TOWER).unlink()
    with pytest.raises(DamagedIndexError, match="text_tower.pt is missing"):
        QueryEncoder(tmp_path, manifest_for(tmp_path, files, settings))

