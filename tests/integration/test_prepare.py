"""The prepare command: a re-encoded mirror that datasets read the same way; resumable."""

import hashlib

import decord
import pytest

from lightning_frozen.data import MSRVTT
from lightning_frozen.data.prepare import main, output_size, partial_path, prepare_videos
from lightning_frozen.data.synthetic import make_synthetic_dataset


def digest(root):
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    return make_synthetic_dataset(
        tmp_path_factory.mktemp("src") / "msrvtt", "msrvtt", num_train=4, num_test=2,
        num_frames_per_video=20, size=(48, 64), fps=10, broken=True,
    )


def test_output_size_scales_the_short_side_without_upscaling():
    assert output_size(360, 640, 256) == (256, 454)
    assert output_size(640, 360, 256) == (454, 256)
    assert output_size(48, 64, 256) == (48, 64)
    assert output_size(49, 65, None) == (48, 64)


def test_mirror_has_the_same_layout_and_reencoded_videos(source, tmp_path):
    before = digest(source)
    summary = prepare_videos(source, tmp_path / "mirror", short_side=32, fps=5,
                             keyframe_interval=4, workers=2, progress=False)
    mirror = tmp_path / "mirror"
    assert digest(source) == before  # the source is never written
    assert (summary.encoded, summary.skipped) == (6, 0)
    assert set(summary.failed) == {f"videos/all/video{i}.mp4" for i in (7, 8, 9)}  # empty, truncated, text
    for name in ["annotation/MSR_VTT.json", "high-quality/structured-symlinks/val_list_jsfusion.txt",
                 "high-quality/structured-symlinks/jsfusion_val_caption_idx.pkl"]:
        assert (mirror / name).read_bytes() == (source / name).read_bytes()
    reader = decord.VideoReader(str(mirror / "videos/all/video0.mp4"))
    assert reader[0].shape == (32, 42, 3)
    assert len(reader) == 10 and reader.get_avg_fps() == pytest.approx(5)
    keys = list(reader.get_key_indices()) + [len(reader)]
    assert max(b - a for a, b in zip(keys, keys[1:])) <= 4
    ds = MSRVTT(mirror, cut="jsfusion", split="test", frame_size=32, loading="lax")
    reference = MSRVTT(source, cut="jsfusion", split="test", frame_size=32, loading="lax")
    item, original = ds[0], reference[0]
    assert item["meta"] == original["meta"] and item["text"] == original["text"]
    assert (item["video"].float() - original["video"].float()).abs().mean() < 12


def test_resumes_and_ignores_partial_files(source, tmp_path):
    mirror = tmp_path / "mirror"
    target = mirror / "videos/all/video1.mp4"
    first = prepare_videos(source, mirror, short_side=32, workers=1, progress=False)
    assert first.encoded == 6
    assert len(decord.VideoReader(str(target))) == 20
    outputs = digest(mirror / "videos")
    second = prepare_videos(source, mirror, short_side=32, workers=1, progress=False)
    assert (second.encoded, second.skipped, second.copied) == (0, 6, 0)
    assert digest(mirror / "videos") == outputs
    target.unlink()
    partial_path(target).write_bytes(b"half-written garbage")  # what a kill during its encoding leaves
    third = prepare_videos(source, mirror, short_side=32, workers=1, progress=False)
    assert (third.encoded, third.skipped) == (1, 5)
    assert not list(mirror.rglob("*.partial")) and len(decord.VideoReader(str(target))) == 20


def test_refuses_overlapping_roots(source, tmp_path):
    with pytest.raises(ValueError, match="overlaps"):
        prepare_videos(source, source / "prepared", progress=False)
    with pytest.raises(ValueError, match="overlaps"):
        prepare_videos(source, source, progress=False)
    with pytest.raises(FileNotFoundError, match="not a directory"):
        prepare_videos(tmp_path / "nothing", tmp_path / "out", progress=False)


def test_command_line(source, tmp_path, capsys):
    summary = main(["--src", str(source), "--dst", str(tmp_path / "cli"), "--short-side", "0",
                    "--workers", "1", "--quiet"])
    assert summary.encoded == 6
    assert decord.VideoReader(str(tmp_path / "cli/videos/all/video0.mp4"))[0].shape == (48, 64, 3)
    assert "failed 3" in capsys.readouterr().out


def test_installed_command_exits_non_zero_and_lists_failures(source, tmp_path, capsys):
    from lightning_frozen.cli import main as command

    with pytest.raises(SystemExit) as exit_info:
        command(["prepare", "--src", str(source), "--dst", str(tmp_path / "mirror"), "--short-side", "0",
                 "--workers", "1", "--quiet"])
    assert exit_info.value.code == 1
    captured = capsys.readouterr()
    assert "3 file(s) failed" in captured.err and "prepare_report.json" in captured.err
    assert captured.out.count("FAILED videos/all/") == 3
