"""``IPUAccelerator``: lets YAML say ``trainer.accelerator: ipu`` and ``trainer.devices: 8``.

Devices here are IPUs; the host-side torch device is the CPU (poptorch owns the transfer
to the IPUs), so every "parallel device" is ``cpu`` and the count is what the strategy
checks the stage map and replication factor against.
"""
from __future__ import annotations

from typing import Any, Union

import torch
from lightning_fabric.accelerators.registry import _AcceleratorRegistry
from pytorch_lightning.accelerators import Accelerator
from pytorch_lightning.utilities.exceptions import MisconfigurationException


class IPUAccelerator(Accelerator):
    """Graphcore IPUs driven through poptorch (or the CPU emulator)."""

    def setup_device(self, device: torch.device) -> None:
        if device.type != "cpu":
            raise MisconfigurationException(f"IPUAccelerator drives IPUs from the host (cpu), got device {device}")

    def teardown(self) -> None:
        pass

    def get_device_stats(self, device: Any) -> dict[str, Any]:
        return {}

    @staticmethod
    def parse_devices(devices: Union[int, str, list]) -> int:
        """Number of IPUs: an int (or its string); a list of ids counts its entries."""
        if isinstance(devices, (list, tuple)):
            return len(devices)
        if isinstance(devices, str):
            if devices == "auto":
                return 1
            devices = int(devices)
        if not isinstance(devices, int) or devices < 1:
            raise MisconfigurationException(
                f"trainer.devices for IPUs must be a positive number of IPUs, got {devices!r}")
        return devices

    @staticmethod
    def get_parallel_devices(devices: Union[int, str, list]) -> list[torch.device]:
        return [torch.device("cpu")] * IPUAccelerator.parse_devices(devices)

    @staticmethod
    def auto_device_count() -> int:
        return 1

    @staticmethod
    def is_available() -> bool:
        """Always selectable: the strategy picks poptorch or the emulator, and fails clearly without either
        (Lightning checks availability before it builds a strategy named by string, e.g. ``ipu_emulator``)."""
        return True

    def setup(self, trainer: Any) -> None:
        from .strategy import IPUStrategy

        if not isinstance(trainer.strategy, IPUStrategy):
            raise MisconfigurationException(
                f"accelerator: ipu needs the IPU strategy, got {type(trainer.strategy).__name__}; fix: set "
                "trainer.strategy to lightning_frozen.ipu.IPUStrategy (or 'ipu_strategy' / 'ipu_emulator')")

    @staticmethod
    def name() -> str:
        return "ipu"

    @classmethod
    def register_accelerators(cls, accelerator_registry: _AcceleratorRegistry) -> None:
        accelerator_registry.register(cls.name(), cls, description=cls.__name__)


def register() -> None:
    """Add ``ipu`` to Lightning's accelerator registry (idempotent)."""
    from pytorch_lightning.accelerators import AcceleratorRegistry

    if "ipu" not in AcceleratorRegistry:
        IPUAccelerator.register_accelerators(AcceleratorRegistry)
