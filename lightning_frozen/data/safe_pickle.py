"""A restricted unpickler for small metadata pickles (never plain ``pickle.load``).

Dataset pickles such as MSR-VTT's ``jsfusion_val_caption_idx.pkl`` only need plain
containers of strings and integers; any other global a pickle asks for (the way a
malicious pickle runs code) is refused before it is looked up.
"""

from __future__ import annotations

import io
import os
import pickle
from typing import Any, Union

import numpy as np


class UnsafePickleError(pickle.UnpicklingError):
    """A pickle asked for something outside the allowed plain types."""


def _integer_dtype(*args: Any) -> np.dtype:
    dtype = np.dtype(*args)
    if dtype.kind not in "iu":
        raise UnsafePickleError(f"numpy dtype {dtype} is not an integer type")
    return dtype


def _numpy_scalar(dtype: np.dtype, data: bytes = b"") -> Any:
    if not isinstance(dtype, np.dtype) or dtype.kind not in "iu" or not isinstance(data, bytes):
        raise UnsafePickleError("only integer numpy scalars are allowed")
    return np.frombuffer(data, dtype=dtype, count=1)[0]


_ALLOWED = {
    ("builtins", "dict"): dict,
    ("builtins", "list"): list,
    ("builtins", "str"): str,
    ("builtins", "int"): int,
    ("numpy", "dtype"): _integer_dtype,
    ("numpy.core.multiarray", "scalar"): _numpy_scalar,
    ("numpy._core.multiarray", "scalar"): _numpy_scalar,
}


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file, source: str):
        super().__init__(file)
        self.source = source

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise UnsafePickleError(
                f"'{self.source}' asks for {module}.{name}, which a metadata pickle never "
                "needs; refusing to load it (replace the file with a clean copy)"
            ) from None


def load_restricted_pickle(path: Union[str, os.PathLike]) -> Any:
    """Unpickle ``path`` allowing only dict/list/str/int and integer numpy scalars."""
    with open(path, "rb") as handle:
        data = handle.read()
    return _RestrictedUnpickler(io.BytesIO(data), str(path)).load()


def load_caption_index(path: Union[str, os.PathLike]) -> dict[str, int]:
    """Read a pickled ``{video id: caption index}`` dict and check its types."""
    value = load_restricted_pickle(path)
    if not isinstance(value, dict):
        raise ValueError(f"'{path}' should hold a dict of video id -> caption index, got {type(value).__name__}")
    result = {}
    for key, index in value.items():
        if not isinstance(key, str) or not isinstance(index, (int, np.integer)) or isinstance(index, bool):
            raise ValueError(f"'{path}': entry {key!r}: {index!r} is not str -> int")
        result[key] = int(index)
    return result
