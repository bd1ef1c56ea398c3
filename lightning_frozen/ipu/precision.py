"""IPU precision: "32", "16.32" (FP16 weights, FP32 optimizer accumulation) and "16.16".

On an IPU the backward pass and the optimizer step run inside the compiled program, so
this plugin's ``backward`` does nothing on the host; it converts the module to the weight
dtype and tells the strategy which accumulator types and loss scaling the poptorch
optimizer needs.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Optional

import torch
from pytorch_lightning.plugins.precision import Precision
from torch import Tensor, nn

IPUPrecisionName = Literal["32", "16.32", "16.16"]


@dataclass(frozen=True)
class PrecisionSpec:
    weights: torch.dtype
    accum_type: torch.dtype
    momentum_type: torch.dtype
    default_loss_scaling: Optional[float]


SPECS = {
    "32": PrecisionSpec(torch.float32, torch.float32, torch.float32, None),
    "16.32": PrecisionSpec(torch.float16, torch.float32, torch.float32, 1024.0),
    "16.16": PrecisionSpec(torch.float16, torch.float16, torch.float16, 1024.0),
}


class IPUPrecision(Precision):
    """Precision plugin for IPUStrategy; names follow Graphcore's "weights.accumulators" convention."""

    def __init__(self, precision: IPUPrecisionName = "32") -> None:
        precision = str(precision)
        if precision not in SPECS:
            raise ValueError(f"IPU precision must be one of {sorted(SPECS)} (weights.optimizer-accumulators), "
                             f"got {precision!r}")
        self.precision = precision  # type: ignore[assignment]
        self.spec = SPECS[precision]

    def convert_module(self, module: nn.Module) -> nn.Module:
        return module.to(self.spec.weights) if self.spec.weights != torch.float32 else module

    def convert_input(self, data: Any) -> Any:
        return data

    def backward(self, tensor: Tensor, model: Any, optimizer: Any, *args: Any, **kwargs: Any) -> None:
        """The device computes gradients; nothing to do on the host."""
        return None

    def optimizer_step(self, optimizer: Any, model: Any, closure: Any, **kwargs: Any) -> Any:
        """The device steps the optimizer; the host only runs the closure (the training step)."""
        return closure()
