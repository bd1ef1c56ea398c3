"""Data: video reading, datasets in the real layouts, synthetic data, preparation.

Every name is loaded on first use, so importing one part (a query's collator, the CLI's help)
does not pull in the rest (pandas for metadata tables, kornia and Lightning for the DataModule,
LitData for shards).
"""

_LAZY = {
    "TextVideoDataset": ".base",
    "ConceptualCaptions3M": ".cc3m",
    "Record": ".core",
    "RunState": ".core",
    "TextMediaDataset": ".core",
    "VideoFolder": ".folder",
    "Kinetics": ".kinetics",
    "MSRVTT": ".msrvtt",
    "VideoReadError": ".video",
    "read_frames": ".video",
    "read_image": ".video",
    "sample_frame_indices": ".video",
    "sample_clip_indices": ".video",
    "WebVid": ".webvid",
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

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])
