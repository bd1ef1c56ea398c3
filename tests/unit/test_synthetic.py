"""Synthetic data: real layouts, determinism, motion ground truth, refusing to overwrite."""

import hashlib
import json
import pickle

import numpy as np
import pandas as pd
import pytest

from lightning_frozen.data.synthetic import (
    COLOURS,
    DIRECTIONS,
    SHAPES,
    ClipSpec,
    make_synthetic_dataset,
    render_clip,
)
from lightning_frozen.data.synthetic.cli import main
from lightning_frozen.data.video import read_frames

SMALL = dict(num_train=4, num_test=2, num_frames_per_video=6, size=(32, 32), fps=6)


def digest(root):
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*")) if p.is_file()
    }


@pytest.mark.parametrize("layout", ["msrvtt", "webvid", "cc3m"])
def test_same_seed_same_bytes_other_seed_other_data(tmp_path, layout):
    a = digest(make_synthetic_dataset(tmp_path / "a", layout, seed=1, broken=True, **SMALL))
    b = digest(make_synthetic_dataset(tmp_path / "b", layout, seed=1, broken=True, **SMALL))
    c = digest(make_synthetic_dataset(tmp_path / "c", layout, seed=2, broken=True, **SMALL))
    assert a == b
    assert a.keys() == c.keys() and a != c


def test_msrvtt_layout_files(tmp_path):
    root = make_synthetic_dataset(tmp_path / "m", "msrvtt", **SMALL)
    lists = root / "high-quality/structured-symlinks"
    for name in ["train_list_jsfusion.txt", "val_list_jsfusion.txt", "train_list_miech.txt",
                 "test_list_miech.txt", "train_list_full.txt", "val_list_full.txt",
                 "test_list_full.txt", "jsfusion_val_caption_idx.pkl"]:
        assert (lists / name).is_file(), name
    data = json.loads((root / "annotation/MSR_VTT.json").read_text())
    ids = [f"video{i}" for i in range(6)]
    counts = pd.DataFrame(data["annotations"]).groupby("image_id").size()
    assert sorted(counts.index) == sorted(ids) and set(counts) == {20}
    assert all((root / f"videos/all/{i}.mp4").is_file() for i in ids)
    assert (lists / "val_list_jsfusion.txt").read_text().split() == ["video4", "video5"]
    train_full = (lists / "train_list_full.txt").read_text().split()
    val_full = (lists / "val_list_full.txt").read_text().split()
    assert sorted(train_full + val_full) == ids[:4] and not set(train_full) & set(val_full)
    with open(lists / "jsfusion_val_caption_idx.pkl", "rb") as f:
        index = pickle.load(f)  # generated just above
    assert set(index) == {"video4", "video5"} and all(0 <= v < 20 for v in index.values())


def test_captions_name_colour_shape_and_direction(tmp_path):
    root = make_synthetic_dataset(tmp_path / "m", "msrvtt", **SMALL)
    manifest = json.loads((root / "synthetic.json").read_text())
    data = json.loads((root / "annotation/MSR_VTT.json").read_text())
    for annotation in data["annotations"]:
        spec = manifest["clips"][f"videos/all/{annotation['image_id']}.mp4"]
        text = annotation["caption"]
        assert spec["foreground"] in text and spec["background"] in text
        assert any(word in text for word in SHAPES[spec["shape"]])
        assert any(phrase in text for phrase in DIRECTIONS[spec["direction"]][1])
    assert len({a["caption"] for a in data["annotations"]}) > 40  # varied wording


def centre(mask, axis):
    return np.nonzero(mask)[axis].mean()


@pytest.mark.parametrize("direction", list(DIRECTIONS))
def test_clips_move_in_their_direction(direction):
    spec = ClipSpec("white", "blue", "circle", direction)
    frames = render_clip(spec, 8, (40, 40), np.random.default_rng(0))
    masks = (frames == COLOURS["white"]).all(-1)
    (dy, dx) = DIRECTIONS[direction][0]
    axis = 0 if dy else 1
    centres = [centre(m, axis) for m in masks]
    assert np.all(np.sign(np.diff(centres)) == (dy or dx))
    assert abs(centres[-1] - centres[0]) == pytest.approx(0.4 * 40, abs=1.5)  # 40% of the frame
    other = [centre(m, 1 - axis) for m in masks]
    assert np.ptp(other) < 0.5  # no drift across the motion (pixel rounding only)
    # always whole (it never leaves the frame): the area changes only by pixel rounding
    assert all(abs(int(m.sum()) - int(masks[0].sum())) <= 0.15 * masks[0].sum() for m in masks)
    assert not masks[:, 0].any() and not masks[:, -1].any() and not masks[:, :, 0].any() and not masks[:, :, -1].any()


def test_one_frame_does_not_reveal_direction():
    """Opposite directions visit the same places in the reverse order, so any single frame
    (the middle one a one-frame test sees, or a random one in training) looks alike."""
    positions = {d: [] for d in DIRECTIONS}
    for seed in range(40):
        for d in DIRECTIONS:
            frames = render_clip(ClipSpec("white", "blue", "square", d), 5, (32, 32), np.random.default_rng(seed))
            masks = (frames == COLOURS["white"]).all(-1)
            positions[d].append([(centre(m, 0), centre(m, 1)) for m in masks])
    for d in DIRECTIONS:
        path = np.array(positions[d])  # seeds x frames x (y, x)
        reverse = np.array(positions[{"left": "right", "right": "left", "up": "down", "down": "up"}[d]])
        np.testing.assert_allclose(path[:, 2].mean(0), [16, 16], atol=2.5)  # middle frame near the centre
        np.testing.assert_allclose(np.sort(path.reshape(-1, 2), 0).mean(0),
                                   np.sort(reverse.reshape(-1, 2), 0).mean(0), atol=1.5)


def test_decoded_video_matches_rendered_frames(tmp_path):
    root = make_synthetic_dataset(tmp_path / "m", "msrvtt", **SMALL)
    clip = read_frames(root / "videos/all/video0.mp4", 6, "uniform")
    spec = json.loads((root / "synthetic.json").read_text())["clips"]["videos/all/video0.mp4"]
    background = np.array(COLOURS[spec["background"]], dtype=float)
    corner_free = clip.permute(0, 2, 3, 1).numpy().reshape(-1, 3).astype(float)
    # Most pixels are background; the median colour recovers it despite compression.
    assert np.abs(np.median(corner_free, axis=0) - background).max() < 12


def test_broken_entries_are_referenced_and_broken(tmp_path):
    root = make_synthetic_dataset(tmp_path / "w", "webvid", broken=True, **SMALL)
    broken = {b["kind"]: root / b["path"] for b in json.loads((root / "synthetic.json").read_text())["broken"]}
    assert set(broken) == {"missing", "empty", "truncated", "not_video"}
    assert not broken["missing"].exists()
    assert broken["empty"].stat().st_size == 0
    assert 0 < broken["truncated"].stat().st_size
    assert broken["not_video"].read_text().startswith("this is a text file")
    table = pd.read_csv(root / "metadata/results_2M_val.csv", dtype=str)
    paths = {f"videos/{r.page_dir}/{r.videoid}.mp4" for r in table.itertuples()}
    val_broken = [b["path"] for b in json.loads((root / "synthetic.json").read_text())["broken"]
                  if b["path"] in paths]
    assert len(val_broken) == 4


def test_existing_roots_are_reused_or_refused(tmp_path):
    root = make_synthetic_dataset(tmp_path / "m", "cc3m", **SMALL)
    before = digest(root)
    mtime = (root / "synthetic.json").stat().st_mtime_ns
    assert make_synthetic_dataset(root, "cc3m", **SMALL) == root  # same parameters: reused
    assert digest(root) == before and (root / "synthetic.json").stat().st_mtime_ns == mtime
    with pytest.raises(FileExistsError, match="other parameters"):
        make_synthetic_dataset(root, "cc3m", **{**SMALL, "num_train": 5})
    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not empty"):
        make_synthetic_dataset(other, "msrvtt", **SMALL)
    assert (other / "notes.txt").read_text() == "keep me"
    next(root.glob("training/*")).unlink()
    with pytest.raises(FileExistsError, match="missing"):
        make_synthetic_dataset(root, "cc3m", **SMALL)
    assert not list(tmp_path.glob(".*partial*"))


def test_command_line(tmp_path, capsys):
    root = main(["--root", str(tmp_path / "cli"), "--layout", "webvid", "--num-train", "2",
                 "--num-test", "1", "--num-frames", "4", "--size", "32", "32", "--seed", "3"])
    assert (root / "metadata/results_2M_train.csv").is_file()
    assert len(list((root / "videos").rglob("*.mp4"))) == 3
    assert "ready" in capsys.readouterr().out
