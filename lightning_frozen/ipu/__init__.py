"""Graphcore IPU support: accelerator, strategy, stage map, poptorch options, CPU emulator, planner.

``register()`` adds ``accelerator: ipu`` and the ``ipu_strategy`` / ``ipu_emulator`` strategy names to
Lightning's registries; `lightning-frozen` calls it, and so does the first use of any name below
(``from lightning_frozen.ipu import IPUStrategy``). Names load on first use: ``ipu-plan --help`` needs
neither torch nor Lightning.
"""
import importlib

_LAZY = {
    "IPUAccelerator": ".accelerator", "IPUOptions": ".options", "build_options": ".options",
    "StageMap": ".pipeline", "StageMapError": ".pipeline", "IPUPrecision": ".precision",
    "IPUStrategy": ".strategy", "load_poptorch": ".strategy",
}

__all__ = [*_LAZY, "register"]


def register() -> None:
    """Register the IPU accelerator and strategies with Lightning (idempotent)."""
    from .accelerator import register as register_accelerator
    from .strategy import register as register_strategy

    register_accelerator()
    register_strategy()


def __getattr__(name: str):
    if name in _LAZY:
        register()
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
