"""VideoTransform: per-clip consistent training augmentation and exact evaluation resizing."""

import pytest
import torch
import torch.nn.functional as F

from lightning_frozen.data.transforms import IMAGENET_MEAN, IMAGENET_STD, VideoTransform

MEAN = torch.tensor(IMAGENET_MEAN).view(1, 1, 3, 1, 1)
STD = torch.tensor(IMAGENET_STD).view(1, 1, 3, 1, 1)


def _clips(b: int, f: int, h: int, w: int, high: int = 256, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, high, (b, f, 3, h, w), generator=g, dtype=torch.uint8)


@pytest.mark.parametrize("color_jitter", [None, 0.4])
def test_train_identical_frames_stay_identical(color_jitter):
    frame = _clips(4, 1, 48, 48)
    video = frame.repeat(1, 3, 1, 1, 1)
    torch.manual_seed(0)
    out = VideoTransform(train=True, input_res=32, color_jitter=color_jitter)(video)
    assert out.shape == (4, 3, 3, 32, 32) and out.dtype == torch.float32
    for t in range(1, 3):
        torch.testing.assert_close(out[:, t], out[:, 0], rtol=0, atol=0)


def test_train_constant_shift_survives_as_normalised_constant():
    # Crop-resize (bilinear) and flip are linear and shared by the frames of a clip, so a
    # frame that is another plus a constant comes out as the other plus constant / std.
    base = _clips(3, 1, 48, 48, high=150)
    shift = 60
    video = torch.cat([base, base + shift], dim=1)
    torch.manual_seed(1)
    out = VideoTransform(train=True, input_res=32)(video)
    expected = torch.full_like(out[:, 1], 0.0) + (shift / 255.0) / STD[:, 0]
    torch.testing.assert_close(out[:, 1] - out[:, 0], expected, rtol=0, atol=1e-5)


def test_train_different_clips_get_different_crops():
    video = _clips(1, 2, 48, 48).repeat(8, 1, 1, 1, 1)  # eight copies of one clip
    torch.manual_seed(2)
    out = VideoTransform(train=True, input_res=32)(video)
    distinct = {tuple(out[i, 0].flatten()[:64].tolist()) for i in range(8)}
    assert len(distinct) > 1


def test_train_is_deterministic_under_seed():
    video = _clips(4, 2, 48, 48)
    transform = VideoTransform(train=True, input_res=32, color_jitter=0.3)
    torch.manual_seed(123)
    a = transform(video)
    torch.manual_seed(123)
    b = transform(video)
    torch.manual_seed(124)
    c = transform(video)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not torch.equal(a, c)


def test_train_normalises_with_imagenet_statistics():
    white = torch.full((2, 2, 3, 40, 40), 255, dtype=torch.uint8)
    torch.manual_seed(0)
    out = VideoTransform(train=True, input_res=32)(white)
    expected = ((1.0 - MEAN) / STD).expand(2, 2, 3, 32, 32)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("train", [True, False])
def test_single_frame_clips(train):
    out = VideoTransform(train=train, input_res=32)(_clips(3, 1, 40, 40))
    assert out.shape == (3, 1, 3, 32, 32)


@pytest.mark.parametrize("hw", [(48, 48), (40, 56), (56, 40), (32, 32)])
def test_eval_equals_resize_short_side_centre_crop_normalise(hw):
    h, w = hw
    res = 32
    video = _clips(2, 3, h, w)
    out = VideoTransform(train=False, input_res=res)(video)

    x = video.flatten(0, 1).float() / 255.0
    scale = res / min(h, w)
    new_h, new_w = (res, int(w * scale)) if h <= w else (int(h * scale), res)
    x = F.interpolate(x, size=(new_h, new_w), mode="bilinear", align_corners=False)
    top, left = (new_h - res) // 2, (new_w - res) // 2
    x = x[:, :, top : top + res, left : left + res].reshape(2, 3, 3, res, res)
    expected = (x - MEAN) / STD
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-5)


def test_eval_accepts_float_input_in_unit_range():
    video = _clips(2, 2, 32, 32)
    transform = VideoTransform(train=False, input_res=32)
    torch.testing.assert_close(transform(video.float() / 255.0), transform(video))


def test_bad_inputs_name_the_problem():
    transform = VideoTransform(train=False, input_res=32)
    with pytest.raises(ValueError, match=r"\[B, F, 3, H, W\].*\(2, 3, 32, 32\)"):
        transform(torch.zeros(2, 3, 32, 32, dtype=torch.uint8))
    with pytest.raises(TypeError, match="int64"):
        transform(torch.zeros(1, 1, 3, 32, 32, dtype=torch.int64))
    with pytest.raises(ValueError, match="crop_scale"):
        VideoTransform(train=True, input_res=32, crop_scale=(0.0, 1.0))


def test_three_test_crops_cover_the_long_side():
    # frame pixel = its column (landscape) or row (portrait): a crop's mean tells where it was cut
    for landscape in (True, False):
        height, width = (32, 48) if landscape else (48, 32)
        axis = torch.arange(48, dtype=torch.float32) / 255.0
        frame = axis[:width].expand(3, height, width) if landscape else axis[:height, None].expand(3, height, width)
        video = frame.expand(2, 4, 3, height, width).contiguous()
        crops = VideoTransform(train=False, input_res=32, crops=3)(video)
        assert crops.shape == (2, 3, 4, 3, 32, 32)
        std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
        mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
        means = [float(((crops[0, c, 0] * std + mean) * 255).mean()) for c in range(3)]
        assert means == pytest.approx([15.5, 23.5, 31.5], abs=1e-3)  # columns/rows 0-31, 8-39, 16-47
        centre = VideoTransform(train=False, input_res=32)(video)
        torch.testing.assert_close(crops[:, 1], centre, atol=1e-5, rtol=1e-5)


def test_clips_of_a_video_share_their_augmentation_and_keep_their_shape():
    torch.manual_seed(0)
    clip = torch.rand(3, 2, 3, 48, 48)
    video = torch.stack([clip, clip], dim=1)  # [3 videos, 2 equal clips, 2 frames]
    out = VideoTransform(train=True, input_res=32, color_jitter=0.4)(video)
    assert out.shape == (3, 2, 2, 3, 32, 32)
    torch.testing.assert_close(out[:, 0], out[:, 1])  # one crop, flip and jitter per video
    test = VideoTransform(train=False, input_res=32, crops=3)(video)
    assert test.shape == (3, 6, 2, 3, 32, 32)  # 3 crops x 2 clips, every one a view
    torch.testing.assert_close(test[:, 0], test[:, 1])
    with pytest.raises(ValueError, match="crops"):
        VideoTransform(train=False, input_res=32, crops=2)
