"""The one restricted unpickler, for every pickle we read that we did not write ourselves.

Published Frozen-in-Time checkpoints pickle objects of the original code base (its config
class), so they cannot be read with ``weights_only=True``; dataset metadata such as
MSR-VTT's ``jsfusion_val_caption_idx.pkl`` is a pickle too. Both go through
``RestrictedUnpickler``: it resolves only an allowlist of tensor-rebuilding functions and
plain types, turns every other class into an inert placeholder that keeps its pickled
state, and refuses any pickle that would *call* something unknown (``os.system``,
``eval``, ...) before it runs. Nothing unknown is ever imported.
"""
from __future__ import annotations

import _compat_pickle
import collections
import functools
import io
import os
import pickle
import types
import zipfile
from pathlib import Path
from typing import Any, Union

import torch

__all__ = ["ForeignObject", "RestrictedUnpickler", "UnsafePickleError", "load_pickle", "safe_torch_load"]


class UnsafePickleError(pickle.UnpicklingError):
    """The file asks the unpickler to call something that is not on the allowlist."""


# Callables a pickle may use to rebuild tensors and plain containers.
_REBUILDERS = ("_rebuild_tensor", "_rebuild_tensor_v2", "_rebuild_parameter", "_rebuild_parameter_with_state")
_PLAIN_TYPES = (dict, list, str, int, set, frozenset, slice, complex, bytearray)
_DTYPES = ("float32", "float16", "bfloat16", "float64", "int64", "int32", "uint8", "bool")
_ALLOWED: dict[tuple[str, str], Any] = {
    **{("torch._utils", name): getattr(torch._utils, name) for name in _REBUILDERS},
    **{("builtins", kind.__name__): kind for kind in _PLAIN_TYPES},
    **{("torch", name): getattr(torch, name) for name in _DTYPES},
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch", "Size"): torch.Size,
    ("torch", "device"): torch.device,
    ("pathlib", "PosixPath"): Path,
    ("pathlib", "WindowsPath"): str,
    ("pathlib", "Path"): Path,
    ("pathlib", "PurePosixPath"): Path,
    ("argparse", "Namespace"): types.SimpleNamespace,
}


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
    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        raise UnsafePickleError(
            f"the pickle would call {cls._foreign_name}(...) while loading; refusing to run it. "
            "Only load files from sources you trust; if this one is, re-save its tensors "
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
    attributes = {"_foreign_name": f"{module}.{name}", "__module__": "foreign." + module}
    return _ForeignMeta(name, (ForeignObject,), attributes)


def _safe_reconstructor(cls: type, base: type, state: Any) -> Any:
    """copyreg's protocol-0/1 object rebuild, limited to placeholders and plain builtins."""
    if isinstance(cls, _ForeignMeta):
        return object.__new__(cls)
    if base is object and cls in (dict, list, set):
        return cls()
    raise UnsafePickleError(f"the pickle rebuilds {cls!r} through copyreg; refusing")


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


# torch.load takes a pickle *module*; this one only knows the restricted unpickler.
restricted_pickle = types.ModuleType("lightning_frozen_restricted_pickle")
restricted_pickle.Unpickler = RestrictedUnpickler  # type: ignore[attr-defined]
restricted_pickle.load = lambda f, **kw: RestrictedUnpickler(f, **kw).load()  # type: ignore[attr-defined]
restricted_pickle.loads = lambda b, **kw: RestrictedUnpickler(io.BytesIO(b), **kw).load()  # type: ignore[attr-defined]


def load_pickle(path: Union[str, os.PathLike]) -> Any:
    """Unpickle a plain metadata file through the restricted unpickler."""
    with open(path, "rb") as handle:
        data = handle.read()
    try:
        return RestrictedUnpickler(io.BytesIO(data)).load()
    except UnsafePickleError as err:
        raise UnsafePickleError(f"'{path}': {err}") from None
    except (pickle.UnpicklingError, EOFError, ValueError) as err:
        message = f"'{path}' is not a readable pickle ({err}); replace it with a clean copy"
        raise pickle.UnpicklingError(message) from None


def safe_torch_load(path: Union[str, os.PathLike], mmap: bool = False) -> Any:
    """``torch.load`` through the restricted unpickler, onto the CPU (``.safetensors`` too).

    ``mmap=True`` maps the tensors instead of reading them (for a look at the keys, shapes and
    settings of a large file); files in torch's old format are then read whole.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        if mmap and zipfile.is_zipfile(path):
            return torch.load(path, map_location="cpu", weights_only=False, pickle_module=restricted_pickle,
                              mmap=True)
        return torch.load(path, map_location="cpu", weights_only=False, pickle_module=restricted_pickle)
    except UnsafePickleError as err:
        raise UnsafePickleError(f"{path.name}: {err}") from None
    except (RuntimeError, EOFError, pickle.UnpicklingError, ValueError) as err:
        # torch's own messages ("failed finding central directory") name no file
        raise pickle.UnpicklingError(f"{path} is not a readable checkpoint (truncated, or not written by torch.save: "
                                     f"{str(err).splitlines()[0]}); use an intact copy") from None
