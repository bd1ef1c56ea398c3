"""Frame sampling rules and decoding (decord, PIL) against independent computations."""

import pickle

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from lightning_frozen.data.encode import write_video
from lightning_frozen.data.video import (
    VideoReadError,
    read_frames,
    read_image,
    sample_frame_indices,
    scaled_size,
)


def intervals(n, f):
    """Independent reference: the [start, end) bounds of f equal intervals of n frames."""
    edges = np.linspace(0, n, f + 1)
    return [(int(np.floor(edges[i])), int(np.floor(edges[i + 1]))) for i in range(f)]


def test_uniform_takes_interval_middles():
    assert sample_frame_indices(100, 4, "uniform") == [12, 37, 62, 87]
    assert sample_frame_indices(10, 3, "uniform") == [1, 4, 7]
    for n, f in [(7, 2), (31, 4), (250, 8), (64, 16)]:
        expected = [(s + e - 1) // 2 for s, e in intervals(n, f)]
        assert sample_frame_indices(n, f, "uniform") == expected


def test_rand_indices_stay_in_their_interval_and_cover_it():
    n, f = 23, 4
    bounds = intervals(n, f)
    seen = [set() for _ in range(f)]
    generator = torch.Generator().manual_seed(0)
    for _ in range(300):
        indices = sample_frame_indices(n, f, "rand", generator=generator)
        assert len(indices) == f
        for i, (index, (s, e)) in enumerate(zip(indices, bounds)):
            assert s <= index < e
            seen[i].add(index)
    assert [len(s) for s in seen] == [e - s for s, e in bounds]  # every frame reachable


def test_rand_is_reproducible_with_a_generator():
    a = sample_frame_indices(1000, 8, "rand", generator=torch.Generator().manual_seed(3))
    b = sample_frame_indices(1000, 8, "rand", generator=torch.Generator().manual_seed(3))
    assert a == b


@pytest.mark.parametrize("mode", ["rand", "uniform"])
def test_short_and_one_frame_videos_repeat_frames(mode):
    assert sample_frame_indices(3, 4, mode) == [0, 0, 1, 2]
    assert sample_frame_indices(1, 4, mode) == [0, 0, 0, 0]
    assert sample_frame_indices(1, 1, mode) == [0]
    assert sample_frame_indices(4, 4, mode) == [0, 1, 2, 3]


def test_fix_start_is_an_offset_into_each_interval():
    assert sample_frame_indices(100, 4, "uniform", fix_start=0) == [0, 25, 50, 75]
    assert sample_frame_indices(100, 4, "rand", fix_start=3) == [3, 28, 53, 78]
    # Offsets past an interval stop at its last frame.
    assert sample_frame_indices(100, 4, "uniform", fix_start=30) == [24, 49, 74, 99]


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="num_video_frames"):
        sample_frame_indices(0, 4)
    with pytest.raises(ValueError, match="mode"):
        sample_frame_indices(10, 4, "middle")
    with pytest.raises(ValueError, match="fix_start"):
        sample_frame_indices(10, 4, "uniform", fix_start=-1)


def test_scaled_size_keeps_aspect():
    assert scaled_size(360, 640, 256) == (256, 455)
    assert scaled_size(640, 360, 256) == (455, 256)
    assert scaled_size(64, 64, 32) == (32, 32)


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    """A 20-frame clip whose frame i is flat grey 20 + 10 i, and a gradient clip."""
    root = tmp_path_factory.mktemp("videos")
    grey = np.stack([np.full((48, 64, 3), 20 + 10 * i, np.uint8) for i in range(20)])
    write_video(root / "grey.mp4", grey, fps=10, crf=10)
    ys, xs = np.mgrid[0:64, 0:96]
    frame = np.stack([xs * 255 // 95, ys * 255 // 63, (xs + ys) % 256], -1).astype(np.uint8)
    write_video(root / "gradient.mp4", np.stack([frame] * 6), fps=10, crf=10)
    return root


def test_read_frames_returns_the_sampled_frames(videos):
    clip = read_frames(videos / "grey.mp4", 4, "uniform")
    assert clip.dtype == torch.uint8 and clip.shape == (4, 3, 48, 64)
    expected = [20 + 10 * i for i in sample_frame_indices(20, 4, "uniform")]
    assert clip.float().mean(dim=(1, 2, 3)).tolist() == pytest.approx(expected, abs=2)


def test_read_frames_sliding_offset_and_one_frame(videos):
    clip = read_frames(videos / "grey.mp4", 2, "uniform", fix_start=1)
    assert clip.float().mean(dim=(1, 2, 3)).tolist() == pytest.approx([30, 130], abs=2)
    assert read_frames(videos / "grey.mp4", 1, "uniform").shape == (1, 3, 48, 64)
    assert read_frames(videos / "grey.mp4", 30, "rand").shape == (30, 3, 48, 64)


@pytest.mark.parametrize("size", [32, 48, 40])
def test_scaled_decode_matches_resize_then_centre_crop(videos, size):
    native = read_frames(videos / "gradient.mp4", 1, "uniform")
    clip = read_frames(videos / "gradient.mp4", 1, "uniform", size=size)
    assert clip.shape == (1, 3, size, size)
    h, w = scaled_size(64, 96, size)
    resized = F.interpolate(native.float(), size=(h, w), mode="bilinear", antialias=True)
    top, left = (h - size) // 2, (w - size) // 2
    reference = resized[..., top : top + size, left : left + size]
    assert (clip.float() - reference).abs().mean() < 6


def test_images_come_back_as_one_frame_clips(tmp_path):
    ys, xs = np.mgrid[0:60, 0:80]
    array = np.stack([xs * 3, ys * 4, np.full_like(xs, 128)], -1).astype(np.uint8)
    Image.fromarray(array).save(tmp_path / "4242", format="JPEG", quality=95)
    Image.fromarray(array).save(tmp_path / "pic.png")
    native = read_image(tmp_path / "4242")
    assert native.shape == (1, 3, 60, 80)
    assert (native[0].permute(1, 2, 0).float() - torch.from_numpy(array).float()).abs().mean() < 3
    small = read_image(tmp_path / "4242", size=30)
    assert small.shape == (1, 3, 30, 30)
    reference = F.interpolate(native.float(), size=(30, 40), mode="bilinear", antialias=True)
    assert (small.float() - reference[..., :, 5:35]).abs().mean() < 6
    assert read_frames(tmp_path / "pic.png", 4, "rand", size=30).shape == (1, 3, 30, 30)


@pytest.fixture()
def broken(tmp_path, videos):
    data = (videos / "grey.mp4").read_bytes()
    (tmp_path / "empty.mp4").write_bytes(b"")
    (tmp_path / "truncated.mp4").write_bytes(data[: len(data) // 2])
    (tmp_path / "text.mp4").write_text("not a video\n" * 10)
    (tmp_path / "bad.jpg").write_text("not an image\n" * 10)
    return tmp_path


@pytest.mark.parametrize("backend", ["decord", "pyav"])
@pytest.mark.parametrize(
    "name, cause",
    [("missing.mp4", "does not exist"), ("empty.mp4", "empty"),
     ("truncated.mp4", "cannot open|Invalid data"), ("text.mp4", "cannot open|Invalid data"),
     ("bad.jpg", "cannot identify")],
)
def test_unreadable_files_raise_video_read_error_naming_them(broken, name, cause, backend):
    with pytest.raises(VideoReadError, match=cause) as info:
        read_frames(broken / name, 4, "uniform", size=32, name=name, backend=backend)
    assert info.value.path == name  # shown relative to the root
    assert name in str(info.value)


def test_video_read_error_survives_pickling_and_single_argument_construction():
    error = VideoReadError("videos/all/video3.mp4", "file is empty (0 bytes)")
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.path, copy.cause, str(copy)) == (error.path, error.cause, str(error))
    assert str(VideoReadError("Caught VideoReadError in worker")) == "Caught VideoReadError in worker"


@pytest.fixture(scope="module")
def encodings(tmp_path_factory):
    """Textured moving clips in encodings the sparse decoder must index correctly."""
    root = tmp_path_factory.mktemp("encodings")
    rng = np.random.default_rng(0)
    tile = np.kron(rng.integers(0, 255, (16, 20, 3), dtype=np.uint8), np.ones((4, 4, 1), np.uint8))
    frames = np.stack([np.roll(tile, (i, 2 * i), (0, 1))[:48, :64] for i in range(37)])
    settings = {
        "bframes_medium": dict(fps=25, preset="medium"),
        "keyint4": dict(fps=25, preset="veryfast", keyframe_interval=4),
        "ntsc": dict(fps=30000 / 1001, preset="medium"),
        "no_bframes": dict(fps=10, preset="ultrafast"),
        "fastdecode": dict(fps=25, preset="veryfast", tune="fastdecode", keyframe_interval=8),
    }
    for name, options in settings.items():
        write_video(root / f"{name}.mp4", frames, **options)
    return root, list(settings)


@pytest.mark.parametrize("mode, fix_start", [("uniform", None), ("rand", None), ("uniform", 2)])
def test_sparse_decoding_matches_decord_exactly(encodings, mode, fix_start):
    root, names = encodings
    for name in names:
        for num_frames in (1, 4, 8, 40):
            seed = torch.Generator().manual_seed(num_frames)
            kwargs = dict(fix_start=fix_start, size=None)
            fast = read_frames(root / f"{name}.mp4", num_frames, mode, backend="pyav",
                               generator=torch.Generator().manual_seed(num_frames), **kwargs)
            slow = read_frames(root / f"{name}.mp4", num_frames, mode, backend="decord",
                               generator=seed, **kwargs)
            assert torch.equal(fast, slow), (name, num_frames)


def test_files_without_a_frame_count_fall_back_to_decord(tmp_path):
    import av

    path = tmp_path / "clip.mkv"
    with av.open(str(path), "w", format="matroska") as container:
        stream = container.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
        for i in range(12):
            frame = av.VideoFrame.from_ndarray(np.full((32, 32, 3), 20 * i, np.uint8), format="rgb24")
            frame.pts = i
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    clip = read_frames(path, 3, "uniform")
    assert clip.float().mean(dim=(1, 2, 3)).tolist() == pytest.approx([20, 100, 180], abs=3)
    # not indexable by timestamp: the PyAV path falls back to decord
    assert torch.equal(read_frames(path, 3, "uniform", backend="pyav"), clip)
