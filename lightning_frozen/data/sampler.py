"""EpochShuffleSampler: the training order of an epoch, drawn from (run seed, seed, epoch) alone."""
from __future__ import annotations

from typing import Iterator, Sized

from torch.utils.data import Sampler

from .base import run_generator


class EpochShuffleSampler(Sampler[int]):
    """A fresh random order every epoch that any process can redraw.

    The order of epoch ``e`` depends only on the run's seed, ``seed``, ``stream`` and ``e`` (set with
    ``set_epoch`` before the loader starts), not on the global random state. A resumed
    ``StatefulDataLoader`` skips the indices the interrupted loader had already yielded, so
    it continues the same epoch in the same order. Under DDP, Lightning wraps this sampler
    and hands each rank its share.
    """

    def __init__(self, data_source: Sized, seed: int = 0, stream: int = 0) -> None:
        self.data_source = data_source
        self.seed = int(seed)
        self.stream = int(stream)  # several training datasets of one seed still get their own orders
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.data_source)

    def __iter__(self) -> Iterator[int]:
        import torch

        generator = run_generator(self.seed, self.stream, self.epoch)
        return iter(torch.randperm(len(self.data_source), generator=generator).tolist())
