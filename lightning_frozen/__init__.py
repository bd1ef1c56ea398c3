"""lightning-frozen: Frozen-in-Time text-video retrieval as a PyTorch Lightning project.

Imports stay light: ``create_model`` and ``load_checkpoint`` load the model package on first use.
"""
__version__ = "0.1.0"

_LAZY = {"create_model": ".models", "load_checkpoint": ".models"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
