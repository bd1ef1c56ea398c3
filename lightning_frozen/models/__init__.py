"""The dual encoder: video tower, text tower, joint model, the factory and the one weight loader."""
from ..safe_load import UnsafePickleError, safe_torch_load
from ..tokenizer import build_tokenizer, bundled_text_model_path
from .checkpoint import LoadReport, load_checkpoint
from .factory import PRESETS, create_model, load_pretrained_towers, model_config
from .frozen import FrozenInTime, TextConfig, VideoConfig
from .space_time import SpaceTimeTransformer
from .text import build_text_model

__all__ = [
    "PRESETS", "FrozenInTime", "LoadReport", "SpaceTimeTransformer", "TextConfig", "UnsafePickleError", "VideoConfig",
    "build_text_model", "build_tokenizer", "bundled_text_model_path", "create_model", "load_checkpoint",
    "load_pretrained_towers", "model_config", "safe_torch_load",
]
