"""CLIP towers and a learned reuse through the real CLI: fit, test, checkpoints."""
import math

import torch
import yaml
from helpers import tiny_config

from lightning_frozen.cli import run_cli
from lightning_frozen.models import create_model

CLIP_VIDEO = dict(tower="clip", temporal="transformer", temporal_layers=1, arch=None, img_size=32, patch_size=8,
                  embed_dim=32, depth=2, num_heads=2, num_frames=4)


def clip_config(tmp_path, tiny_msrvtt, text_dir, **model):
    """The tiny config with CLIP towers (the text tower reading MiniLM's WordPiece tokens)."""
    path = tiny_config(tmp_path, tiny_msrvtt, text_dir, limit_val_batches=1, limit_test_batches=1,
                       enable_checkpointing=True, default_root_dir=str(tmp_path / "run"))
    config = yaml.safe_load(path.read_text())
    config["model"].update({
        "video": dict(CLIP_VIDEO),
        "text": {"tower": "clip", "name_or_path": text_dir, "pretrained": False,
                 "config_overrides": {"vocab_size": 30522, "eos_token_id": 102, "bos_token_id": 101, "pad_token_id": 0,
                                      "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
                                      "num_attention_heads": 2, "max_position_embeddings": 16}},
        **model})
    path.write_text(yaml.safe_dump(config))
    return path


def test_clip_towers_fit_and_a_learned_reuse_trains_its_decisions_alone(tmp_path, tiny_msrvtt, text_dir):
    cli = run_cli(["fit", "--config", str(clip_config(tmp_path, tiny_msrvtt, text_dir))])
    assert math.isfinite(float(cli.trainer.callback_metrics["train/loss"]))
    trained = tmp_path / "clip.ckpt"
    cli.trainer.save_checkpoint(trained)

    reuse_dir = tmp_path / "reuse"
    reuse_dir.mkdir()
    video = dict(CLIP_VIDEO, reuse={"mode": "learned", "target_rate": 0.5})
    config = clip_config(reuse_dir, tiny_msrvtt, text_dir, video=video, init_from=str(trained), lr=0.01)
    cli = run_cli(["fit", "--config", str(config)])
    before = create_model(weights=trained).state_dict()
    after = cli.model.model.state_dict()
    changed = {k for k in after if k not in before or not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith("reuse.gates.") for k in changed)  # the towers stayed frozen
    assert {"train/reuse_cosine", "train/reuse_probability", "val/reuse_rate"} <= set(cli.trainer.callback_metrics)

    learned = reuse_dir / "learned.ckpt"
    cli.trainer.save_checkpoint(learned)
    # test with the plain config: the checkpoint's recorded settings (its learned reuse) fill in the model
    cli = run_cli(["test", "--config", str(clip_config(tmp_path, tiny_msrvtt, text_dir)), "--ckpt_path", str(learned)])
    assert cli.model.model.video_config.reuse.mode == "learned"
    assert 0.0 <= float(cli.trainer.callback_metrics["test/reuse_rate"]) < 1.0
