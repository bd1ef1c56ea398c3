"""Which poptorch to use: Graphcore's (from the Poplar SDK) or our CPU emulator.

One place decides, and a missing SDK gives one clear error instead of an ImportError deep
inside Lightning.
"""
from __future__ import annotations

import importlib
from types import ModuleType

MISSING_POPTORCH = (
    "IPUStrategy needs poptorch, which ships only with Graphcore's Poplar SDK (it is not on PyPI): "
    "install the SDK, `source <sdk>/enable.sh` and `pip install <sdk>/poptorch-*.whl` on an IPU host. "
    "To run the IPU code path on a CPU instead, give the strategy `emulator: true` "
    "(lightning_frozen.ipu.emulator)."
)


def poptorch_installed() -> bool:
    """True when Graphcore's poptorch can be imported here."""
    try:
        importlib.import_module("poptorch")
    except ImportError:
        return False
    return True


def load_poptorch(emulator: bool = False) -> ModuleType:
    """The poptorch module to drive: the emulator when asked for, else the real one (or a clear error)."""
    if emulator:
        from . import emulator as emulated

        return emulated
    try:
        return importlib.import_module("poptorch")
    except ImportError as err:
        raise ModuleNotFoundError(MISSING_POPTORCH) from err


def is_emulator(poptorch: ModuleType) -> bool:
    return bool(getattr(poptorch, "IS_EMULATOR", False))
