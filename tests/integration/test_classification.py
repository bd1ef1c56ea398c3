"""VideoClassifier through `lightning-frozen fit/test` (the CLI's model class_path) on a Kinetics-layout source."""
import pytest
import torch
import yaml
from helpers import TINY_VIDEO

from lightning_frozen.classification import VideoClassifier
from lightning_frozen.cli import run_cli
from lightning_frozen.data import Kinetics
from lightning_frozen.data.synthetic import BROKEN_KINDS, action_labels, make_synthetic_dataset
from lightning_frozen.similarity import normalize
from lightning_frozen.tokenizer import build_tokenizer

NUM_TRAIN, NUM_TEST = 12, 6


@pytest.fixture(scope="module")
def kinetics(tmp_path_factory):
    """8 classes (2 shapes x 4 directions), 12 train and 6 val/test clips of 32x48, and 4 broken files a split."""
    return make_synthetic_dataset(tmp_path_factory.mktemp("data") / "kinetics", "kinetics", num_train=NUM_TRAIN,
                                  num_test=NUM_TEST, num_frames_per_video=8, size=(32, 48), seed=9, broken=True)


def kinetics_split(root, split: str, **extra) -> dict:
    return {"class_path": "lightning_frozen.data.Kinetics",
            "init_args": {"root": str(root), "split": split, "labels": "labels.txt", "frame_size": None,
                          "loading": "lax", **extra}}


def classifier_config(tmp_path, root, text_dir, **model) -> str:
    """A tiny VideoClassifier run: one epoch (4 steps); test with 2 clips x 3 crops a video."""
    config = {
        "seed_everything": 0,
        "trainer": {"accelerator": "cpu", "devices": 1, "max_epochs": 1, "logger": False, "enable_progress_bar": False,
                    "enable_model_summary": False, "num_sanity_val_steps": 0, "default_root_dir": str(tmp_path / "run"),
                    "callbacks": [{"class_path": "pytorch_lightning.callbacks.ModelCheckpoint",
                                   "init_args": {"dirpath": str(tmp_path / "ckpt"), "filename": "last"}}]},
        "model": {"class_path": "lightning_frozen.classification.VideoClassifier",
                  "init_args": {"video": dict(TINY_VIDEO, num_frames=2, time_init="rand"),
                                "text": {"name_or_path": text_dir, "pretrained": False,
                                         "config_overrides": {"num_hidden_layers": 1}},
                                "projection_dim": 16, "num_classes": 8, "lr": 1e-3, **model}},
        "data": {"train_datasets": [kinetics_split(root, "train", csv="train.csv")], "train_batch_sizes": 4,
                 "val_datasets": [kinetics_split(root, "val")],
                 "test_datasets": [kinetics_split(root, "test", csv="test.csv", clips_per_video=2)],
                 "test_crops": 3, "eval_batch_size": 4, "input_res": 32, "max_length": 16, "hflip": False},
    }
    path = tmp_path / "classify.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


def test_fit_then_test_through_the_cli_counts_each_readable_video_once(tmp_path, kinetics, text_dir):
    config = classifier_config(tmp_path, kinetics, text_dir)
    fit = run_cli(["fit", "--config", config])
    assert isinstance(fit.model, VideoClassifier) and fit.trainer.global_step == 4  # 16 items, batches of 4
    assert 0 <= fit.trainer.callback_metrics["val/top1"] <= fit.trainer.callback_metrics["val/top5"] <= 100
    ckpt = tmp_path / "ckpt" / "last.ckpt"
    saved = torch.load(ckpt, weights_only=True)
    assert saved["class_names"] == action_labels(2)
    test = run_cli(["test", "--config", config, "--ckpt_path", str(ckpt)])
    metrics = test.trainer.callback_metrics
    assert metrics["test/videos_scored"] == NUM_TEST  # the 4 broken files are skipped, their stand-ins not re-counted
    assert 0 <= metrics["test/top1"] <= metrics["test/top5"] <= 100
    test_set = test.datamodule.datasets["test"][0]
    assert test_set.num_skipped >= len(BROKEN_KINDS)  # every unreadable file counted (some more than once)
    for key, value in fit.model.state_dict().items():  # the checkpoint's weights, not a fresh start
        assert torch.equal(test.model.state_dict()[key], value), key


@pytest.mark.parametrize("train_blocks", [0, 1])
def test_linear_probe_and_partial_fine_tuning_train_only_their_part(tmp_path, kinetics, text_dir, train_blocks):
    cli = run_cli(["--config", classifier_config(tmp_path, kinetics, text_dir, train_blocks=train_blocks),
                   "--trainer.limit_val_batches", "0"], run=False)
    before = {k: v.clone() for k, v in cli.model.state_dict().items()}
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    changed = {k for k, v in cli.model.state_dict().items() if not torch.equal(before[k], v)}
    assert {"head.weight", "head.bias"} <= changed
    assert not any(k.startswith(("model.text_model.", "model.txt_proj.", "model.vid_proj.")) for k in changed)
    tower = {k for k in changed if k.startswith("model.video_model.")}
    if train_blocks == 0:
        assert not tower
    else:
        assert any(k.startswith("model.video_model.blocks.1.") for k in tower)
        assert all(k.startswith(("model.video_model.blocks.1.", "model.video_model.norm.")) for k in tower)


def test_zero_shot_scores_are_cosines_to_the_class_prompts(tmp_path, kinetics, text_dir):
    config = classifier_config(tmp_path, kinetics, text_dir, head="zero_shot", prompt="a video of {label}",
                               temperature=0.1)
    cli = run_cli(["test", "--config", config])
    assert 0 <= cli.trainer.callback_metrics["test/top1"] <= 100
    model = cli.model.eval()
    tokens = build_tokenizer(text_dir)([f"a video of {label}" for label in action_labels(2)], padding=True,
                                       return_tensors="pt")
    clip = torch.randn(3, 2, 3, 32, 32)
    with torch.no_grad():
        classes = normalize(model.model.encode_text(tokens["input_ids"], tokens["attention_mask"]))
        expected = normalize(model.model.encode_video(clip)) @ classes.t() / 0.1
        torch.testing.assert_close(model(clip)[:, 0], expected, atol=1e-5, rtol=1e-5)


def test_kinetics_layouts_agree_and_name_their_problems(kinetics, tmp_path):
    folders = Kinetics(kinetics, split="train", labels="labels.txt", frame_size=None, loading="lax")
    table = Kinetics(kinetics, split="train", csv="train.csv", labels="labels.txt", frame_size=None, loading="lax")
    assert folders.labels == table.labels == action_labels(2)
    assert len(table) == NUM_TRAIN + len(BROKEN_KINDS)
    assert len(folders) == NUM_TRAIN + len(BROKEN_KINDS) - 1  # a missing file has no folder entry
    item = folders[0]
    assert item["text"] == folders.labels[item["meta"]["label"]] and item["meta"]["path"].split("/")[1] == item["text"]
    (tmp_path / "few.txt").write_text("circle moving left\n")
    with pytest.raises(ValueError, match="with a class not in"):
        Kinetics(kinetics, split="train", csv="train.csv", labels=tmp_path / "few.txt")
    (tmp_path / "loose").mkdir()
    (tmp_path / "loose" / "train").mkdir()
    (tmp_path / "loose" / "train" / "clip.mp4").write_bytes(b"x")
    with pytest.raises(ValueError, match="no class folder"):
        Kinetics(tmp_path / "loose", split="train")
