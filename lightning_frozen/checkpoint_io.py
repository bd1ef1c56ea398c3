"""SafeCheckpointIO: Lightning's checkpoint plugin, reading through the restricted unpickler and
writing atomically.

`--ckpt_path` and `trainer.test(ckpt_path=...)` load a whole pickle; a checkpoint from
somewhere else must not be able to run code while it loads. A save must never leave a
truncated file under a checkpoint's name (full disk, kill -9): it goes through a temporary
file in the same folder, fsync and rename, so the previous checkpoint survives any error.
"""
from __future__ import annotations

from typing import Any, Callable, Optional

from lightning_fabric.plugins import TorchCheckpointIO
from lightning_fabric.utilities.types import _PATH

from .atomic import save_atomically
from .safe_load import safe_torch_load


class SafeCheckpointIO(TorchCheckpointIO):
    """Reads checkpoints with `safe_torch_load` (onto the CPU; Lightning moves the weights) and
    writes them with `save_atomically`."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: _PATH, storage_options: Optional[Any] = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options")
        save_atomically(checkpoint, path)

    def load_checkpoint(self, path: _PATH, map_location: Optional[Callable] = None,
                        weights_only: Optional[bool] = None) -> dict[str, Any]:
        return safe_torch_load(path)
