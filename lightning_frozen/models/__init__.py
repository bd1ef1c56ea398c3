"""The dual encoder: video tower, text tower, joint model and weight loading."""
from .checkpoint import LoadReport, UnsafeCheckpointError, load_checkpoint, safe_torch_load
from .frozen import FrozenInTime, TextConfig, VideoConfig
from .space_time import SpaceTimeTransformer
from .text import build_text_model, build_tokenizer, bundled_text_model_path

__all__ = [
    "FrozenInTime", "LoadReport", "SpaceTimeTransformer", "TextConfig", "UnsafeCheckpointError", "VideoConfig",
    "build_text_model", "build_tokenizer", "bundled_text_model_path", "load_checkpoint", "safe_torch_load",
]
