"""SafeCheckpointIO: Lightning's checkpoint plugin, reading through the restricted unpickler.

`--ckpt_path` and `trainer.test(ckpt_path=...)` load a whole pickle; a checkpoint from
somewhere else must not be able to run code while it loads.
"""
from __future__ import annotations

from typing import Any, Callable, Optional

from lightning_fabric.plugins import TorchCheckpointIO
from lightning_fabric.utilities.types import _PATH

from .safe_load import safe_torch_load


class SafeCheckpointIO(TorchCheckpointIO):
    """Reads checkpoints with `safe_torch_load` (onto the CPU; Lightning moves the weights)."""

    def load_checkpoint(self, path: _PATH, map_location: Optional[Callable] = None,
                        weights_only: Optional[bool] = None) -> dict[str, Any]:
        return safe_torch_load(path)
