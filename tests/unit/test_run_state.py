"""RunState: the run's seed, the data epoch and the frames per clip, and the randomness keyed by them."""
import pickle

import numpy as np
import pytest
import torch

from lightning_frozen.data import RunState


def draw(generator: torch.Generator) -> list[float]:
    return torch.rand(4, generator=generator).tolist()


def test_generator_depends_on_the_seed_and_key_alone():
    state = RunState(seed=3)
    first = draw(state.generator(1, 2, 3))
    torch.manual_seed(99)  # the global random state plays no part
    np.random.seed(99)
    assert draw(state.generator(1, 2, 3)) == first
    assert draw(state.generator(1, 2, 4)) != first
    assert draw(RunState(seed=4).generator(1, 2, 3)) != first
    # An independent computation of the same seed: numpy's SeedSequence over (seed, *key), 64 bits.
    high, low = np.random.SeedSequence([3, 1, 2, 3]).generate_state(2)
    assert draw(torch.Generator().manual_seed((int(high) << 32) | int(low))) == first


def test_a_schedule_sets_the_frames_whenever_an_epoch_begins():
    state = RunState(num_frames=4)
    state.begin_epoch(3)
    assert (state.epoch, state.num_frames) == (3, 4)  # no schedule: the count stays
    state.set_schedule(lambda epoch: 1 if epoch < 2 else 2)
    assert state.num_frames == 2  # applied to the current epoch at once
    state.begin_epoch(0)
    assert (state.epoch, state.num_frames) == (0, 1)
    state.set_schedule(None)
    state.begin_epoch(5)
    assert state.num_frames == 1
    with pytest.raises(ValueError, match="num_frames must be >= 1"):
        state.set_num_frames(0)


def test_frames_block_restores_the_count_even_on_error():
    state = RunState(num_frames=4)
    with pytest.raises(KeyError):
        with state.frames(1):
            assert state.num_frames == 1
            raise KeyError("boom")
    assert state.num_frames == 4


def test_workers_get_the_values_but_not_the_schedule():
    state = RunState(seed=7, num_frames=2, epoch=1)
    state.set_schedule(lambda epoch: 2)  # could be a bound method of a Lightning callback
    copy = pickle.loads(pickle.dumps(state))
    assert (copy.seed, copy.epoch, copy.num_frames) == (7, 1, 2) and copy.schedule is None
    assert draw(copy.generator(5)) == draw(state.generator(5))
    assert state._values.is_shared()  # in shared memory before any worker starts
