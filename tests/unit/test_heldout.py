"""Held-out selection: validation never reads the test set; MSR-VTT's held-out videos come out of train."""
import random
from pathlib import Path

import pytest
import yaml

from lightning_frozen.data import MSRVTT
from lightning_frozen.data.msrvtt import held_out_ids

CONFIGS = sorted((Path(__file__).parents[2] / "configs").glob("*.yaml"))
TRAIN_LIST = "high-quality/structured-symlinks/train_list_jsfusion.txt"


def ids(dataset):
    return set(dataset.records["id"])


def test_holdout_splits_the_train_list_in_two_and_never_touches_test(tiny_msrvtt):
    train = MSRVTT(tiny_msrvtt, split="train", holdout=4)
    val = MSRVTT(tiny_msrvtt, split="val", holdout=4)
    test = MSRVTT(tiny_msrvtt, split="test")
    listed = set((tiny_msrvtt / TRAIN_LIST).read_text().split())
    assert len(val) == 4 and len(train) == len(listed) - 4
    assert ids(train) | ids(val) == listed and not ids(train) & ids(val)
    assert not ids(val) & ids(test)
    assert all(len(c) == 1 for c in val.records["captions"]) and val.mode == "uniform"  # evaluated like test


def test_holdout_depends_on_the_ids_alone():
    listed = [f"video{i}" for i in range(50)]
    shuffled = random.Random(1).sample(listed, len(listed))
    assert held_out_ids(listed, 7) == held_out_ids(shuffled, 7)
    assert len(held_out_ids(listed, 0.1)) == 5
    with pytest.raises(ValueError, match="would leave no training video"):
        held_out_ids(listed, 50)


def test_jsfusion_val_without_holdout_names_the_fix(tiny_msrvtt):
    with pytest.raises(ValueError, match=r"no validation list \(val_list_jsfusion.txt is the test set\): set holdout"):
        MSRVTT(tiny_msrvtt, split="val")
    with pytest.raises(ValueError, match="holdout must be a count"):
        MSRVTT(tiny_msrvtt, split="train", holdout=1.5)


def _datasets(section):
    return [d for d in section or [] if "MSRVTT" in d.get("class_path", "")]


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.name)
def test_no_config_selects_on_the_test_split(config):
    data = yaml.safe_load(config.read_text()).get("data", {})
    for val in _datasets(data.get("val_datasets")):
        args = val.get("init_args", {})
        assert args.get("split") != "test", f"{config.name} validates (selects checkpoints) on MSR-VTT test"
        if args.get("split") == "val" and args.get("cut", "jsfusion") != "full":
            trains = [t.get("init_args", {}) for t in _datasets(data.get("train_datasets"))
                      if t.get("init_args", {}).get("root") == args.get("root")]
            assert all(t.get("holdout") == args.get("holdout") for t in trains), \
                f"{config.name}: train and val must carve the same holdout"
