"""Graphcore IPU support: accelerator, strategy, stage map, poptorch options, CPU emulator, planner.

Importing this package registers ``accelerator: ipu`` and the ``ipu_strategy`` /
``ipu_emulator`` strategy names with Lightning.
"""
from .accelerator import IPUAccelerator
from .accelerator import register as _register_accelerator
from .options import IPUOptions, build_options
from .pipeline import StageMap, StageMapError
from .precision import IPUPrecision
from .strategy import IPUStrategy, load_poptorch
from .strategy import register as _register_strategy

_register_accelerator()
_register_strategy()

__all__ = [
    "IPUAccelerator", "IPUStrategy", "IPUPrecision", "IPUOptions", "StageMap", "StageMapError",
    "build_options", "load_poptorch",
]
