"""Each layout loads through its dataset class; strict vs lax on broken files."""

import json
import os
import pickle
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import frames
from torch.utils.data import DataLoader

from lightning_frozen.data import (
    MSRVTT,
    ConceptualCaptions3M,
    RunState,
    VideoFolder,
    VideoReadError,
    WebVid,
)
from lightning_frozen.data.msrvtt import load_caption_index
from lightning_frozen.data.synthetic import BROKEN_KINDS, make_synthetic_dataset
from lightning_frozen.safe_load import UnsafePickleError, load_pickle

NUM_TRAIN, NUM_TEST = 6, 3
SMALL = dict(num_train=NUM_TRAIN, num_test=NUM_TEST, num_frames_per_video=8, size=(32, 48), fps=8)


@pytest.fixture(scope="session")
def msrvtt(tmp_path_factory):
    return make_synthetic_dataset(tmp_path_factory.mktemp("d") / "msrvtt", "msrvtt", broken=True, **SMALL)


@pytest.fixture(scope="session")
def webvid(tmp_path_factory):
    return make_synthetic_dataset(tmp_path_factory.mktemp("d") / "webvid", "webvid", broken=True, **SMALL)


@pytest.fixture(scope="session")
def cc3m(tmp_path_factory):
    return make_synthetic_dataset(tmp_path_factory.mktemp("d") / "cc3m", "cc3m", broken=True, **SMALL)


def captions_by_video(root):
    data = json.loads((root / "annotation" / "MSR_VTT.json").read_text())
    result = {}
    for a in data["annotations"]:
        result.setdefault(a["image_id"], []).append(a["caption"])
    return result


def check_item(item, frames, size, dataset):
    assert item["video"].dtype == torch.uint8
    assert item["video"].shape == (frames, 3, size, size)
    assert set(item["meta"]) >= {"id", "path", "dataset", "index"}
    assert item["meta"]["dataset"] == dataset
    assert not Path(item["meta"]["path"]).is_absolute()


def test_msrvtt_train_draws_one_of_the_video_captions(msrvtt):
    ds = frames(MSRVTT(msrvtt, cut="jsfusion", split="train", frame_size=32), 2)
    assert len(ds) == NUM_TRAIN + len(BROKEN_KINDS) and ds.mode == "rand"
    captions = captions_by_video(msrvtt)
    item = ds[1]
    check_item(item, 2, 32, "msrvtt")
    assert item["meta"]["id"] == "video1" and item["meta"]["path"] == "videos/all/video1.mp4"
    assert item["text"] in captions["video1"]
    drawn = set()
    for epoch in range(30):
        ds.run_state.begin_epoch(epoch)
        drawn.add(ds[1]["text"])
    assert len(drawn) > 3  # a random caption per epoch


def test_item_randomness_depends_on_run_seed_epoch_and_position_only(msrvtt):
    """Exact resume: an item is the same whatever was read before it and whichever worker reads it."""
    ds = MSRVTT(msrvtt, cut="jsfusion", split="train", frame_size=32)
    ds.use_run_state(RunState(seed=7, num_frames=4))
    forward = [ds[i] for i in range(NUM_TRAIN)]
    torch.manual_seed(123)  # the global RNG plays no part
    backward = [ds[i] for i in reversed(range(NUM_TRAIN))][::-1]
    for a, b in zip(forward, backward):
        assert torch.equal(a["video"], b["video"]) and a["text"] == b["text"]
    ds.run_state.begin_epoch(1)
    other_epoch = [ds[i] for i in range(NUM_TRAIN)]
    assert any(not torch.equal(a["video"], b["video"]) for a, b in zip(forward, other_epoch))
    ds.use_run_state(RunState(seed=8, num_frames=4))
    other_seed = [ds[i] for i in range(NUM_TRAIN)]
    assert any(not torch.equal(a["video"], b["video"]) for a, b in zip(forward, other_seed))


def test_msrvtt_jsfusion_test_uses_the_caption_index(msrvtt):
    ds = frames(MSRVTT(msrvtt, cut="jsfusion", split="test", frame_size=None), 3)
    captions = captions_by_video(msrvtt)
    with open(msrvtt / "high-quality/structured-symlinks/jsfusion_val_caption_idx.pkl", "rb") as f:
        index = pickle.load(f)  # our own generated file
    item = ds[0]
    assert ds.mode == "uniform" and item["video"].shape == (3, 3, 32, 48)
    assert item["meta"]["id"] == f"video{NUM_TRAIN}"
    assert item["text"] == captions[item["meta"]["id"]][index[item["meta"]["id"]]]


def test_msrvtt_full_test_keeps_every_caption(msrvtt):
    ds = frames(MSRVTT(msrvtt, cut="full", split="test", frame_size=32), 1)
    item = ds[0]
    assert isinstance(item["text"], list) and len(item["text"]) == 20 == ds.max_captions
    assert item["text"] == captions_by_video(msrvtt)[item["meta"]["id"]]
    assert item["meta"]["caption_mask"] == [True] * 20
    val = MSRVTT(msrvtt, cut="full", split="val", frame_size=32)
    val_ids = (msrvtt / "high-quality/structured-symlinks/val_list_full.txt").read_text().split()
    assert list(val.records["id"]) == val_ids


def test_msrvtt_multi_caption_pads_with_a_mask(msrvtt):
    ds = MSRVTT(msrvtt, cut="full", split="test", frame_size=32)
    ds.records.at[0, "captions"] = ds.records.at[0, "captions"][:5]
    item = ds[0]
    assert item["text"][:5] == ds.records.at[0, "captions"] and item["text"][5:] == [""] * 15
    assert item["meta"]["caption_mask"] == [True] * 5 + [False] * 15


def test_msrvtt_miech_test_uses_first_caption(msrvtt):
    ds = MSRVTT(msrvtt, cut="miech", split="test", frame_size=32)
    assert ds[0]["text"] == captions_by_video(msrvtt)[ds[0]["meta"]["id"]][0]


def test_msrvtt_missing_files_are_named(msrvtt, tmp_path):
    with pytest.raises(ValueError, match="cut"):
        MSRVTT(msrvtt, cut="1k-B")
    copy = tmp_path / "copy"
    (copy / "annotation").mkdir(parents=True)
    (copy / "annotation/MSR_VTT.json").write_bytes((msrvtt / "annotation/MSR_VTT.json").read_bytes())
    with pytest.raises(FileNotFoundError, match="train_list_jsfusion.txt"):
        MSRVTT(copy, cut="jsfusion", split="train")
    lists = copy / "high-quality/structured-symlinks"
    lists.mkdir(parents=True)
    (lists / "val_list_jsfusion.txt").write_text("video6\n")
    with pytest.raises(FileNotFoundError, match="jsfusion_val_caption_idx.pkl"):
        MSRVTT(copy, cut="jsfusion", split="test")
    with pytest.raises(FileNotFoundError, match="MSR_VTT.json"):
        MSRVTT(tmp_path, cut="jsfusion")


def test_frames_per_clip_follow_the_run_state_and_its_schedule(msrvtt):
    ds = frames(MSRVTT(msrvtt, split="train", frame_size=32), 1)
    assert ds[0]["video"].shape[0] == 1
    ds.run_state.set_num_frames(4)
    assert ds[0]["video"].shape[0] == 4
    with pytest.raises(ValueError, match="num_frames"):
        ds.run_state.set_num_frames(0)
    ds.run_state.set_schedule(lambda epoch: 1 if epoch < 2 else 2)  # a frame curriculum
    assert ds.num_frames == 1 and ds.run_state.epoch == 0
    ds.run_state.begin_epoch(2)
    assert ds[0]["video"].shape[0] == 2


@pytest.mark.parametrize("kind", BROKEN_KINDS)
def test_strict_raises_on_every_kind_of_broken_file(msrvtt, kind):
    manifest = json.loads((msrvtt / "synthetic.json").read_text())
    path = next(b["path"] for b in manifest["broken"] if b["kind"] == kind)
    ds = MSRVTT(msrvtt, split="train", frame_size=32, loading="strict")
    position = int(np.flatnonzero(ds.records["path"] == path)[0])
    with pytest.raises(VideoReadError) as info:
        ds[position]
    assert info.value.path == path


def test_lax_skips_broken_files_to_the_next_index_and_counts(msrvtt):
    ds = MSRVTT(msrvtt, split="train", frame_size=32, loading="lax")
    first_broken = NUM_TRAIN  # the four broken entries close the list
    item = ds[first_broken]
    assert item["meta"]["index"] == 0  # wrapped past all four broken ones
    assert ds.num_skipped == 4
    ds.reset_skipped()
    assert ds.num_skipped == 0
    indices = [ds[i]["meta"]["index"] for i in range(len(ds))]
    assert indices == list(range(NUM_TRAIN)) + [0] * 4
    assert ds.num_skipped == 4 + 3 + 2 + 1


def test_lax_skip_count_survives_worker_processes(msrvtt):
    ds = MSRVTT(msrvtt, split="train", frame_size=32, loading="lax")
    loader = DataLoader(ds, batch_size=None, num_workers=2)
    items = list(loader)
    assert len(items) == len(ds) and all(i["video"].shape == (4, 3, 32, 32) for i in items)
    assert ds.num_skipped == 10
    ds.reset_skipped()
    list(DataLoader(ds, batch_size=None, num_workers=2))
    assert ds.num_skipped == 10


def test_lax_gives_up_with_a_clear_error_when_everything_is_broken(msrvtt):
    ds = MSRVTT(msrvtt, split="train", frame_size=32, loading="lax", max_replace_attempts=3)
    with pytest.raises(RuntimeError, match="unreadable"):
        ds[NUM_TRAIN]


def test_subsample_and_max_samples(msrvtt):
    full = MSRVTT(msrvtt, split="train", frame_size=32)
    half = MSRVTT(msrvtt, split="train", frame_size=32, subsample=0.5, seed=1)
    assert len(half) == 5 and set(half.records["id"]) <= set(full.records["id"])
    assert list(MSRVTT(msrvtt, split="train", subsample=3, seed=1).records["id"]) == list(
        MSRVTT(msrvtt, split="train", subsample=3, seed=1).records["id"])
    with pytest.raises(ValueError, match="subsample"):
        MSRVTT(msrvtt, split="train", subsample=1.5)
    capped = MSRVTT(msrvtt, split="train", frame_size=32, max_samples=4)
    assert len(capped) == 4
    epoch0 = [capped._record_index(i) for i in range(4)]
    capped.run_state.begin_epoch(1)
    epoch1 = [capped._record_index(i) for i in range(4)]
    assert len(set(epoch0)) == 4 and epoch0 != epoch1
    capped.run_state.begin_epoch(0)
    assert [capped._record_index(i) for i in range(4)] == epoch0


def test_persistent_workers_follow_the_run_state_epoch(msrvtt):
    # Workers keep their own copy of the dataset across epochs; the epoch's subset must still
    # follow the run state's epoch, written in the main process.
    class Undecoded(MSRVTT):  # which records are drawn is the point here, not their pixels
        def _decode(self, record, generator):
            return torch.zeros(1, 3, 2, 2, dtype=torch.uint8)

    capped = Undecoded(msrvtt, split="train", max_samples=4)
    loader = torch.utils.data.DataLoader(capped, batch_size=4, num_workers=1, persistent_workers=True,
                                         collate_fn=lambda items: [item["meta"]["id"] for item in items])
    ids = list(capped.records["id"])
    for epoch in (0, 1, 2):
        capped.run_state.begin_epoch(epoch)
        (batch,) = list(loader)
        order = np.random.default_rng([capped.seed, epoch]).permutation(len(ids))[:4]
        assert batch == [ids[i] for i in order]


def test_webvid_layout(webvid):
    ds = frames(WebVid(webvid, split="train", frame_size=32, max_caption_words=3), 2)
    table = pd.read_csv(webvid / "metadata/results_2M_train.csv", dtype=str)
    item = ds[2]
    check_item(item, 2, 32, "webvid")
    row = table.iloc[2]
    assert item["meta"]["path"] == f"videos/{row['page_dir']}/{row['videoid']}.mp4"
    assert item["text"] == " ".join(row["name"].split()[:3])
    val = WebVid(webvid, split="test", frame_size=32, loading="lax")
    assert len(val) == NUM_TEST + len(BROKEN_KINDS)
    [val[i] for i in range(len(val))]
    assert val.num_skipped == 10
    with pytest.raises(FileNotFoundError, match="results_10M_train.csv"):
        WebVid(webvid, cut="10M")


def test_webvid_reports_missing_columns(webvid, tmp_path):
    (tmp_path / "m.csv").write_text("videoid,name\n1,a\n")
    with pytest.raises(ValueError, match="page_dir"):
        WebVid(tmp_path, metadata_csv="m.csv")


def test_cc3m_layout(cc3m):
    ds = frames(ConceptualCaptions3M(cc3m, split="train", frame_size=32), 4)
    table = pd.read_csv(cc3m / "metadata/cc3m_training_success_full.tsv", sep="\t")
    item = ds[0]
    check_item(item, 1, 32, "cc3m")  # images are one-frame clips whatever num_frames says
    name = str(zlib.crc32(table["thumbnailUrl"][0].encode("utf-8")) & 0xFFFFFFFF)
    assert item["meta"]["path"] == f"training/{name}" and item["text"] == table["caption"][0]
    strict = ConceptualCaptions3M(cc3m, split="val", frame_size=32)
    for kind_position in range(NUM_TEST, NUM_TEST + 4):
        with pytest.raises(VideoReadError):
            strict[kind_position]
    lax = ConceptualCaptions3M(cc3m, split="val", frame_size=32, loading="lax")
    assert [lax[i]["meta"]["index"] for i in range(len(lax))] == [0, 1, 2, 0, 0, 0, 0]
    assert lax.num_skipped == 10


def test_video_folder(webvid, tmp_path):
    videos = webvid / "videos"
    ds = VideoFolder(videos, frame_size=32, loading="lax")
    expected = sorted(p.relative_to(videos).as_posix() for p in videos.rglob("*.mp4"))
    assert list(ds.records["path"]) == expected
    item = ds[0]
    check_item(item, 4, 32, "folder")
    assert item["text"] == Path(expected[0]).stem
    by_path = tmp_path / "by_path.csv"
    pd.DataFrame({"path": expected[:2], "caption": ["first", "second"]}).to_csv(by_path, index=False)
    ds = VideoFolder(videos, captions_csv=by_path, frame_size=32)
    assert [ds[0]["text"], ds[1]["text"], ds[2]["text"]] == ["first", "second", Path(expected[2]).stem]
    by_id = tmp_path / "by_id.csv"
    pd.DataFrame({"id": [Path(expected[1]).stem], "caption": ["hello"]}).to_csv(by_id, index=False)
    assert VideoFolder(videos, captions_csv=by_id, frame_size=32)[1]["text"] == "hello"
    pd.DataFrame({"id": ["nope"], "caption": ["x"]}).to_csv(by_id, index=False)
    with pytest.raises(ValueError, match="nope"):
        VideoFolder(videos, captions_csv=by_id)
    with pytest.raises(FileNotFoundError, match="no files"):
        VideoFolder(tmp_path)


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_restricted_unpickler_refuses_code_and_never_runs_it(tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pkl"
    evil.write_bytes(pickle.dumps({"video7010": _Payload(marker)}))
    with pytest.raises(UnsafePickleError, match="system"):
        load_caption_index(evil)
    assert not marker.exists()
    evil.write_bytes(pickle.dumps(_Payload(marker)))
    with pytest.raises(UnsafePickleError):
        load_pickle(evil)
    assert not marker.exists()


def test_restricted_unpickler_reads_plain_and_numpy_integer_indices(tmp_path):
    good = tmp_path / "idx.pkl"
    good.write_bytes(pickle.dumps({"video1": 3, "video2": np.int64(7)}))
    assert load_caption_index(good) == {"video1": 3, "video2": 7}
    good.write_bytes(pickle.dumps(["video1"]))
    with pytest.raises(ValueError, match="dict"):
        load_caption_index(good)
    good.write_bytes(pickle.dumps({"video1": np.float64(1.0)}))
    with pytest.raises(ValueError, match="idx.pkl.*not str -> int"):
        load_caption_index(good)
