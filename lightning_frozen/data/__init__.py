"""Data: video reading, datasets in the real layouts, synthetic data, preparation."""

from .base import TextVideoDataset
from .cc3m import ConceptualCaptions3M
from .core import Record, RunState, TextMediaDataset
from .folder import VideoFolder
from .kinetics import Kinetics
from .msrvtt import MSRVTT
from .video import VideoReadError, read_frames, read_image, sample_clip_indices, sample_frame_indices
from .webvid import WebVid

# Loaded on first use: the command modules, and collation, on-device augmentation and the
# DataModule (kornia, Lightning), so reading a dataset stays light.
_LAZY = {
    "make_synthetic_dataset": ".synthetic",
    "prepare_videos": ".prepare",
    "TextVideoCollator": ".collate",
    "VideoTransform": ".transforms",
    "IMAGENET_MEAN": ".transforms",
    "IMAGENET_STD": ".transforms",
    "FrozenDataModule": ".datamodule",
    "StreamingVideoText": ".streaming",
    "StreamingImageText": ".streaming",
    "StreamingLoader": ".streaming",
    "shard_dataset": ".shard",
}


__all__ = [
    "MSRVTT", "ConceptualCaptions3M", "Kinetics", "Record", "RunState", "TextMediaDataset", "TextVideoDataset",
    "VideoFolder", "VideoReadError", "WebVid", "read_frames", "read_image", "sample_clip_indices",
    "sample_frame_indices", *_LAZY,
]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
