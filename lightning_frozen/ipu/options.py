"""Typed IPU settings and the poptorch.Options built from them.

Kept separate from the strategy so that the mapping from our YAML keys to poptorch's
option setters can be checked on its own (tests build Options from the 8-IPU configs and
read the values back), and so the same builder serves real poptorch and the emulator.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from types import ModuleType
from typing import Any, Literal, Optional

import torch

OutputModeName = Literal["default", "all", "final", "sum", "every_n"]
ExecutionName = Literal["pipelined", "sharded"]

_OUTPUT_MODES = {"default": "Default", "all": "All", "final": "Final", "sum": "Sum", "every_n": "EveryN"}


@dataclass
class IPUOptions:
    """Settings for one executor (training or inference); None means poptorch's default.

    ``gradient_accumulation`` None takes the Trainer's ``accumulate_grad_batches``.
    ``available_memory_proportion`` is one value per IPU of a replica (index = IPU id).
    """

    replication_factor: int = 1
    device_iterations: int = 1
    gradient_accumulation: Optional[int] = None
    output_mode: OutputModeName = "default"
    output_return_period: Optional[int] = None
    available_memory_proportion: Optional[list[float]] = None
    executable_cache_dir: Optional[str] = None
    half_partials: bool = False
    stochastic_rounding: bool = False
    floating_point_exceptions: bool = False
    optimizer_state_offchip: bool = False
    replicated_tensor_sharding: bool = False
    random_seed: Optional[int] = None
    auto_round_num_ipus: bool = False
    execution: ExecutionName = "pipelined"
    use_ipu_model: bool = False
    extra_popart: dict[str, Any] = field(default_factory=dict)

    def for_inference(self) -> "IPUOptions":
        """The inference counterpart: no accumulation (poptorch rejects it), all outputs, no rounding noise."""
        return replace(self, gradient_accumulation=1, output_mode="all", output_return_period=None,
                       stochastic_rounding=False)


def resolve_accumulation(opts: IPUOptions, trainer_accumulation: int) -> int:
    """Gradient accumulation: the explicit setting, else the Trainer's ``accumulate_grad_batches``."""
    return int(opts.gradient_accumulation if opts.gradient_accumulation is not None else trainer_accumulation)


def build_options(poptorch: ModuleType, opts: IPUOptions, *, training: bool,
                  gradient_accumulation: int = 1) -> Any:
    """A ``poptorch.Options`` holding ``opts`` (for a training or an inference executor)."""
    o = poptorch.Options()
    o.deviceIterations(opts.device_iterations)
    o.replicationFactor(opts.replication_factor)
    if training:
        o.Training.gradientAccumulation(gradient_accumulation)
    elif opts.gradient_accumulation not in (None, 1):
        raise ValueError(f"inference_opts.gradient_accumulation is {opts.gradient_accumulation}, but inference "
                         "executors cannot accumulate gradients; fix: remove it (use device_iterations for a "
                         "deeper pipeline)")
    if opts.output_mode not in _OUTPUT_MODES:
        raise ValueError(f"output_mode {opts.output_mode!r} is not one of {sorted(_OUTPUT_MODES)}")
    if opts.output_mode != "default":
        mode = getattr(poptorch.OutputMode, _OUTPUT_MODES[opts.output_mode])
        if opts.output_mode == "every_n":
            o.outputMode(mode, opts.output_return_period)
        else:
            o.outputMode(mode)
    if opts.available_memory_proportion:
        o.setAvailableMemoryProportion(
            {f"IPU{i}": float(v) for i, v in enumerate(opts.available_memory_proportion)})
    if opts.executable_cache_dir:
        o.enableExecutableCaching(str(opts.executable_cache_dir))
    if opts.half_partials:
        o.Precision.setPartialsType(torch.half)
    o.Precision.enableStochasticRounding(bool(opts.stochastic_rounding))
    o.Precision.enableFloatingPointExceptions(bool(opts.floating_point_exceptions))
    if opts.optimizer_state_offchip or opts.replicated_tensor_sharding:
        location = poptorch.TensorLocationSettings()
        location.useOnChipStorage(not opts.optimizer_state_offchip)
        if opts.replicated_tensor_sharding:
            if opts.replication_factor < 2:
                raise ValueError("replicated_tensor_sharding shards optimizer state across replicas: it needs "
                                 "replication_factor >= 2")
            location.useReplicatedTensorSharding(True)
        o.TensorLocations.setOptimizerLocation(location)
    if opts.random_seed is not None:
        o.randomSeed(int(opts.random_seed))
    o.autoRoundNumIPUs(bool(opts.auto_round_num_ipus))
    if opts.execution == "pipelined":
        o.setExecutionStrategy(poptorch.PipelinedExecution(poptorch.AutoStage.SameAsIpu))
    elif opts.execution == "sharded":
        o.setExecutionStrategy(poptorch.ShardedExecution(poptorch.AutoStage.SameAsIpu))
    else:
        raise ValueError(f"execution must be 'pipelined' or 'sharded', got {opts.execution!r}")
    if opts.use_ipu_model:
        o.useIpuModel(True)
    for key, value in opts.extra_popart.items():
        o._Popart.set(key, value)
    return o


def options_summary(o: Any) -> dict[str, Any]:
    """The values an Options object holds, read back through poptorch's own attributes."""
    popart = o._Popart.options
    location = o.TensorLocations.toDict().get("location_optimizer", {})
    return {
        "device_iterations": o.device_iterations,
        "replication_factor": o.replication_factor,
        "gradient_accumulation": o.Training.gradient_accumulation,
        "output_mode": o.output_mode,
        "available_memory_proportion": dict(o.available_memory_proportion),
        "cache_path": popart.get("cachePath") if popart.get("enableEngineCaching") else None,
        "partials_type": popart.get("partialsTypeMatMuls", "float"),
        "stochastic_rounding": popart.get("enableStochasticRounding", False),
        "floating_point_exceptions": popart.get("enableFloatingPointChecks", False),
        "optimizer_on_chip": bool(location.get("onChip", 1)),
        "replicated_tensor_sharding": bool(location.get("useReplicatedTensorSharding", 0)),
        "random_seed": o.random_seed if o.exists("random_seed") else None,
        "auto_round_num_ipus": o.auto_round_num_ipus,
    }
