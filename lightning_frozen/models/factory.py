"""``create_model``: the one way to build a ``FrozenInTime`` and give it weights.

As timm's ``create_model`` and open_clip's ``create_model_and_transforms`` do: a config (a
dict, config dataclasses, or a preset name) builds the modules, then weights come through
the one loader, ``load_checkpoint``. With no weights file, the towers' own pretrained
weights are loaded where the config asks for them (``text.pretrained``,
``video.pretrained`` / ``video.pretrained_path``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Union

from torch import nn

from .checkpoint import NOT_IN_CLIP, TemporalFix, load_checkpoint, load_state_dict_into, read_weights, safe_torch_load
from .clip import clip_hub_id, convert_clip_state_dict, read_clip_weights
from .config import PRESETS, ModelConfig, arch_names
from .frozen import FrozenInTime
from .text import pretrained_text_weights

# The keys each CLIP tower fills (a temporal transformer starts from CLIP's text layers, as CLIP4Clip's).
_CLIP_PARTS = {"video": ("video_model.", "vid_proj.", "temporal."), "text": ("text_model.", "txt_proj.")}

__all__ = ["PRESETS", "create_model", "load_pretrained_towers"]

ModelConfigLike = Union[str, Mapping[str, Any], ModelConfig, None]


def create_model(config: ModelConfigLike = None, weights: Union[str, Path, None] = None,
                 temporal_fix: TemporalFix = "zeros", pretrained: bool = True, strict: bool = True) -> FrozenInTime:
    """Build a ``FrozenInTime`` from ``config`` and load ``weights`` into it.

    Args:
        config: a preset name (``"stformer_b_16_224"``), a ``ModelConfig``, or a mapping with ``video``,
            ``text`` and ``projection_dim``; None takes the config recorded in ``weights`` (our ``.ckpt``).
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
        config = ModelConfig.from_checkpoint(checkpoint, name)
    config = ModelConfig.of(config)
    model = FrozenInTime(config.video, config.text, config.projection_dim)
    if checkpoint is not None:
        load_checkpoint(model, checkpoint, temporal_fix, strict, name=name)
    elif pretrained:
        load_pretrained_towers(model)
    return model


def load_pretrained_towers(model: nn.Module) -> None:
    """The towers' pretrained weights where the model's config asks: the text encoder's, ImageNet ViT
    weights, or CLIP's (a CLIPModel folder or hub id, read once for both towers)."""
    video, text = model.video_config, model.text_config
    clip_sources: dict[str, list[str]] = {}
    if text.pretrained and text.tower == "clip":
        clip_sources.setdefault(text.name_or_path, []).append("text")
    elif text.pretrained:
        model.text_model.load_state_dict(pretrained_text_weights(text.name_or_path, text.config_overrides))
    if video.tower == "clip" and (video.pretrained_path or video.pretrained):
        clip_sources.setdefault(video.pretrained_path or clip_hub_id(video.arch), []).append("video")
    elif video.pretrained_path:
        load_checkpoint(model, video.pretrained_path)
    elif video.pretrained:
        load_checkpoint(model, _timm_vit_weights(video.arch), name=f"timm {video.arch}")
    for source, parts in clip_sources.items():
        _load_clip_towers(model, source, parts)


def _load_clip_towers(model: nn.Module, source: str, parts: list[str]) -> None:
    """The ``parts`` ("video", "text") of a CLIPModel (a folder, its weights file or a hub id)."""
    state, name = read_weights(source) if Path(source).is_file() else (read_clip_weights(source), source)
    keep = tuple(prefix for part in parts for prefix in _CLIP_PARTS[part])
    others = tuple(prefix for part, prefixes in _CLIP_PARTS.items() if part not in parts for prefix in prefixes)
    converted = {k: v for k, v in convert_clip_state_dict(state, model.state_dict()).items() if k.startswith(keep)}
    load_state_dict_into(model, converted, source=f"{name} (CLIP weights)", allowed_missing=NOT_IN_CLIP + others)


def _timm_vit_weights(arch: Union[str, None]) -> dict:
    import timm

    if arch not in arch_names():
        raise ValueError(f"video.pretrained needs a published arch ({arch_names()}), got {arch!r}")
    name = f"vit_{arch}"  # timm's name of the ImageNet ViT of this geometry
    try:
        return timm.create_model(name, pretrained=True).state_dict()
    except Exception as err:  # hub errors come in many types
        raise OSError(
            f"could not fetch ImageNet weights for {name} (no network or cache). "
            "Set video.pretrained_path to a local ViT state dict (.pth, .bin or .safetensors with timm key names) "
            "and video.pretrained: false."
        ) from err
