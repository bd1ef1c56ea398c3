"""Loading weights from files we did not write: published Frozen-in-Time checkpoints,
this project's Lightning checkpoints, plain state dicts and timm ViT weights.

Published files pickle objects of the original code base (its config class), so they
cannot be read with ``weights_only=True``; they are read with a restricted unpickler that
turns unknown classes into inert placeholders and refuses any pickle that would call a
function it does not know (``os.system``, ``eval``, ...). Nothing unknown is imported.
"""
from __future__ import annotations

import _compat_pickle
import functools
import io
import logging
import types
from dataclasses import dataclass, field
from pathlib import Path
import pickle
from typing import TYPE_CHECKING, Any, Literal, Mapping, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

if TYPE_CHECKING:
    from .frozen import VideoConfig

log = logging.getLogger(__name__)

TemporalFix = Literal["zeros", "interp", "bilinear"]


class UnsafeCheckpointError(pickle.UnpicklingError):
    """The file asks the unpickler to call something that is not on the allowlist."""


# Callables a checkpoint may use to rebuild tensors and plain containers.
_ALLOWED: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): __import__("collections").OrderedDict,
    ("torch._utils", "_rebuild_tensor"): torch._utils._rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): torch._utils._rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): torch._utils._rebuild_parameter_with_state,
    ("torch", "Size"): torch.Size,
    ("torch", "device"): torch.device,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("builtins", "slice"): slice,
    ("builtins", "complex"): complex,
    ("builtins", "bytearray"): bytearray,
    ("pathlib", "PosixPath"): Path,
    ("pathlib", "WindowsPath"): str,
    ("pathlib", "Path"): Path,
    ("pathlib", "PurePosixPath"): Path,
    ("argparse", "Namespace"): types.SimpleNamespace,
}
for _dtype_name in ("float32", "float16", "bfloat16", "float64", "int64", "int32", "uint8", "bool"):
    _ALLOWED[("torch", _dtype_name)] = getattr(torch, _dtype_name)


def _codecs_encode(text: str, encoding: str = "utf-8") -> bytes:
    """How protocol-2 pickles written by Python 3 store bytes."""
    return text.encode(encoding)


@functools.lru_cache(maxsize=1)
def _numpy_allowed() -> dict[tuple[str, str], Any]:
    import numpy as np

    core = np._core if hasattr(np, "_core") else np.core
    out: dict[tuple[str, str], Any] = {}
    for mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
        out[(mod, "_reconstruct")] = core.multiarray._reconstruct
        out[(mod, "scalar")] = core.multiarray.scalar
    out[("numpy", "ndarray")] = np.ndarray
    out[("numpy", "dtype")] = np.dtype
    return out


class _ForeignMeta(type):
    def __call__(cls, *args, **kwargs):
        raise UnsafeCheckpointError(
            f"the checkpoint would call {cls._foreign_name}(...) while loading; refusing to run it. "
            "Only load checkpoints from sources you trust; if this file is one, re-save its state_dict "
            "with torch.save(ckpt['state_dict'], path) in the environment that wrote it."
        )


class ForeignObject(metaclass=_ForeignMeta):
    """Inert stand-in for an instance of a class we do not import; keeps its pickled state."""

    _foreign_name = "?"

    def __setstate__(self, state: Any) -> None:
        self.__dict__["_foreign_state"] = state

    def __repr__(self) -> str:
        return f"<ForeignObject {self._foreign_name}>"


def _placeholder(module: str, name: str) -> type:
    return _ForeignMeta(name, (ForeignObject,), {"_foreign_name": f"{module}.{name}", "__module__": "foreign." + module})


def _safe_reconstructor(cls: type, base: type, state: Any) -> Any:
    """copyreg's protocol-0/1 object rebuild, limited to placeholders and plain builtins."""
    if isinstance(cls, _ForeignMeta):
        return object.__new__(cls)
    if base is object and cls in (dict, list, set):
        return cls()
    raise UnsafeCheckpointError(f"the checkpoint rebuilds {cls!r} through copyreg; refusing")


class RestrictedUnpickler(pickle.Unpickler):
    """Resolves only allowlisted globals; other classes become placeholders that refuse calls."""

    def find_class(self, module: str, name: str) -> Any:
        # Python 2 names in protocol 0-2 pickles, as the standard unpickler maps them
        module, name = _compat_pickle.NAME_MAPPING.get((module, name), (module, name))
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        found = _ALLOWED.get((module, name)) or _numpy_allowed().get((module, name))
        if found is not None:
            return found
        if (module, name) == ("_codecs", "encode"):
            return _codecs_encode
        if (module, name) == ("copyreg", "_reconstructor"):
            return _safe_reconstructor
        if module == "torch" and name.endswith("Storage"):
            return getattr(torch, name)
        return _placeholder(module, name)


restricted_pickle = types.ModuleType("lightning_frozen_restricted_pickle")
restricted_pickle.Unpickler = RestrictedUnpickler  # type: ignore[attr-defined]
restricted_pickle.load = lambda f, **kw: RestrictedUnpickler(f, **kw).load()  # type: ignore[attr-defined]
restricted_pickle.loads = lambda b, **kw: RestrictedUnpickler(io.BytesIO(b), **kw).load()  # type: ignore[attr-defined]
restricted_pickle.__name__ = "lightning_frozen_restricted_pickle"


def safe_torch_load(path: Union[str, Path]) -> Any:
    """torch.load through the restricted unpickler, onto the CPU."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        return torch.load(path, map_location="cpu", weights_only=False, pickle_module=restricted_pickle)
    except UnsafeCheckpointError as err:
        raise UnsafeCheckpointError(f"{path.name}: {err}") from None


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


def load_checkpoint(model: nn.Module, path: Union[str, Path], temporal_fix: TemporalFix = "zeros",
                    strict: bool = True) -> LoadReport:
    """Load a published Frozen-in-Time file, a Lightning .ckpt or a plain state dict into `model`."""
    path = Path(path)
    state = extract_state_dict(safe_torch_load(path), path.name)
    return load_state_dict_into(model, state, temporal_fix, strict, source=path.name)


_VIT_TIMM_NAMES = {"base_patch16_224": "vit_base_patch16_224", "base_patch32_224": "vit_base_patch32_224"}


def load_vit_weights(video_model: nn.Module, config: "VideoConfig") -> LoadReport:
    """ImageNet ViT weights into the video tower: everything but the temporal parts."""
    if config.pretrained_path:
        state = extract_state_dict(safe_torch_load(config.pretrained_path), Path(config.pretrained_path).name)
    else:
        import timm

        name = _VIT_TIMM_NAMES.get(config.arch or "")
        if name is None:
            raise ValueError(f"video.pretrained needs a published arch ({sorted(_VIT_TIMM_NAMES)}), got {config.arch!r}")
        try:
            state = timm.create_model(name, pretrained=True).state_dict()
        except Exception as err:  # hub errors come in many types
            raise OSError(
                f"could not fetch ImageNet weights for {name} (no network or cache). "
                "Set video.pretrained_path to a local ViT state dict (.pth, .bin or .safetensors with timm key names) "
                "and video.pretrained: false."
            ) from err
    holder = nn.Module()
    holder.video_model = video_model
    return load_state_dict_into(holder, state, strict=True, source="ViT weights",
                                allowed_missing=("timeattn", "norm3", "temporal_embed"))
