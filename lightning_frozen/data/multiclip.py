"""The original code base's multi-clip test protocol (its ``test.py --sliding_window_stride S``).

Every test video is read several times, with the frame offsets 0, S, 2S, ... inside its F
sampling intervals (``fix_start``), and ``RetrievalMetrics`` averages a video's embeddings
over its clips (items share ``meta["index"]``) before scoring. In a config::

    test_datasets:
      - class_path: lightning_frozen.data.multiclip.MultiClip
        init_args:
          dataset: {class_path: lightning_frozen.data.MSRVTT, init_args: {root: ..., split: test}}
          stride: 2
"""
from __future__ import annotations

from typing import Any

from torch.utils.data import Subset

from .base import TextVideoDataset


def count_frames(path: str) -> int:
    """Frames in a video, from the container header (decord counts when the header does not say).

    An unreadable file counts as one frame: it gets one item, which the dataset's loading
    policy then skips (lax) or reports (strict), as without MultiClip.
    """
    import av
    import decord

    try:
        with av.open(path) as container:
            frames = container.streams.video[0].frames
        return int(frames) if frames else len(decord.VideoReader(path))
    except Exception:  # PyAV and decord raise their own error types for unreadable files
        return 1


class MultiClip(Subset):
    """``dataset``'s videos, each as clips at frame offsets 0, ``stride``, 2 ``stride``, ...

    A ``Subset`` (with repeated indices), so the DataModule reaches the wrapped dataset for the
    frame count and skip counts. Offsets stay inside the shortest sampling interval (the
    video's frames // F) and are recomputed when F changes.
    """

    def __init__(self, dataset: TextVideoDataset, stride: int = 2):
        if stride < 1:
            raise ValueError(f"stride must be >= 1 frame, got {stride}")
        if getattr(dataset, "max_samples", None) is not None:
            raise ValueError("MultiClip reads every video of its dataset: leave max_samples unset")
        self.dataset = dataset
        self.stride = stride
        self._frames: list[int] = []
        self._pairs: list[tuple[int, int]] = []
        self._pairs_for = 0

    def pairs(self) -> list[tuple[int, int]]:
        """(video index, frame offset) of every item."""
        frames = self.dataset.num_frames
        if self._pairs_for != frames:
            if not self._frames:
                self._frames = [count_frames(str(self.dataset.root / p)) for p in self.dataset.records["path"]]
            self._pairs = [(i, offset) for i, count in enumerate(self._frames)
                           for offset in range(0, max(1, count // frames), self.stride)]
            self._pairs_for = frames
        return self._pairs

    @property
    def indices(self) -> list[int]:
        return [i for i, _ in self.pairs()]

    def __len__(self) -> int:
        return len(self.pairs())

    @property
    def num_videos(self) -> int:
        """Videos scored (a video's clips count once: the metric keeps one row per video)."""
        return len(self.dataset)

    @property
    def num_captions(self) -> int:
        return int(getattr(self.dataset, "num_captions", len(self.dataset)))

    def __getitems__(self, indices: list[int]) -> list[dict[str, Any]]:
        # A DataLoader fetches a batch through ``Subset.__getitems__``, which would read the
        # wrapped dataset directly and lose the offsets.
        return [self[i] for i in indices]

    def __getitem__(self, index: int) -> dict[str, Any]:
        video, offset = self.pairs()[index]
        kept = self.dataset.fix_start
        self.dataset.fix_start = offset
        try:
            return self.dataset[video]
        finally:
            self.dataset.fix_start = kept
