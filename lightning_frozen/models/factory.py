"""``create_model``: the one way to build a ``FrozenInTime`` and give it weights.

As timm's ``create_model`` and open_clip's ``create_model_and_transforms`` do: a config (a
dict, config dataclasses, or a preset name) builds the modules, then weights come through
the one loader, ``load_checkpoint``. With no weights file, the towers' own pretrained
weights are loaded where the config asks for them (``text.pretrained``,
``video.pretrained`` / ``video.pretrained_path``).
"""
from __future__ import annotations

from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any, Mapping, Optional, Union

from torch import nn

from .checkpoint import TemporalFix, load_checkpoint, safe_torch_load
from .frozen import FrozenInTime, TextConfig, VideoConfig, as_config
from .text import pretrained_text_weights

__all__ = ["PRESETS", "create_model", "load_pretrained_towers", "model_config"]

# The published geometries (Bain et al. 2021): ViT-B at 224 px, DistilBERT, a 256-d joint space.
PRESETS: dict[str, dict[str, Any]] = {
    "stformer_b_16_224": {"video": {"arch": "base_patch16_224", "num_frames": 4},
                          "text": {"name_or_path": "distilbert-base-uncased"}, "projection_dim": 256},
    "stformer_b_32_224": {"video": {"arch": "base_patch32_224", "num_frames": 4},
                          "text": {"name_or_path": "distilbert-base-uncased"}, "projection_dim": 256},
}
_TIMM_VIT = {"base_patch16_224": "vit_base_patch16_224", "base_patch32_224": "vit_base_patch32_224"}

ModelConfigLike = Union[str, Mapping[str, Any], None]


def model_config(config: ModelConfigLike) -> dict[str, Any]:
    """``{"video": VideoConfig, "text": TextConfig, "projection_dim": int}`` from a preset name or a
    mapping with those keys (other keys, such as a checkpoint's optimiser settings, are ignored)."""
    if isinstance(config, str):
        if config not in PRESETS:
            raise ValueError(f"unknown model preset {config!r}; presets: {sorted(PRESETS)}")
        config = PRESETS[config]
    config = dict(config or {})
    projection_dim = int(config.get("projection_dim", 256))
    if projection_dim < 1:
        raise ValueError(f"projection_dim must be >= 1, got {projection_dim}")
    return {"video": as_config(config.get("video"), VideoConfig), "text": as_config(config.get("text"), TextConfig),
            "projection_dim": projection_dim}


def _config_in_checkpoint(checkpoint: Any, name: str) -> dict[str, Any]:
    hparams = checkpoint.get("hyper_parameters") if isinstance(checkpoint, Mapping) else None
    if not isinstance(hparams, Mapping) or "video" not in hparams:
        raise ValueError(f"{name} does not record its model config (a published or plain weights file): "
                         f"pass one, e.g. create_model('stformer_b_16_224', weights='{name}')")
    return {k: asdict(v) if is_dataclass(v) else v for k, v in hparams.items()}


def create_model(config: ModelConfigLike = None, weights: Union[str, Path, None] = None,
                 temporal_fix: TemporalFix = "zeros", pretrained: bool = True, strict: bool = True) -> FrozenInTime:
    """Build a ``FrozenInTime`` from ``config`` and load ``weights`` into it.

    Args:
        config: a preset name (``"stformer_b_16_224"``), or a mapping with ``video``, ``text`` and
            ``projection_dim``; None takes the config recorded in ``weights`` (this project's ``.ckpt``).
        weights: a published ``.pth.tar``, one of our ``.ckpt`` files, a plain state dict or timm ViT
            weights; the temporal embedding is fitted to the model's frame count by ``temporal_fix``.
        pretrained: without ``weights``, load the towers' pretrained weights where the config asks.
        strict: refuse a weights file whose keys do not cover the model.
    """
    checkpoint = safe_torch_load(weights) if weights is not None else None
    name = Path(weights).name if weights is not None else ""
    if config is None:
        if checkpoint is None:
            raise ValueError("create_model needs a config or a weights file that records one")
        config = _config_in_checkpoint(checkpoint, name)
    model = FrozenInTime(**model_config(config))
    if checkpoint is not None:
        load_checkpoint(model, checkpoint, temporal_fix, strict, name=name)
    elif pretrained:
        load_pretrained_towers(model)
    return model


def load_pretrained_towers(model: nn.Module) -> None:
    """The text encoder's pretrained weights and ImageNet ViT weights, where the model's config asks."""
    video, text = model.video_config, model.text_config
    if text.pretrained:
        model.text_model.load_state_dict(pretrained_text_weights(text.name_or_path, text.config_overrides))
    if video.pretrained_path:
        load_checkpoint(model, video.pretrained_path)
    elif video.pretrained:
        load_checkpoint(model, _timm_vit_weights(video.arch), name=f"timm {video.arch}")


def _timm_vit_weights(arch: Optional[str]) -> dict:
    import timm

    name = _TIMM_VIT.get(arch or "")
    if name is None:
        raise ValueError(f"video.pretrained needs a published arch ({sorted(_TIMM_VIT)}), got {arch!r}")
    try:
        return timm.create_model(name, pretrained=True).state_dict()
    except Exception as err:  # hub errors come in many types
        raise OSError(
            f"could not fetch ImageNet weights for {name} (no network or cache). "
            "Set video.pretrained_path to a local ViT state dict (.pth, .bin or .safetensors with timm key names) "
            "and video.pretrained: false."
        ) from err
