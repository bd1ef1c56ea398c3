"""The one loader of weights we did not write in this process: published Frozen-in-Time
checkpoints, this project's Lightning checkpoints, plain state dicts, timm ViT weights and
Hugging Face CLIP models (a ``CLIPModel`` folder, or its weights file).

Every file goes through the restricted unpickler of ``lightning_frozen.safe_load``. Key
names are mapped onto ``FrozenInTime``'s (``checkpoint_filter_fn``, as in timm's model
files), the temporal embedding is inflated or cut to the model's frame count, a 2D patch
embedding is inflated into a Conv3d tubelet kernel (the model's ``inflate``), and any other
shape mismatch is refused with the keys named.

Image weights (timm ViT, or an MAE encoder: its decoder dropped, its separate q/v biases joined)
fill the video tower only; with ``time_init: copy`` its time attention starts as a copy of
their space attention, and a class token they lack (MAE) is drawn from a truncated normal.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping, Union

import torch
import torch.nn.functional as F
from timm.layers import trunc_normal_
from torch import Tensor, nn

from ..safe_load import UnsafePickleError, safe_torch_load
from .clip import convert_clip_state_dict, is_clip_state_dict, read_clip_weights

__all__ = ["LoadReport", "TemporalFix", "UnsafePickleError", "checkpoint_filter_fn", "extract_state_dict",
           "load_checkpoint", "read_weights", "safe_torch_load"]

log = logging.getLogger(__name__)

TemporalFix = Literal["zeros", "interp", "bilinear"]
# The parts of the dual encoder that ImageNet ViT weights cannot hold.
_NOT_IN_VIT = ("timeattn.", "norm3.", "temporal_embed", "text_model.", "txt_proj.", "vid_proj.")
# What MAE encoders may lack besides: the class token (MAE-pytorch has none) and a learned pos_embed.
_NOT_IN_MAE = ("video_model.cls_token", "video_model.pos_embed")
_MAE_ONLY = ("decoder", "encoder_to_decoder", "mask_token")
# ... and those CLIP's cannot: what models time (a temporal transformer whose width differs from the
# text width cannot start from the text layers), and a learned reuse's decisions.
NOT_IN_CLIP = ("timeattn.", "norm3.", "temporal_embed", "temporal.", "reuse.")


def extract_state_dict(obj: Any, source: str = "checkpoint") -> dict[str, Tensor]:
    """The tensor dict inside a published file, a Lightning .ckpt or a plain state dict."""
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model", "module"):
            if key in obj and isinstance(obj[key], Mapping):
                return extract_state_dict(obj[key], source)
        tensors = {k: v for k, v in obj.items() if isinstance(v, Tensor)}
        if tensors:
            return tensors
    raise ValueError(f"{source} holds no state dict (expected a 'state_dict' key or a dict of tensors)")


def checkpoint_filter_fn(state_dict: Mapping[str, Tensor], model: nn.Module) -> dict[str, Tensor]:
    """Map foreign key names onto FrozenInTime's: DataParallel `module.`, Lightning `model.`,
    bare timm ViT keys (into `video_model.`), and drop heads and buffers the model lacks."""
    own = set(model.state_dict())
    own_roots = {k.split(".")[0] for k in own}
    out: dict[str, Tensor] = {}
    for key, value in state_dict.items():
        for prefix in ("module.", "model."):
            if key.startswith(prefix) and key[len(prefix):].split(".")[0] in own_roots:
                key = key[len(prefix):]
        if key not in own and f"video_model.{key}" in own:
            key = f"video_model.{key}"  # timm ViT key names
        if key.startswith(("video_model.head.", "video_model.pre_logits.", "head.", "pre_logits.", "fc_norm.")):
            continue
        if key not in own and (key.endswith("position_ids") or key.startswith("text_model.pooler.")):
            continue  # a buffer older transformers saved; a pooler the text tower does not use
        out[key] = value
    return out


def adapt_temporal_embed(loaded: Tensor, num_frames: int, temporal_fix: TemporalFix = "zeros") -> Tensor:
    """Cut or inflate a (1, F, D) temporal embedding to `num_frames` rows."""
    have = loaded.shape[1]
    if have >= num_frames:
        return loaded[:, :num_frames].clone()
    if temporal_fix == "zeros":
        out = loaded.new_zeros(loaded.shape[0], num_frames, loaded.shape[2])
        out[:, :have] = loaded
        return out
    if temporal_fix in ("interp", "bilinear"):
        mode = "nearest" if temporal_fix == "interp" else "linear"
        kwargs = {} if mode == "nearest" else {"align_corners": True}
        # interpolate along the frame axis, each embedding channel independently
        return F.interpolate(loaded.transpose(1, 2), size=num_frames, mode=mode, **kwargs).transpose(1, 2)
    raise ValueError(f"temporal_fix must be 'zeros', 'interp' or 'bilinear', got {temporal_fix!r}")


@dataclass
class LoadReport:
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    adapted: list[str] = field(default_factory=list)


def load_state_dict_into(model: nn.Module, state_dict: Mapping[str, Tensor], temporal_fix: TemporalFix = "zeros",
                         strict: bool = True, source: str = "checkpoint",
                         allowed_missing: tuple[str, ...] = ()) -> LoadReport:
    """Load foreign weights with key mapping and temporal inflation; refuse other shape mismatches."""
    state = checkpoint_filter_fn(state_dict, model)
    own = model.state_dict()
    report = LoadReport()
    mismatched = []
    for key, value in list(state.items()):
        if key not in own:
            continue
        if key.endswith("temporal_embed") and value.shape != own[key].shape and value.dim() == 3:
            state[key] = adapt_temporal_embed(value, own[key].shape[1], temporal_fix)
            report.adapted.append(f"{key}: {tuple(value.shape)} -> {tuple(state[key].shape)} ({temporal_fix})")
        elif key.endswith("patch_embed.proj.weight") and value.dim() == 4 and own[key].dim() == 5:
            embed = model.get_submodule(key[: -len(".proj.weight")])
            state[key] = embed.inflated(value)
            report.adapted.append(f"{key}: {tuple(value.shape)} -> {tuple(state[key].shape)} "
                                  f"({embed.inflate} inflation)")
        elif value.shape != own[key].shape:
            mismatched.append(f"{key}: file {tuple(value.shape)} vs model {tuple(own[key].shape)}")
    if mismatched:
        raise ValueError(
            f"{source}: shapes differ from the model for {len(mismatched)} keys:\n  " + "\n  ".join(mismatched)
            + "\nCheck that the model config (video arch/img_size/patch_size, text model, projection_dim) "
            "matches the one the checkpoint was trained with."
        )
    result = model.load_state_dict(state, strict=False)
    report.missing = [k for k in result.missing_keys if not any(a in k for a in allowed_missing)]
    report.unexpected = list(result.unexpected_keys)
    if strict and (report.missing or report.unexpected):
        raise ValueError(
            f"{source}: keys do not match the model. Missing ({len(report.missing)}): {report.missing[:8]}"
            f"{' ...' if len(report.missing) > 8 else ''}; unexpected ({len(report.unexpected)}): "
            f"{report.unexpected[:8]}{' ...' if len(report.unexpected) > 8 else ''}"
        )
    for line in report.adapted:
        log.info("adapted %s", line)
    return report


def _is_mae(state: Mapping[str, Tensor]) -> bool:
    """An MAE checkpoint: its decoder or mask token, or encoder weights under ``encoder.`` (MAE-pytorch)."""
    return any(k.startswith(_MAE_ONLY) or k.startswith("encoder.patch_embed.") for k in state)


def mae_to_vit(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """An MAE checkpoint's encoder under timm ViT key names: the decoder and mask token dropped,
    ``encoder.`` stripped, separate q and v biases (MAE-pytorch; k has none) joined into the qkv bias."""
    out: dict[str, Tensor] = {}
    for source, value in state.items():
        if source.startswith(_MAE_ONLY) or source.endswith(".attn.v_bias"):
            continue
        key = source.removeprefix("encoder.")
        if key.endswith(".attn.q_bias"):
            v_bias = state[source.replace("q_bias", "v_bias")]
            out[key.replace("q_bias", "qkv.bias")] = torch.cat([value, torch.zeros_like(value), v_bias])
        else:
            out[key] = value
    return out


def space_to_time(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """ViT weights plus time attention (and norm3) copied from each block's space attention (and norm1)."""
    out = dict(state)
    for key, value in state.items():
        for space, time in ((".attn.", ".timeattn."), (".norm1.", ".norm3.")):
            if key.startswith("blocks.") and space in key:
                out.setdefault(key.replace(space, time), value.clone())
    return out


def _load_image_weights(model: nn.Module, state: Mapping[str, Tensor], temporal_fix: TemporalFix, strict: bool,
                        name: str, mae: bool, allowed_missing: tuple[str, ...] = ()) -> LoadReport:
    """ViT or MAE encoder weights into the video tower (see the module docstring)."""
    tower = model.video_model
    if getattr(tower, "time_init", None) == "copy":
        state = space_to_time(state)
    allowed = _NOT_IN_VIT + (_NOT_IN_MAE if mae else ()) + allowed_missing
    report = load_state_dict_into(model, state, temporal_fix, strict,
                                  source=f"{name} ({'MAE' if mae else 'ViT'} weights)", allowed_missing=allowed)
    drawn = []
    if "cls_token" not in state:
        trunc_normal_(tower.cls_token, std=0.02)
        drawn.append(f"video_model.cls_token: not in {name}, drawn from a truncated normal (std 0.02)")
    if "pos_embed" not in state:
        drawn.append(f"video_model.pos_embed: not in {name}, kept as initialised")
    for line in drawn:
        log.info("%s", line)
    report.adapted += drawn
    return report


def _is_timm_vit(state: Mapping[str, Tensor]) -> bool:
    """Bare ImageNet ViT key names (timm): a patch embedding and blocks, no tower prefixes."""
    return "patch_embed.proj.weight" in state and not any(k.startswith(("video_model.", "module.", "model."))
                                                          for k in state)


def read_weights(source: Union[str, Path, Mapping[str, Any]], name: str = "") -> tuple[dict[str, Tensor], str]:
    """(state dict, label for errors) of a weights file, a CLIPModel folder or contents already in memory."""
    if isinstance(source, Mapping):
        name = name or "state dict"
        return extract_state_dict(source, name), name
    name = Path(source).name
    if Path(source).is_dir():
        return read_clip_weights(str(source)), name
    return extract_state_dict(safe_torch_load(source), name), name


def load_checkpoint(model: nn.Module, source: Union[str, Path, Mapping[str, Any]],
                    temporal_fix: TemporalFix = "zeros", strict: bool = True, name: str = "",
                    allowed_missing: tuple[str, ...] = ()) -> LoadReport:
    """Load weights into a ``FrozenInTime``: a path (published ``.pth.tar``, a Lightning ``.ckpt``,
    a plain state dict, ``.safetensors``, a Hugging Face ``CLIPModel`` folder) or such a file's
    contents already in memory (``name`` then labels it in errors). Keys whose names contain
    one of ``allowed_missing`` may be absent from the file.

    ImageNet ViT weights (timm key names) and MAE checkpoints fill the video tower only: its time
    attention (copied from the space attention with ``time_init: copy``), ``norm3`` and temporal
    embedding, the text tower and the projections are left as they are.
    CLIP weights fill both towers and their projections (CLIP's towers); what models time is
    left as it is (see ``clip.convert_clip_state_dict``).
    """
    state, name = read_weights(source, name)
    mae = _is_mae(state)
    if mae:
        state = mae_to_vit(state)
    if mae or _is_timm_vit(state):
        return _load_image_weights(model, state, temporal_fix, strict, name, mae, allowed_missing)
    if is_clip_state_dict(state):
        return load_state_dict_into(model, convert_clip_state_dict(state, model.state_dict()), temporal_fix, strict,
                                    source=f"{name} (CLIP weights)", allowed_missing=NOT_IN_CLIP + allowed_missing)
    return load_state_dict_into(model, state, temporal_fix, strict, source=name, allowed_missing=allowed_missing)
