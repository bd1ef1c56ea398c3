"""The dual encoder: video tower, text tower, joint model, the factory and the one weight loader."""
from ..safe_load import UnsafePickleError, safe_torch_load
from ..tokenizer import build_tokenizer, bundled_text_model_path
from .checkpoint import LoadReport, load_checkpoint
from .config import PRESETS, ModelConfig, ReuseConfig, TextConfig, VideoConfig
from .factory import create_model, load_pretrained_towers
from .frozen import FrozenInTime
from .reuse import Reuse
from .space_time import SpaceTimeTransformer
from .text import build_text_model

__all__ = [
    "PRESETS", "FrozenInTime", "LoadReport", "ModelConfig", "Reuse", "ReuseConfig", "SpaceTimeTransformer",
    "TextConfig", "UnsafePickleError", "VideoConfig",
    "build_text_model", "build_tokenizer", "bundled_text_model_path", "create_model", "load_checkpoint",
    "load_pretrained_towers", "safe_torch_load",
]
