"""Bad input is found before the first step, and the message names the file or key (one test per defect)."""
import json
import shutil

import pytest
import pytorch_lightning as pl
import yaml
from helpers import tiny_config

from lightning_frozen.cli import run_cli
from lightning_frozen.data import MSRVTT, WebVid
from lightning_frozen.data.datamodule import FrozenDataModule
from lightning_frozen.data.synthetic import make_synthetic_dataset
from lightning_frozen.module import FrozenModule

ANNOTATION = "annotation/MSR_VTT.json"
TRAIN_LIST = "high-quality/structured-symlinks/train_list_jsfusion.txt"


@pytest.fixture
def editable_msrvtt(tmp_path, tiny_msrvtt):
    """The tiny MSR-VTT layout with its own metadata files (the videos are shared)."""
    root = tmp_path / "msrvtt"
    root.mkdir()
    for folder in ("annotation", "high-quality"):
        shutil.copytree(tiny_msrvtt / folder, root / folder)
    (root / "videos").symlink_to(tiny_msrvtt / "videos")
    return root


def edit_annotations(root, change):
    path = root / ANNOTATION
    data = json.loads(path.read_text())
    change(data["annotations"])
    path.write_text(json.dumps(data))


def first_annotation(annotations, video_id):
    return next(a for a in annotations if a["image_id"] == video_id)


def test_missing_null_and_empty_captions_are_named_with_file_and_field(editable_msrvtt):
    def damage(annotations):
        first_annotation(annotations, "video0")["caption"] = None
        del first_annotation(annotations, "video1")["caption"]
        first_annotation(annotations, "video2")["caption"] = "   "

    edit_annotations(editable_msrvtt, damage)
    with pytest.raises(ValueError) as error:
        MSRVTT(editable_msrvtt, split="train", frame_size=32)
    message = str(error.value)
    assert "MSR_VTT.json" in message and "'caption'" in message and "3 record(s)" in message
    assert "video0 (missing)" in message and "video1 (missing)" in message and "video2 (empty)" in message
    assert "loading: lax" in message  # the way out is named

    lax = MSRVTT(editable_msrvtt, split="train", frame_size=32, loading="lax")
    assert lax.num_dropped == 3
    captions = dict(zip(lax.records["id"], lax.records["captions"]))
    assert len(captions["video0"]) == 19 and len(captions["video3"]) == 20  # only the bad caption is left out
    assert all(isinstance(c, str) and c.strip() for caps in captions.values() for c in caps)


def test_a_chosen_test_caption_that_is_empty_drops_its_video_under_lax(editable_msrvtt):
    test_ids = (editable_msrvtt / "high-quality/structured-symlinks/val_list_jsfusion.txt").read_text().split()
    edit_annotations(editable_msrvtt, lambda a: [x.update(caption="") for x in a if x["image_id"] == test_ids[0]])
    with pytest.raises(ValueError, match=rf"{test_ids[0]} \(empty\)"):
        MSRVTT(editable_msrvtt, split="test", frame_size=32)
    lax = MSRVTT(editable_msrvtt, split="test", frame_size=32, loading="lax")
    assert test_ids[0] not in set(lax.records["id"]) and len(lax) == len(test_ids) - 1


def test_at_most_ten_offenders_are_listed_with_their_count(editable_msrvtt):
    edit_annotations(editable_msrvtt, lambda a: [x.update(caption="") for x in a])
    with pytest.raises(ValueError) as error:
        MSRVTT(editable_msrvtt, split="train", frame_size=32)
    message = str(error.value)
    assert "12 record(s)" in message and "(12 in all)" in message
    assert message.count("(empty)") == 10


def test_split_ids_without_annotation_are_named(editable_msrvtt):
    path = editable_msrvtt / TRAIN_LIST
    path.write_text(path.read_text() + "video900\nvideo901\n")
    with pytest.raises(ValueError) as error:
        MSRVTT(editable_msrvtt, split="train", frame_size=32)
    assert "train_list_jsfusion.txt" in str(error.value) and "video900, video901" in str(error.value)
    lax = MSRVTT(editable_msrvtt, split="train", frame_size=32, loading="lax")
    assert len(lax) == 12 and lax.num_dropped == 2


def test_broken_json_names_the_file(editable_msrvtt):
    (editable_msrvtt / ANNOTATION).write_text('{"annotations": [')
    with pytest.raises(ValueError, match="MSR_VTT.json' is not valid JSON"):
        MSRVTT(editable_msrvtt, split="train")


def test_json_annotations_with_a_byte_order_mark_are_read_as_a_csv_with_one_is(editable_msrvtt):
    path = editable_msrvtt / ANNOTATION
    plain = MSRVTT(editable_msrvtt, split="train", frame_size=32).records
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    marked = MSRVTT(editable_msrvtt, split="train", frame_size=32).records
    assert list(marked["id"]) == list(plain["id"]) and list(marked["captions"]) == list(plain["captions"])


def test_webvid_empty_caption_and_broken_csv_name_the_file(tmp_path):
    root = make_synthetic_dataset(tmp_path / "webvid", "webvid", num_train=3, num_test=1, num_frames_per_video=2,
                                  size=(16, 16))
    csv = root / "metadata" / "results_2M_train.csv"
    lines = csv.read_text().splitlines()
    header = lines[0].split(",")
    row = lines[1].split(",")
    row[header.index("name")] = ""
    csv.write_text("\n".join([lines[0], ",".join(row), *lines[2:]]) + "\n")
    with pytest.raises(ValueError, match=r"results_2M_train.csv.*'name'"):
        WebVid(root, split="train")
    csv.write_text('videoid,page_dir,name\n1,"unterminated,x\n')
    with pytest.raises(ValueError, match="results_2M_train.csv' is not a readable CSV"):
        WebVid(root, split="train")


def test_projection_dim_zero_is_refused_at_construction(text_dir):
    with pytest.raises(ValueError, match="projection_dim must be >= 1, got 0"):
        FrozenModule(text={"name_or_path": text_dir, "pretrained": False}, projection_dim=0)


def _fit_cli(config, *extra):
    cli = run_cli(["--config", str(config), *extra], run=False)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    return cli


def test_max_length_beyond_the_text_model_positions_fails_before_the_first_step(tmp_path, tiny_msrvtt, text_dir):
    config = tiny_config(tmp_path, tiny_msrvtt, text_dir, max_steps=2)
    with pytest.raises(ValueError, match=r"data.max_length is 600 .* has 512 positions: set data.max_length <= 512"):
        _fit_cli(config, "--data.max_length", "600")


def test_more_frames_than_the_temporal_embedding_fails_before_the_first_step(tmp_path, tiny_msrvtt, text_dir):
    # The CLI takes the data's frames per clip from the model; in Python they can disagree.
    config = tiny_config(tmp_path, tiny_msrvtt, text_dir, max_steps=2)
    cli = run_cli(["--config", str(config)], run=False)
    datamodule = FrozenDataModule(train_datasets=cli.datamodule.datasets["train"], train_batch_sizes=4,
                                  tokenizer=text_dir, input_res=32, max_length=16, num_frames=8)
    trainer = pl.Trainer(accelerator="cpu", max_steps=2, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, default_root_dir=tmp_path)
    with pytest.raises(ValueError, match="reads 8 frames per clip but model.video.num_frames is 2"):
        trainer.fit(cli.model, datamodule=datamodule)


def test_monitor_never_logged_is_an_error_listing_the_logged_keys(tmp_path, tiny_msrvtt, text_dir):
    config = tiny_config(tmp_path, tiny_msrvtt, text_dir, stages=[{"frames": 1, "epochs": 1}], limit_train_batches=1)
    data = yaml.safe_load(config.read_text())
    data["trainer"]["callbacks"][0]["init_args"]["monitor"] = "val/recall_at_1"
    config.write_text(yaml.safe_dump(data))
    with pytest.raises(ValueError, match=r"monitor 'val/recall_at_1' was not logged .*'val/t2v_R1'"):
        _fit_cli(config)


def test_max_epochs_that_disagrees_with_the_curriculum_is_refused(tmp_path, tiny_msrvtt, text_dir):
    stages = [{"frames": 1, "epochs": 1}, {"frames": 2, "epochs": 1}]
    config = tiny_config(tmp_path, tiny_msrvtt, text_dir, stages=stages, limit_train_batches=1)
    with pytest.raises(ValueError, match=r"trainer.max_epochs is 5 but the FrameCurriculum's stages add up to 2"):
        _fit_cli(config, "--trainer.max_epochs", "5")


def test_checkpoint_folder_of_another_run_is_refused_before_training(tmp_path, tiny_msrvtt, text_dir):
    config = tiny_config(tmp_path, tiny_msrvtt, text_dir, stages=[{"frames": 1, "epochs": 1}], limit_train_batches=1)
    stages = tmp_path / "stages"
    stages.mkdir()
    (stages / "stage0-1f-best.ckpt").write_bytes(b"an earlier run's best model")
    cli = run_cli(["--config", str(config)], run=False)
    steps = []

    class StepSpy(pl.Callback):
        def on_train_batch_start(self, *args):
            steps.append(1)

    cli.trainer.callbacks.append(StepSpy())
    refusal = r"stages already holds checkpoints .*stage0-1f-best.ckpt.*--ckpt_path last"
    with pytest.raises(FileExistsError, match=refusal):
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    assert steps == []  # found at setup, not after epoch 0
    assert (stages / "stage0-1f-best.ckpt").read_bytes() == b"an earlier run's best model"


def test_validate_never_writes_a_checkpoint(tmp_path, tiny_msrvtt, text_dir):
    config = tiny_config(tmp_path, tiny_msrvtt, text_dir, stages=[{"frames": 1, "epochs": 1}])
    cli = run_cli(["--config", str(config)], run=False)
    cli.trainer.validate(cli.model, datamodule=cli.datamodule)
    assert not list(tmp_path.rglob("*.ckpt"))
