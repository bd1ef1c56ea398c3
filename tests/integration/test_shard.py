"""`lightning-frozen shard`: every readable sample once with its bytes, broken sources listed and left out,
shuffled, never overwriting, and resumable after a kill in either step."""
import io
import json
import os
import signal
import subprocess
import sys
import time

import litdata
import pandas as pd
import pytest

from lightning_frozen.data import MSRVTT, WebVid
from lightning_frozen.data.shard import REPORT, shard_dataset
from lightning_frozen.data.synthetic import make_synthetic_dataset
from lightning_frozen.data.webvid import cut_caption


def _samples(shards) -> list[dict]:
    """The raw samples of a shard folder, in index order, read with LitData itself."""
    dataset = litdata.StreamingDataset(str(shards))
    return [dataset[i] for i in range(len(dataset))]


def test_shards_hold_each_readable_clip_once_with_its_bytes_in_shuffled_order(webvid_shards):
    src, shards, summary = webvid_shards
    table = pd.read_csv(src / "metadata" / "results_2M_train.csv", dtype=str)
    manifest = json.loads((src / "synthetic.json").read_text())
    paths = "videos/" + table["page_dir"] + "/" + table["videoid"] + ".mp4"
    broken = {b["path"]: b["kind"] for b in manifest["broken"] if b["path"] in set(paths)}
    assert sorted(broken.values()) == ["empty", "missing", "not_video", "truncated"]

    # Broken sources: listed with their reason, counted, left out.
    assert set(summary.broken) == set(broken)
    reasons = {kind: summary.broken[path] for path, kind in broken.items()}
    assert "does not exist" in reasons["missing"] and "empty" in reasons["empty"]
    assert "InvalidData" in reasons["not_video"]
    report = json.loads((shards / REPORT).read_text())
    assert report["broken"] == summary.broken and report["samples"] == summary.samples == len(table) - 4

    samples = _samples(shards)
    assert len(samples) == len(table) - 4
    captions = dict(zip(paths, table["name"]))
    for sample in samples:
        assert (src / sample["path"]).read_bytes() == bytes(sample["media"])
        assert json.loads(sample["captions"]) == [cut_caption(captions[sample["path"]], 64, 512)]
        assert sample["kind"] == "video" and sample["path"].endswith(f"/{sample['id']}.mp4")
    # One worker writes the inputs in order: the records WebVid lists, shuffled with the seed, broken ones out.
    expected = WebVid(src).records.sample(frac=1.0, random_state=0)["path"]
    expected = [p for p in expected if p not in broken]
    assert [s["path"] for s in samples] == expected
    assert expected != sorted(expected)  # the metadata order (by page) is gone
    assert len(json.loads((shards / "index.json").read_text())["chunks"]) >= 4


def test_images_are_sharded_as_stored(cc3m_shards):
    src, shards = cc3m_shards
    samples = _samples(shards)
    assert len(samples) == 12
    for sample in samples:
        assert sample["kind"] == "image" and bytes(sample["media"]) == (src / sample["path"]).read_bytes()


def test_refuses_to_overwrite_shards_and_bad_arguments(webvid_shards, tmp_path):
    src, shards, _ = webvid_shards
    before = {p.name: p.stat().st_mtime_ns for p in shards.iterdir() if p.is_file()}
    with pytest.raises(FileExistsError, match="index.json"):
        shard_dataset(src, "webvid", str(shards), workers=1, progress=False)
    assert {p.name: p.stat().st_mtime_ns for p in shards.iterdir() if p.is_file()} == before
    with pytest.raises(ValueError, match="cc3m layout holds images"):
        shard_dataset(src, "cc3m", str(tmp_path / "a"), prepare=True, progress=False)
    with pytest.raises(ValueError, match="--cut applies"):
        shard_dataset(src, "folder", str(tmp_path / "b"), cut="2M", progress=False)
    with pytest.raises(ValueError, match="inside --src"):
        shard_dataset(src, "webvid", str(src / "shards"), progress=False)
    with pytest.raises(FileNotFoundError, match="not a directory"):
        shard_dataset(tmp_path / "nowhere", "webvid", str(tmp_path / "c"), progress=False)
    # A clip that needs a chunk of its own would break LitData's resume (see check_chunk_bytes).
    largest = max((src / p).stat().st_size for p in WebVid(src).records["path"] if (src / p).is_file())
    with pytest.raises(ValueError, match="--chunk-bytes 2KB does not exceed the largest sample") as error:
        shard_dataset(src, "webvid", str(tmp_path / "d"), chunk_bytes="2KB", work_dir=tmp_path / "w", progress=False)
    assert not (tmp_path / "d" / "index.json").exists()
    stated = int(str(error.value).split("about ")[1].split(" bytes")[0])
    assert largest < stated < largest + 1024


def _kill_when(command: list[str], ready, timeout: float = 240) -> None:
    """Start `command` in its own process group and SIGKILL the whole group once `ready()` holds."""
    process = subprocess.Popen(command, start_new_session=True, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout
    try:
        while not ready():
            if process.poll() is not None:
                pytest.fail(f"the run finished (rc {process.returncode}) before it could be killed")
            if time.monotonic() > deadline:
                pytest.fail("the run never reached the point to kill it at")
            time.sleep(0.005)
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


@pytest.mark.slow
def test_a_killed_run_finishes_on_rerun_without_redoing_work(tmp_path):
    src = make_synthetic_dataset(tmp_path / "webvid", "webvid", num_train=40, num_test=2, num_frames_per_video=8,
                                 size=(32, 32), seed=8)
    dst = tmp_path / "shards"
    command = [sys.executable, "-m", "lightning_frozen.cli", "shard", "--src", str(src), "--layout", "webvid",
               "--dst", str(dst), "--workers", "1", "--chunk-bytes", "6KB", "--quiet"]
    check_log = dst / ".shard" / "checked.jsonl"
    checkpoint = dst / ".checkpoints" / "checkpoint-0.json"

    def lines() -> list[str]:
        return check_log.read_text().splitlines() if check_log.exists() else []

    # 1. Killed while checking the sources: the checks already logged are kept.
    _kill_when(command, lambda: len(lines()) >= 5)
    checked_first = len(lines())
    assert 5 <= checked_first < 40 and not checkpoint.exists()

    # 2. Killed while LitData writes chunks (about two clips each): its checkpoint records what is done.
    _kill_when(command, checkpoint.exists)
    assert not (dst / "index.json").exists()
    paths = [json.loads(line)["path"] for line in lines()]
    assert len(paths) == len(set(paths)) == 40  # the second run checked only what the first had not
    written = {}
    for _ in range(100):  # the kill may land while the file is replaced
        try:
            written = {c["filename"]: (dst / c["filename"]).stat().st_mtime_ns
                       for c in json.loads(checkpoint.read_text())["chunks"]}
            break
        except (json.JSONDecodeError, FileNotFoundError):
            time.sleep(0.01)
    assert written

    # 3. The re-run keeps those chunks and writes the rest: every clip once.
    summary = shard_dataset(src, "webvid", str(dst), workers=1, chunk_bytes="6KB", progress=False)
    assert summary.checked_before == 40 and summary.samples == 40 and not summary.broken
    assert {name: (dst / name).stat().st_mtime_ns for name in written} == written
    samples = _samples(dst)
    assert sorted(s["id"] for s in samples) == sorted(WebVid(src).records["id"])
    assert not (dst / ".checkpoints").exists()  # LitData removes its checkpoints when done


def test_prepare_re_encodes_into_the_shards_and_msrvtt_keeps_every_caption(tiny_msrvtt, tmp_path):
    import av

    summary = shard_dataset(tiny_msrvtt, "msrvtt", str(tmp_path / "shards"), split="train", prepare=True, workers=1,
                            chunk_bytes="64KB", progress=False)
    records = MSRVTT(tiny_msrvtt, split="train").records
    samples = _samples(tmp_path / "shards")
    assert summary.samples == len(records) == len(samples) and not summary.broken
    assert not (tmp_path / "shards" / ".shard" / "prepared").exists()  # the mirror goes once the shards hold it
    captions = dict(zip(records["id"], records["captions"]))
    for sample in samples:
        source = tiny_msrvtt / sample["path"]
        assert json.loads(sample["captions"]) == list(captions[sample["id"]]) and len(captions[sample["id"]]) == 20
        assert bytes(sample["media"]) != source.read_bytes()  # prepare's re-encode, not the file as stored
        with av.open(io.BytesIO(bytes(sample["media"]))) as new, av.open(str(source)) as old:
            assert new.streams.video[0].frames == old.streams.video[0].frames
            keyframes = [p.is_keyframe for p in new.demux(new.streams.video[0]) if p.size]
        assert keyframes[::8] == [True] * len(keyframes[::8])  # prepare's keyframe every 8 frames
