"""Data: video reading, datasets in the real layouts, synthetic data, preparation."""

from .base import TextVideoDataset
from .cc3m import ConceptualCaptions3M
from .folder import VideoFolder
from .msrvtt import MSRVTT
from .video import VideoReadError, read_frames, read_image, sample_frame_indices
from .webvid import WebVid


# Collation, on-device augmentation and the DataModule load lazily too (kornia, Lightning).
_DEVICE_SIDE = {
    "TextVideoCollator": ".collate",
    "VideoTransform": ".transforms",
    "IMAGENET_MEAN": ".transforms",
    "IMAGENET_STD": ".transforms",
    "FrozenDataModule": ".datamodule",
}


def __getattr__(name: str):
    # Command modules load lazily so `python -m lightning_frozen.data.synthetic` runs clean.
    if name == "make_synthetic_dataset":
        from .synthetic import make_synthetic_dataset

        return make_synthetic_dataset
    if name == "prepare_videos":
        from .prepare import prepare_videos

        return prepare_videos
    if name in _DEVICE_SIDE:
        import importlib

        return getattr(importlib.import_module(_DEVICE_SIDE[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
