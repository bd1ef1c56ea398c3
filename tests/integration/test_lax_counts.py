"""Lax loading that counts: predict writes no embedding for a video it could not read and lists it;
validate/test report how many videos and captions they scored out of how many."""
import json

import pytest
import torch
import yaml
from helpers import tiny_config

from lightning_frozen.cli import run_cli
from lightning_frozen.data import MSRVTT
from lightning_frozen.data.synthetic import BROKEN_KINDS, make_synthetic_dataset

NUM_TEST = 5


@pytest.fixture(scope="module")
def broken_msrvtt(tmp_path_factory):
    """5 readable test videos and 4 broken ones (missing, empty, truncated, not a video) in every split."""
    return make_synthetic_dataset(tmp_path_factory.mktemp("lax") / "msrvtt", "msrvtt", num_train=6, num_test=NUM_TEST,
                                  num_frames_per_video=8, size=(32, 32), broken=True, seed=5)


def broken_paths(root):
    return sorted(entry["path"] for entry in json.loads((root / "synthetic.json").read_text())["broken"])


def test_predict_writes_only_readable_videos_and_lists_the_rest(tmp_path, broken_msrvtt, text_dir):
    config = tiny_config(tmp_path, broken_msrvtt, text_dir)
    out = tmp_path / "emb.pt"
    run_cli(["predict", "--config", str(config), "--embeddings.output", str(out),
             "--data.predict_dataset", "lightning_frozen.data.MSRVTT",
             "--data.predict_dataset.root", str(broken_msrvtt), "--data.predict_dataset.split", "test",
             "--data.predict_dataset.loading", "lax", "--data.predict_dataset.frame_size", "32"])
    saved = torch.load(out, weights_only=True)
    dataset = MSRVTT(broken_msrvtt, split="test", loading="lax")
    assert len(dataset) == NUM_TEST + len(BROKEN_KINDS)
    readable = sorted(p for p in dataset.records["path"] if p not in broken_paths(broken_msrvtt))
    assert sorted(saved["paths"]) == readable  # each readable video once, no stand-in for a broken one
    assert len(set(saved["ids"])) == len(saved["ids"]) == saved["video"].shape[0] == NUM_TEST
    assert saved["skipped"] == broken_paths(broken_msrvtt)


def test_test_reports_scored_out_of_total(tmp_path, broken_msrvtt, text_dir, caplog):
    caplog.set_level("INFO")
    config = tiny_config(tmp_path, broken_msrvtt, text_dir)
    data = yaml.safe_load(config.read_text())
    data["data"]["test_datasets"][0]["init_args"]["loading"] = "lax"
    config.write_text(yaml.safe_dump(data))
    cli = run_cli(["--config", str(config)], run=False)
    results = cli.trainer.test(cli.model, datamodule=cli.datamodule, verbose=False)[0]
    total = NUM_TEST + len(BROKEN_KINDS)
    assert results["test/videos_scored"] == NUM_TEST and results["test/videos_total"] == total
    assert results["test/captions_scored"] == NUM_TEST and results["test/captions_total"] == total
    assert f"scored {NUM_TEST} of {total} videos and {NUM_TEST} of {total} captions" in caplog.text
