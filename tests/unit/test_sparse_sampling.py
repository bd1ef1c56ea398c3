"""Clip sampling: a fixed frame stride (frame_interval) and several clips per video (clips_per_video)."""
import numpy as np
import pytest
import torch
from helpers import frames

from lightning_frozen.data import VideoFolder, sample_clip_indices, sample_frame_indices
from lightning_frozen.data.encode import write_video


def test_clips_come_from_equal_segments_each_sampled_like_a_whole_video():
    # 20 frames, 2 clips: segments [0, 10) and [10, 20); 2 frames a clip: intervals of 5, middles 2 and 7
    assert sample_clip_indices(20, 2, num_clips=2, mode="uniform") == [2, 7, 12, 17]
    assert sample_clip_indices(20, 4, num_clips=1, mode="uniform") == sample_frame_indices(20, 4, "uniform")
    assert sample_clip_indices(20, 2, num_clips=2, fix_start=1) == [1, 6, 11, 16]
    # more clips than frames: one-frame segments, repeated
    assert sample_clip_indices(3, 1, num_clips=5, mode="uniform") == [0, 0, 1, 1, 2]


def test_frame_interval_is_a_fixed_stride_centred_at_test_time():
    # 4 frames 3 apart span 10 frames; 20 - 10 = 10 free frames, 5 before the clip
    assert sample_clip_indices(20, 4, frame_interval=3, mode="uniform") == [5, 8, 11, 14]
    assert sample_clip_indices(20, 4, frame_interval=3, fix_start=2) == [2, 5, 8, 11]
    assert sample_clip_indices(20, 4, frame_interval=3, fix_start=50) == [10, 13, 16, 19]  # kept inside
    # two clips: the 11 first frames a 10-frame clip can have (0-10) split into 0-4 and 5-10, middles 2 and 7
    assert sample_clip_indices(20, 4, num_clips=2, frame_interval=3, mode="uniform") == [2, 5, 8, 11, 7, 10, 13, 16]
    # a clip longer than the video starts at frame 0 and repeats the last frame
    assert sample_clip_indices(20, 4, frame_interval=8, mode="rand") == [0, 8, 16, 19]


def test_random_strided_clips_start_anywhere_in_their_part():
    starts: tuple[set, set] = (set(), set())
    for seed in range(300):
        generator = torch.Generator().manual_seed(seed)
        indices = sample_clip_indices(20, 4, num_clips=2, frame_interval=2, mode="rand", generator=generator)
        first, second = indices[:4], indices[4:]
        assert np.diff(first).tolist() == [2, 2, 2] and np.diff(second).tolist() == [2, 2, 2]
        starts[0].add(first[0])
        starts[1].add(second[0])
    # a 7-frame clip starts at frames 0-13: the first clip anywhere in 0-6, the second in 7-13, all drawn
    assert starts == (set(range(7)), set(range(7, 14)))
    again = [sample_clip_indices(20, 4, 2, 2, "rand", generator=torch.Generator().manual_seed(7)) for _ in range(2)]
    assert again[0] == again[1]


def test_bad_sampling_arguments_raise():
    with pytest.raises(ValueError, match="clips_per_video"):
        sample_clip_indices(20, 4, num_clips=0)
    with pytest.raises(ValueError, match="frame_interval"):
        sample_clip_indices(20, 4, frame_interval=0)
    with pytest.raises(ValueError, match="frame_interval"):
        VideoFolder(".", frame_interval=-1)
    with pytest.raises(ValueError, match="clips_per_video"):
        VideoFolder(".", clips_per_video=0)


@pytest.fixture(scope="module")
def grey_folder(tmp_path_factory):
    """A folder with one 20-frame video whose frame i is flat grey 20 + 10 i."""
    root = tmp_path_factory.mktemp("grey")
    write_video(root / "grey.mp4", np.stack([np.full((32, 32, 3), 20 + 10 * i, np.uint8) for i in range(20)]),
                fps=10, crf=10)
    return root


# 2 frames a clip: 2 clips spread over their halves; 2 clips of stride 3 (span 4: first frames 0-16, split into
# 0-7 and 8-16, middles 3 and 12); 1 clip of stride 4 (span 5, centred in 20 frames)
@pytest.mark.parametrize("clips,interval,indices", [(2, None, [2, 7, 12, 17]), (2, 3, [3, 6, 12, 15]),
                                                    (1, 4, [7, 11])])
def test_dataset_items_hold_the_sampled_clips(grey_folder, clips, interval, indices):
    dataset = frames(VideoFolder(grey_folder, frame_size=None, clips_per_video=clips, frame_interval=interval), 2)
    video = dataset[0]["video"]
    expected_shape = (clips, 2, 3, 32, 32) if clips > 1 else (2, 3, 32, 32)
    assert video.shape == expected_shape and video.dtype == torch.uint8
    greys = video.reshape(clips * 2, -1).float().mean(1)
    assert greys.tolist() == pytest.approx([20 + 10 * i for i in indices], abs=2)
