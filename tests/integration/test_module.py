"""FrozenModule through the real CLI: training steps, evaluation keys, init_from, joint training."""
import math

import pytest
import torch
import yaml
from helpers import TINY_VIDEO, tiny_config

from lightning_frozen.arguments import UsageError
from lightning_frozen.cli import run_cli
from lightning_frozen.module import FrozenModule
from lightning_frozen.similarity import sim_matrix

METRIC_KEYS = [f"{d}_{m}" for d in ("t2v", "v2t") for m in ("R1", "R5", "R10", "R50", "MedR", "MeanR", "gmean")]
COUNT_KEYS = ["videos_scored", "videos_total", "captions_scored", "captions_total"]


def test_fit_steps_change_weights_and_log_loss(tmp_path, tiny_msrvtt, text_dir):
    config = tiny_config(tmp_path, tiny_msrvtt, text_dir, max_steps=3, limit_val_batches=0)
    cli = run_cli(["--config", str(config)], run=False)
    before = {k: v.clone() for k, v in cli.model.state_dict().items()}
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    assert cli.trainer.global_step == 3
    assert math.isfinite(float(cli.trainer.callback_metrics["train/loss"]))
    after = cli.model.state_dict()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert any(k.startswith("model.video_model.blocks") for k in changed)
    assert any(k.startswith("model.text_model") for k in changed)


def test_validate_and_test_report_every_metric(tmp_path, tiny_msrvtt, text_dir, caplog):
    caplog.set_level("INFO")
    config = tiny_config(tmp_path, tiny_msrvtt, text_dir)
    for command, prefix in (("validate", "val"), ("test", "test")):
        cli = run_cli(["--config", str(config)], run=False)
        results = getattr(cli.trainer, command)(cli.model, datamodule=cli.datamodule)[0]
        assert sorted(results) == sorted(f"{prefix}/{k}" for k in METRIC_KEYS + COUNT_KEYS)
        assert [results[f"{prefix}/{k}"] for k in COUNT_KEYS] == [6, 6, 6, 6]  # every video and caption scored
        assert 0 <= results[f"{prefix}/t2v_R1"] <= results[f"{prefix}/t2v_R5"] <= 100
        assert results[f"{prefix}/t2v_R10"] == 100.0  # 6 test videos: always within the top 10
        assert 1 <= results[f"{prefix}/t2v_MedR"] <= 6
    assert "R@1" in caplog.text and "test t2v" in caplog.text and "val v2t" in caplog.text
    assert "scored 6 of 6 videos and 6 of 6 captions" in caplog.text


def test_unknown_or_ill_typed_config_key_is_named(tmp_path, tiny_msrvtt, text_dir):
    config = tiny_config(tmp_path, tiny_msrvtt, text_dir)
    with pytest.raises(UsageError, match="frames"):
        run_cli(["--config", str(config), "--model.video.frames", "4"], run=False)
    with pytest.raises(UsageError, match="model.lr"):
        run_cli(["--config", str(config), "--model.lr", "fast"], run=False)


def test_joint_image_and_video_training_logs_each_loss(tmp_path, tiny_msrvtt, tiny_cc3m, text_dir):
    config = tiny_config(tmp_path, tiny_msrvtt, text_dir, cc3m_root=tiny_cc3m, max_steps=2, limit_val_batches=0)
    cli = run_cli(["--config", str(config)], run=False)
    seen = []
    original = cli.model.compute_loss

    def spy(batch):
        seen.append(tuple(batch["video"].shape[:2]))
        return original(batch)

    cli.model.compute_loss = spy
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    metrics = cli.trainer.callback_metrics
    assert {"train/loss_msrvtt", "train/loss_cc3m", "train/loss"} <= set(metrics)
    torch.testing.assert_close(metrics["train/loss"], metrics["train/loss_msrvtt"] + metrics["train/loss_cc3m"])
    assert (4, 2) in seen and (6, 1) in seen  # video batches of 4 two-frame clips, image batches of 6


def test_init_from_inflates_temporal_embedding(tmp_path, tiny_msrvtt, text_dir):
    one_frame = FrozenModule(video=dict(TINY_VIDEO, num_frames=1),
                             text=dict(name_or_path=text_dir, pretrained=False,
                                       config_overrides={"num_hidden_layers": 1}), projection_dim=16)
    torch.nn.init.normal_(one_frame.model.video_model.temporal_embed)
    path = tmp_path / "one_frame.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in one_frame.model.state_dict().items()}}, path)
    config = tiny_config(tmp_path, tiny_msrvtt, text_dir)
    cli = run_cli(["--config", str(config), "--model.init_from", str(path)], run=False)
    cli.model.configure_model()
    te = cli.model.model.video_model.temporal_embed.detach()
    assert te.shape == (1, 2, 32)  # tiny_config: 2 frames
    assert torch.equal(te[:, :1], one_frame.model.video_model.temporal_embed.detach())
    assert torch.count_nonzero(te[:, 1:]) == 0
    assert torch.equal(cli.model.model.vid_proj[0].weight, one_frame.model.vid_proj[0].weight)


def test_checkpoint_weights_win_and_init_from_is_not_read(tmp_path, tiny_msrvtt, text_dir):
    """With --ckpt_path the checkpoint is self-contained: a vanished init_from file does not matter."""
    config = tiny_config(tmp_path, tiny_msrvtt, text_dir, max_steps=1, limit_val_batches=0)
    trained = run_cli(["--config", str(config)], run=False)
    trained.trainer.fit(trained.model, datamodule=trained.datamodule)
    ckpt = tmp_path / "trained.ckpt"
    trained.trainer.save_checkpoint(ckpt)
    gone = tmp_path / "deleted_init.pth"
    cli = run_cli(["test", "--config", str(config), "--model.init_from", str(gone), "--ckpt_path", str(ckpt)])
    assert cli.trainer.callback_metrics["test/t2v_R10"] == 100.0
    for key, value in trained.model.state_dict().items():
        assert torch.equal(cli.model.state_dict()[key], value), key
    with pytest.raises(FileNotFoundError, match="deleted_init.pth"):
        run_cli(["test", "--config", str(config), "--model.init_from", str(gone)])


def test_checkpoint_settings_fill_in_what_config_and_command_line_leave_unset(tmp_path, tiny_msrvtt, text_dir):
    config = tiny_config(tmp_path, tiny_msrvtt, text_dir)
    saved = run_cli(["--config", str(config), "--model.lr", "0.003", "--model.video.depth", "1"], run=False)
    ckpt = tmp_path / "saved.ckpt"
    saved.trainer.strategy.connect(saved.model)
    saved.trainer.save_checkpoint(ckpt)
    plain = yaml.safe_load(config.read_text())
    del plain["model"]["lr"], plain["model"]["video"]["depth"]  # left for the checkpoint to say
    config.write_text(yaml.safe_dump(plain))
    cli = run_cli(["validate", "--config", str(config), "--ckpt_path", str(ckpt), "--model.temperature", "0.1"])
    assert cli.model.hparams.lr == 0.003 and len(cli.model.model.video_model.blocks) == 1  # from the checkpoint
    assert cli.model.hparams.temperature == 0.1  # the command line wins
    assert cli.model.hparams.projection_dim == 16  # the config wins (the checkpoint agrees here)

def test_parameter_groups_exclude_norms_biases_embeddings(tiny_text):
    module = FrozenModule(video=dict(TINY_VIDEO), text=tiny_text, projection_dim=16, weight_decay=0.05)
    decay, no_decay = module.parameter_groups()
    names = {id(p): n for n, p in module.model.named_parameters()}
    no_decay_names = {names[id(p)] for p in no_decay["params"]}
    decay_names = {names[id(p)] for p in decay["params"]}
    assert {"video_model.pos_embed", "video_model.temporal_embed", "video_model.cls_token", "video_model.norm.weight",
            "vid_proj.0.bias", "text_model.embeddings.word_embeddings.weight"} <= no_decay_names
    assert {"video_model.blocks.0.attn.qkv.weight", "vid_proj.0.weight",
            "video_model.patch_embed.proj.weight"} <= decay_names
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    assert len(decay_names) + len(no_decay_names) == len(list(module.model.parameters()))


def test_part_lr_gives_the_text_tower_its_own_named_groups(tiny_text):
    module = FrozenModule(video=dict(TINY_VIDEO), text=tiny_text, projection_dim=16, lr=1e-3, part_lr={"text": 1e-4})
    groups = module.parameter_groups()
    names = {id(p): n for n, p in module.model.named_parameters()}
    by_lr: dict[float, set[str]] = {}
    for group in groups:
        by_lr.setdefault(group["lr"], set()).update(names[id(p)] for p in group["params"])
    assert set(by_lr) == {1e-3, 1e-4}
    assert by_lr[1e-4] == {n for n in names.values() if n.startswith("text_model.")}
    assert "txt_proj.1.weight" in by_lr[1e-3] and "video_model.pos_embed" in by_lr[1e-3]
    assert sum(len(g["params"]) for g in groups) == len(list(module.model.parameters()))
    expected = [(1e-4, 0.0), (1e-4, 0.01), (1e-3, 0.0), (1e-3, 0.01)]
    assert sorted((g["lr"], g["weight_decay"]) for g in groups) == expected
    assert {g["name"] for g in groups} == {"video+temporal+projections", "video+temporal+projections/no_decay",
                                           "text", "text/no_decay"}
    assert [g["name"] for g in FrozenModule(video=dict(TINY_VIDEO), text=tiny_text).parameter_groups()] == \
        ["all", "all/no_decay"]
    with pytest.raises(ValueError, match=r"unknown parts \['txt'\]; parts: \['video', 'temporal'"):
        FrozenModule(video=dict(TINY_VIDEO), text=tiny_text, part_lr={"txt": 1e-4})


def test_lr_schedule_warmup_then_cosine(tiny_text):
    module = FrozenModule(video=dict(TINY_VIDEO), text=tiny_text, warmup_steps=4, schedule="cosine")
    factors = [module.lr_factor(step, 12) for step in range(13)]
    assert factors[:4] == [0.25, 0.5, 0.75, 1.0]
    assert factors[4] == pytest.approx(1.0) and factors[8] == pytest.approx(0.5) and factors[12] == pytest.approx(0.0)
    constant = FrozenModule(video=dict(TINY_VIDEO), text=tiny_text, warmup_steps=2, schedule="constant")
    assert [constant.lr_factor(s, 10) for s in (0, 1, 5, 9)] == [0.5, 1.0, 1.0, 1.0]


def test_predict_writes_searchable_embeddings(tmp_path, tiny_msrvtt, text_dir):
    config = tiny_config(tmp_path, tiny_msrvtt, text_dir)
    out = tmp_path / "emb.pt"
    args = ["predict", "--config", str(config), "--embeddings.output", str(out),
            "--data.predict_dataset", "lightning_frozen.data.MSRVTT",
            "--data.predict_dataset.root", str(tiny_msrvtt), "--data.predict_dataset.split", "test",
            "--data.predict_dataset.frame_size", "32"]
    run_cli(args)
    saved = torch.load(out, weights_only=True)
    assert len(saved["ids"]) == 6 and saved["video"].shape == (6, 16)
    torch.testing.assert_close(saved["video"].norm(dim=-1), torch.ones(6))
    with pytest.raises(FileExistsError, match="refusing to overwrite"):
        run_cli(args)


def test_sparse_clips_are_encoded_one_by_one_and_averaged_before_the_loss(tmp_path, tiny_msrvtt, text_dir):
    """clips_per_video: 2 (ClipBERT's sparse sampling): each clip through the video tower, the video's embedding
    the mean of its clips' unit embeddings, then the contrastive loss; evaluation reads several clips alike."""
    config = tiny_config(tmp_path, tiny_msrvtt, text_dir, max_steps=2, limit_val_batches=0)
    plain = yaml.safe_load(config.read_text())
    for group in ("train_datasets", "val_datasets"):
        plain["data"][group][0]["init_args"]["clips_per_video"] = 2
    config.write_text(yaml.safe_dump(plain))
    cli = run_cli(["--config", str(config)], run=False)
    model, original, seen = cli.model, cli.model.compute_loss, []

    def checked(batch):
        video = batch["video"]
        seen.append(tuple(video.shape))
        rng = torch.get_rng_state()  # the text tower's dropout draws the same masks in both
        text = model.model.encode_text(batch["input_ids"], batch["attention_mask"])
        clips = torch.stack([model.model.encode_video(video[:, i]) for i in range(video.shape[1])], dim=1)
        expected = model.loss_fn(sim_matrix(text, torch.nn.functional.normalize(clips, dim=-1).mean(1)))
        torch.set_rng_state(rng)
        loss = original(batch)
        torch.testing.assert_close(loss, expected)
        return loss

    model.compute_loss = checked
    cli.trainer.fit(model, datamodule=cli.datamodule)
    assert seen == [(4, 2, 2, 3, 32, 32)] * 2  # 4 videos, 2 clips of 2 frames each
    cli.trainer.limit_val_batches = 1.0
    results = cli.trainer.validate(model, datamodule=cli.datamodule)[0]
    assert results["val/videos_scored"] == 6 and 0 <= results["val/t2v_R1"] <= 100
