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

from .checkpoint import TemporalFix, load_checkpoint, safe_torch_load
from .config import PRESETS, ModelConfig, arch_names
from .frozen import FrozenInTime
from .text import pretrained_text_weights

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
    """The text encoder's pretrained weights and ImageNet ViT weights, where the model's config asks."""
    video, text = model.video_config, model.text_config
    if text.pretrained:
        model.text_model.load_state_dict(pretrained_text_weights(text.name_or_path, text.config_overrides))
    if video.pretrained_path:
        load_checkpoint(model, video.pretrained_path)
    elif video.pretrained:
        load_checkpoint(model, _timm_vit_weights(video.arch), name=f"timm {video.arch}")


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
