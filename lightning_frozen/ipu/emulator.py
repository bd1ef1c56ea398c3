"""A CPU executor with the part of poptorch's API that the IPU strategy uses.

poptorch ships only with Graphcore's Poplar SDK, so CI and laptops cannot import it.
This module stands in for it: same names, same option setters, and the same batching
semantics, so that the strategy's host-side logic (options, combined batches, stage
boundaries, weight transfer between training and inference executors) runs and is
tested without an IPU. It follows the documented behaviour of poptorch 3.x:

* a call consumes a *combined* batch whose first dimension is
  ``device_iterations x gradient_accumulation x replication_factor x micro_batch``, laid
  out ``[device_iterations, gradient_accumulation, replication_factor, micro_batch]``
  (PopART's stepio layout);
* training: for every device iteration, the gradients of all accumulation steps and
  replicas are reduced (mean by default, or sum) and the optimizer steps once;
* outputs follow ``OutputMode`` (training default ``Final``, inference default ``All``);
* the training executor keeps its own device copy of the weights; the host copy is
  refreshed lazily (``copyWeightsToHostIfNeeded``), and an inference executor built on
  the same model uploads fresh host weights before it runs.

It rejects what poptorch would reject (bad option values, a combined batch that does not
divide, gradient accumulation in inference, too little accumulation for a pipeline,
non-power-of-two IPU counts, input shapes that differ from the compiled ones). It does not
compile, does not check on-chip memory and does not model timing.
"""
from __future__ import annotations

import copy
import enum
import weakref
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Optional

import torch
from torch import Tensor, nn

__all__ = [
    "Options", "TensorLocationSettings", "OutputMode", "ReductionType", "AutoStage",
    "PipelinedExecution", "ShardedExecution", "Stage", "BeginBlock", "Block",
    "recomputationCheckpoint", "identity_loss", "trainingModel", "inferenceModel",
    "DataLoader", "optim", "PoplarExecutor", "ipuHardwareIsAvailable", "ipuHardwareVersion",
    "Error", "IS_EMULATOR", "set_available_ipus",
]

IS_EMULATOR = True
__version__ = "3.3.0+emulator"


class Error(RuntimeError):
    """Raised where poptorch raises ``poptorch.Error``."""


def ipuHardwareIsAvailable(num_ipus: int = 1) -> bool:  # noqa: N802 (poptorch's name)
    """No IPU hardware is ever visible through the emulator."""
    return False


def ipuHardwareVersion() -> int:  # noqa: N802
    return 0


_AVAILABLE_IPUS: Optional[int] = None
_ATTACHED: "weakref.WeakSet[PoplarExecutor]" = weakref.WeakSet()
_TRAINING_EXECUTORS: "weakref.WeakSet[PoplarExecutor]" = weakref.WeakSet()
_HOST_WEIGHTS_VERSION = [0]  # bumped whenever device weights are written back to the host


def set_available_ipus(count: Optional[int]) -> None:
    """Size of the emulated IPU pool (None: unlimited); attaching beyond it fails like hardware."""
    global _AVAILABLE_IPUS
    _AVAILABLE_IPUS = count


# ----------------------------------------------------------------------------- enums
class OutputMode(enum.IntEnum):
    Final = 0
    EveryN = 1
    All = 2
    Sum = 3
    Default = 4


class ReductionType(enum.IntEnum):
    Sum = 0
    Mean = 1
    NoReduction = 2


class AutoStage(enum.IntEnum):
    SameAsIpu = 0
    AutoIncrement = 1


def _positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


# --------------------------------------------------------------------------- options
class _OptionsDict:
    """Attribute-style option storage, as poptorch's OptionsDict."""

    def __init__(self, **defaults: Any) -> None:
        object.__setattr__(self, "_values", dict(defaults))
        object.__setattr__(self, "_frozen", False)

    def set(self, **kwargs: Any) -> None:
        if self._frozen:
            raise AttributeError("Can't modify frozen Options")
        self._values.update(kwargs)

    createOrSet = set  # noqa: N815

    def exists(self, name: str) -> bool:
        return name in self._values

    def __getattr__(self, name: str) -> Any:
        values = object.__getattribute__(self, "_values")
        if name in values:
            return values[name]
        raise AttributeError(f"Invalid option {name!r}")

    def toDict(self) -> dict:  # noqa: N802
        return dict(self._values)

    def _freeze(self) -> None:
        object.__setattr__(self, "_frozen", True)


class _TrainingOptions(_OptionsDict):
    def __init__(self, popart: "_PopartOptions") -> None:
        super().__init__(gradient_accumulation=1, accumulation_and_replication_reduction_type=ReductionType.Mean)
        object.__setattr__(self, "_popart", popart)

    def gradientAccumulation(self, gradient_accumulation: int) -> "_TrainingOptions":  # noqa: N802
        self.set(gradient_accumulation=_positive_int(gradient_accumulation, "gradientAccumulation"))
        return self

    def accumulationAndReplicationReductionType(self, reduction_type: ReductionType) -> "_TrainingOptions":  # noqa: N802
        if not isinstance(reduction_type, ReductionType) or reduction_type == ReductionType.NoReduction:
            raise ValueError("accumulationAndReplicationReductionType must be set to "
                             "poptorch.ReductionType.Mean or poptorch.ReductionType.Sum")
        self.set(accumulation_and_replication_reduction_type=reduction_type)
        return self

    def setAutomaticLossScaling(self, enabled: bool) -> "_TrainingOptions":  # noqa: N802
        self._popart.set("automaticLossScalingSettings.enabled", bool(enabled))
        return self


class _PrecisionOptions(_OptionsDict):
    def __init__(self, popart: "_PopartOptions") -> None:
        super().__init__()
        object.__setattr__(self, "_popart", popart)

    def setPartialsType(self, dtype: torch.dtype) -> "_PrecisionOptions":  # noqa: N802
        if dtype in (torch.float, torch.float32):
            name = "float"
        elif dtype in (torch.half, torch.float16):
            name = "half"
        else:
            raise ValueError("parameter to setPartialsType should be either torch.float or torch.half")
        self._popart.set("partialsTypeMatMuls", name)
        self._popart.set("convolutionOptions", {"partialsType": name})
        return self

    def enableStochasticRounding(self, enabled: bool) -> "_PrecisionOptions":  # noqa: N802
        self._popart.set("enableStochasticRounding", bool(enabled))
        return self

    def enableFloatingPointExceptions(self, enabled: bool) -> "_PrecisionOptions":  # noqa: N802
        if not isinstance(enabled, bool):
            raise AssertionError("enableFloatingPointExceptions needs to be set to a bool")
        self._popart.set("enableFloatingPointChecks", enabled)
        return self


class _PopartOptions:
    def __init__(self) -> None:
        self.options: dict[str, Any] = {}

    def set(self, key: str, value: Any) -> "_PopartOptions":
        self.options[key] = value
        return self


class TensorLocationSettings(_OptionsDict):
    """Where a class of tensors lives (on chip or streaming memory) and whether it is sharded."""

    def useOnChipStorage(self, use: bool = True) -> "TensorLocationSettings":  # noqa: N802
        if not isinstance(use, bool):
            raise AssertionError("useOnChipStorage needs a bool")
        self.set(onChip=int(use))
        return self

    def useReplicatedTensorSharding(self, use: bool = True) -> "TensorLocationSettings":  # noqa: N802
        if not isinstance(use, bool):
            raise AssertionError("useReplicatedTensorSharding needs a bool")
        self.set(useReplicatedTensorSharding=int(use))
        return self

    def minElementsForOffChip(self, min_elements: int) -> "TensorLocationSettings":  # noqa: N802
        if not isinstance(min_elements, int):
            raise AssertionError("minElementsForOffChip needs an int")
        self.set(minElementsForOffChip=min_elements)
        return self

    def minElementsForReplicatedTensorSharding(self, min_elements: int) -> "TensorLocationSettings":  # noqa: N802
        if not isinstance(min_elements, int):
            raise AssertionError("minElementsForReplicatedTensorSharding needs an int")
        self.set(minElementsForReplicatedTensorSharding=min_elements)
        return self

    def useIOTilesToLoad(self, use: bool = True) -> "TensorLocationSettings":  # noqa: N802
        self.set(useIOTilesToLoad=int(bool(use)))
        return self


class _TensorLocationOptions(_OptionsDict):
    def _location(self, key: str, location: TensorLocationSettings) -> "_TensorLocationOptions":
        if not isinstance(location, TensorLocationSettings):
            raise AssertionError("expected a poptorch.TensorLocationSettings")
        self.set(**{key: location.toDict()})
        return self

    def setActivationLocation(self, location: TensorLocationSettings) -> "_TensorLocationOptions":  # noqa: N802
        return self._location("location_activation", location)

    def setWeightLocation(self, location: TensorLocationSettings) -> "_TensorLocationOptions":  # noqa: N802
        return self._location("location_weight", location)

    def setOptimizerLocation(self, location: TensorLocationSettings) -> "_TensorLocationOptions":  # noqa: N802
        return self._location("location_optimizer", location)

    def setAccumulatorLocation(self, location: TensorLocationSettings) -> "_TensorLocationOptions":  # noqa: N802
        return self._location("location_accumulator", location)


class Stage:
    """One or more blocks placed on one IPU."""

    def __init__(self, *block_ids: str) -> None:
        if not all(isinstance(b, str) for b in block_ids):
            raise AssertionError(f"Block IDs are supposed to be strings but got {block_ids}")
        self.blocks = list(block_ids)
        self._ipu: Optional[int] = None

    def ipu(self, ipu: int) -> "Stage":
        self._ipu = int(ipu)
        return self


class PipelinedExecution:
    """Each block a pipeline stage (default: one stage per IPU, ``AutoStage.SameAsIpu``)."""

    pipelined = True

    def __init__(self, *args: Any) -> None:
        self.auto_stage = AutoStage.SameAsIpu
        self.block_map: dict[str, int] = {}
        if len(args) == 1 and isinstance(args[0], AutoStage):
            self.auto_stage = args[0]
            return
        for stage_id, arg in enumerate(args):
            stage = arg if isinstance(arg, Stage) else Stage(arg) if isinstance(arg, str) else Stage(*arg)
            for block in stage.blocks:
                if block in self.block_map:
                    raise AssertionError(f"{block} associated with more than one stage")
                self.block_map[block] = stage_id


class ShardedExecution(PipelinedExecution):
    """Blocks run one after the other on their IPUs; no pipelining, so no accumulation constraint."""

    pipelined = False


class Options(_OptionsDict):
    """poptorch.Options: how a model is replicated, batched, placed and executed."""

    def __init__(self) -> None:
        super().__init__(
            replication_factor=1, device_iterations=1, log_dir=".", auto_round_num_ipus=False,
            output_mode=OutputMode.Default, output_return_period=1, use_model=False,
            available_memory_proportion={},
        )
        popart = _PopartOptions()
        object.__setattr__(self, "_popart", popart)
        object.__setattr__(self, "_training", _TrainingOptions(popart))
        object.__setattr__(self, "_precision", _PrecisionOptions(popart))
        object.__setattr__(self, "_tensor_locations", _TensorLocationOptions())
        object.__setattr__(self, "_execution_strategy", PipelinedExecution())

    # sub-objects
    @property
    def Training(self) -> _TrainingOptions:  # noqa: N802
        return self._training

    @property
    def Precision(self) -> _PrecisionOptions:  # noqa: N802
        return self._precision

    @property
    def TensorLocations(self) -> _TensorLocationOptions:  # noqa: N802
        return self._tensor_locations

    @property
    def _Popart(self) -> _PopartOptions:  # noqa: N802
        return self._popart

    # setters
    def deviceIterations(self, device_iterations: int) -> "Options":  # noqa: N802
        self.set(device_iterations=_positive_int(device_iterations, "deviceIterations"))
        return self

    def replicationFactor(self, replication_factor: int) -> "Options":  # noqa: N802
        self.set(replication_factor=_positive_int(replication_factor, "replicationFactor"))
        return self

    def outputMode(self, output_mode: OutputMode, output_return_period: Optional[int] = None) -> "Options":  # noqa: N802
        if not isinstance(output_mode, OutputMode):
            raise AssertionError("outputMode expects a poptorch.OutputMode")
        if output_mode == OutputMode.EveryN and not (output_return_period and output_return_period > 0):
            raise AssertionError("EveryN anchor must have output_return_period set to valid positive integer")
        self.set(output_mode=output_mode, output_return_period=output_return_period or 1)
        return self

    def defaultOutputMode(self) -> bool:  # noqa: N802
        return self.output_mode == OutputMode.Default

    def setAvailableMemoryProportion(self, proportions: dict[str, float]) -> "Options":  # noqa: N802
        actual = {}
        for key, value in proportions.items():
            if not (isinstance(key, str) and key.startswith("IPU") and key[3:].isdigit()):
                raise AssertionError(
                    'Available memory proportions are expected to be in a dictionary of {"IPU0": 0.5} '
                    f"where the 0 in IPU is the index of the IPU. Invalid key: {key}")
            if not 0.0 < float(value) <= 1.0:
                raise ValueError(f"available memory proportion of {key} must be in (0, 1], got {value}")
            actual[int(key[3:])] = float(value)
        self.set(available_memory_proportion=actual)
        return self

    def enableExecutableCaching(self, path: Optional[str]) -> "Options":  # noqa: N802
        if path is None:
            self._popart.set("enableEngineCaching", False)
        else:
            self._popart.set("cachePath", str(path))
            self._popart.set("enableEngineCaching", True)
        return self

    def randomSeed(self, random_seed: int) -> "Options":  # noqa: N802
        if not isinstance(random_seed, int) or isinstance(random_seed, bool):
            raise AssertionError("randomSeed needs an int")
        torch.manual_seed(random_seed)
        self.set(random_seed=random_seed)
        return self

    def autoRoundNumIPUs(self, auto_round_num_ipus: bool = True) -> "Options":  # noqa: N802
        self.set(auto_round_num_ipus=bool(auto_round_num_ipus))
        return self

    def setExecutionStrategy(self, strategy: PipelinedExecution) -> "Options":  # noqa: N802
        if not isinstance(strategy, PipelinedExecution):
            raise AssertionError("setExecutionStrategy expects an execution strategy instance")
        object.__setattr__(self, "_execution_strategy", strategy)
        return self

    def useIpuModel(self, use_model: bool) -> "Options":  # noqa: N802
        self.set(use_model=bool(use_model))
        return self

    def logDir(self, log_dir: str) -> "Options":  # noqa: N802
        self.set(log_dir=str(log_dir))
        return self

    def clone(self) -> "Options":
        clone = copy.deepcopy(self)
        for obj in (clone, clone._training, clone._precision, clone._tensor_locations):
            object.__setattr__(obj, "_frozen", False)
        return clone

    def _freeze(self) -> None:
        for obj in (self, self._training, self._precision, self._tensor_locations):
            object.__setattr__(obj, "_frozen", True)

    def toDict(self) -> dict:  # noqa: N802
        out = dict(self._values)
        out.update(self._popart.options)
        out.update(self._training.toDict())
        out.update(self._tensor_locations.toDict())
        return out


# ------------------------------------------------------------------ model annotation
class _Trace:
    """What one emulated run saw: stage entries, checkpoints and the loss."""

    def __init__(self) -> None:
        self.blocks: list[tuple[str, int]] = []
        self.checkpoints: list[int] = []
        self.loss: Optional[Tensor] = None
        self.current_ipu = 0


_TRACE: Optional[_Trace] = None


@contextmanager
def _tracing() -> Iterator[_Trace]:
    global _TRACE
    previous, _TRACE = _TRACE, _Trace()
    try:
        yield _TRACE
    finally:
        _TRACE = previous


class Block:
    """Context manager: operations inside run in block ``user_id`` on ``ipu_id``."""

    def __init__(self, user_id: Optional[str] = None, ipu_id: Optional[int] = None) -> None:
        self.user_id = user_id
        self.ipu_id = ipu_id

    def __enter__(self) -> "Block":
        _enter_block(self.user_id, self.ipu_id)
        return self

    def __exit__(self, *exc: Any) -> None:
        return None


def _enter_block(user_id: Optional[str], ipu_id: Optional[int]) -> None:
    if _TRACE is None:
        return
    ipu = _TRACE.current_ipu if ipu_id is None else int(ipu_id)
    _TRACE.blocks.append((user_id or str(len(_TRACE.blocks)), ipu))
    _TRACE.current_ipu = ipu


def BeginBlock(layer: nn.Module, user_id: Optional[str] = None, ipu_id: Optional[int] = None) -> nn.Module:  # noqa: N802
    """Start a new block (and so a pipeline stage) where ``layer`` begins; returns the layer."""
    if not isinstance(layer, nn.Module):
        raise Error("module is not an instance of torch.nn.Module.")
    previous = getattr(layer, "_emu_begin_block", None)
    if previous is not None:
        previous.remove()

    def _pre_hook(module: nn.Module, args: Any) -> None:
        _enter_block(user_id, ipu_id)

    handle = layer.register_forward_pre_hook(_pre_hook)
    object.__setattr__(layer, "_emu_begin_block", handle)
    return layer


def recomputationCheckpoint(*tensors: Any) -> Any:  # noqa: N802
    """Mark tensors whose value is kept; everything before is recomputed in the backward pass."""
    if _TRACE is not None:
        _TRACE.checkpoints.append(_TRACE.current_ipu)
    if len(tensors) == 1:
        return tensors[0]
    return tensors


def identity_loss(x: Tensor, reduction: str) -> Tensor:
    """Mark ``x`` (reduced by ``reduction``) as the loss to minimise."""
    if reduction == "sum":
        out = x.sum()
    elif reduction == "mean":
        out = x.mean()
    elif reduction == "none":
        out = x
    else:
        raise Error(f"Unsupported reduction {reduction!r}: use 'sum', 'mean' or 'none'")
    if _TRACE is not None:
        _TRACE.loss = out
    return out


# ---------------------------------------------------------------------------- optim
class _AdamW:
    """poptorch.optim.AdamW: decoupled weight decay, loss scaling, typed accumulators."""

    def __init__(self, params: Any, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 1e-2, amsgrad: bool = False,
                 bias_correction: bool = True, loss_scaling: Optional[float] = None,
                 accum_type: Optional[torch.dtype] = None,
                 first_order_momentum_accum_type: Optional[torch.dtype] = None,
                 second_order_momentum_accum_type: Optional[torch.dtype] = None,
                 max_grad_norm: Optional[float] = None) -> None:
        if amsgrad:
            raise ValueError("Only non-amsgrad AdamW is supported")
        for name, dtype in (("accum_type", accum_type),
                            ("first_order_momentum_accum_type", first_order_momentum_accum_type),
                            ("second_order_momentum_accum_type", second_order_momentum_accum_type)):
            if dtype not in (None, torch.float16, torch.float32):
                raise ValueError(f"{name} must be torch.float16 or torch.float32, got {dtype}")
        if loss_scaling is not None and not loss_scaling > 0:
            raise ValueError(f"loss_scaling must be > 0, got {loss_scaling}")
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay)
        groups = list(params)
        if groups and not isinstance(groups[0], dict):
            groups = [{"params": groups}]
        self.param_groups: list[dict] = []
        for group in groups:
            merged = {**defaults, **group}
            merged["params"] = list(merged["params"])
            self.param_groups.append(merged)
        self.defaults = defaults
        self.loss_scaling = float(loss_scaling) if loss_scaling else 1.0
        self.accum_type = accum_type or torch.float32
        self.first_order_momentum_accum_type = first_order_momentum_accum_type or torch.float32
        self.second_order_momentum_accum_type = second_order_momentum_accum_type or torch.float32
        self.bias_correction = bias_correction
        self.max_grad_norm = max_grad_norm
        self.state: dict[nn.Parameter, dict[str, Any]] = {}

    def _step(self, grads: dict[nn.Parameter, Tensor]) -> None:
        """One update from reduced, unscaled gradients (run while device weights are live)."""
        if self.max_grad_norm is not None:
            norm = torch.sqrt(sum((g.float() ** 2).sum() for g in grads.values()))
            scale = min(1.0, float(self.max_grad_norm) / (float(norm) + 1e-6))
            grads = {p: g * scale for p, g in grads.items()}
        for group in self.param_groups:
            lr, (b1, b2), eps, wd = group["lr"], group["betas"], group["eps"], group["weight_decay"]
            for p in group["params"]:
                g = grads.get(p)
                if g is None:
                    continue
                st = self.state.setdefault(p, {"step": 0})
                if "exp_avg" not in st:
                    st["exp_avg"] = torch.zeros_like(p.data, dtype=self.first_order_momentum_accum_type)
                    st["exp_avg_sq"] = torch.zeros_like(p.data, dtype=self.second_order_momentum_accum_type)
                st["step"] += 1
                t = st["step"]
                gf = g.to(torch.float32)
                # AdamW in the operation order of torch.optim.AdamW (decay, moments, bias-corrected step).
                w = p.data.float()
                w.mul_(1 - lr * wd)
                m = st["exp_avg"].float().lerp_(gf, 1 - b1)
                v = st["exp_avg_sq"].float().mul_(b2).addcmul_(gf, gf, value=1 - b2)
                st["exp_avg"] = m.to(self.first_order_momentum_accum_type)
                st["exp_avg_sq"] = v.to(self.second_order_momentum_accum_type)
                c1 = 1 - b1 ** t if self.bias_correction else 1.0
                c2 = 1 - b2 ** t if self.bias_correction else 1.0
                w.addcdiv_(m, (v.sqrt() / c2 ** 0.5).add_(eps), value=-lr / c1)
                p.data.copy_(w.to(p.data.dtype))

    def state_dict(self) -> dict:
        return {"param_groups": [{k: v for k, v in g.items() if k != "params"} for g in self.param_groups],
                "loss_scaling": self.loss_scaling}


class _SGD(_AdamW):
    """poptorch.optim.SGD (plain, no momentum), the default optimizer of trainingModel."""

    def __init__(self, params: Any, lr: float = 0.01, loss_scaling: Optional[float] = None, **_: Any) -> None:
        super().__init__(params, lr=lr, weight_decay=0.0, loss_scaling=loss_scaling)

    def _step(self, grads: dict[nn.Parameter, Tensor]) -> None:
        for group in self.param_groups:
            for p in group["params"]:
                if p in grads:
                    p.data.copy_((p.data.float() - group["lr"] * grads[p].float()).to(p.data.dtype))


class _OptimNamespace:
    AdamW = _AdamW
    SGD = _SGD
    Optimizer = _AdamW


optim = _OptimNamespace()


# ------------------------------------------------------------------------ executors
def _flatten(obj: Any) -> list[Tensor]:
    if isinstance(obj, Tensor):
        return [obj]
    if isinstance(obj, (list, tuple)):
        return [t for item in obj for t in _flatten(item)]
    if isinstance(obj, dict):
        return [t for key in obj for t in _flatten(obj[key])]
    return []


def _map(obj: Any, fn: Callable[[Tensor], Any]) -> Any:
    if isinstance(obj, Tensor):
        return fn(obj)
    if isinstance(obj, (list, tuple)):
        return type(obj)(_map(o, fn) for o in obj)
    if isinstance(obj, dict):
        return {k: _map(v, fn) for k, v in obj.items()}
    return obj


class PoplarExecutor:
    """What ``trainingModel``/``inferenceModel`` return: call it with a combined batch."""

    def __init__(self, model: nn.Module, options: Optional[Options], training: bool,
                 optimizer: Optional[_AdamW] = None) -> None:
        options = (options or Options()).clone()
        if training:
            if options.defaultOutputMode():
                options.outputMode(OutputMode.Final)
            if optimizer is None:
                optimizer = _SGD(model.parameters(), lr=0.01)
            if not isinstance(optimizer, _AdamW):
                raise Error("trainingModel needs a poptorch optimizer (poptorch.optim.*), "
                            f"got {type(optimizer).__name__}")
        else:
            if options.defaultOutputMode():
                options.outputMode(OutputMode.All)
            if options.Training.gradient_accumulation != 1:
                msg = ("You must set poptorch.Options().Training.gradientAccumulation to 1 or leave it as its "
                       "default value (1) when running a poptorch.inferenceModel().")
                if options._execution_strategy.pipelined:
                    msg += (" Use poptorch.Options().deviceIterations to process a sufficient number of batches "
                            "each run for pipelined execution instead.")
                raise Error(msg)
            if optimizer is not None:
                raise Error("Optimizer should be None for inference")
        if options.output_mode == OutputMode.EveryN and options.device_iterations % options.output_return_period:
            raise Error(f"Anchor return period {options.output_return_period} must divide the device "
                        f"iterations ({options.device_iterations})")
        options._freeze()
        self.options = options
        self.training = training
        self.optimizer = optimizer
        self.model = model
        self._device_state: Optional[dict[str, Tensor]] = None
        self._compiled_inputs: Optional[list[tuple[tuple[int, ...], torch.dtype]]] = None
        self._dirty_host_weights = False
        self._uploaded_version = -1
        self._attached = False
        self.compile_count = 0
        self.last_trace: Optional[_Trace] = None
        self.num_ipus_per_replica = 1
        if training:
            _TRAINING_EXECUTORS.add(self)

    # --- poptorch's public methods
    def isCompiled(self) -> bool:  # noqa: N802
        return self._device_state is not None

    def isAttached(self) -> bool:  # noqa: N802
        return self._attached

    def attachToDevice(self) -> None:  # noqa: N802
        if not self.isCompiled():
            raise Error("Model has not been compiled or has been destroyed.")
        if self._attached:
            raise Error("Device is already attached")
        needed = self.num_ipus_per_replica * self.options.replication_factor
        if _AVAILABLE_IPUS is not None:
            used = sum(e.num_ipus_per_replica * e.options.replication_factor for e in _ATTACHED if e is not self)
            if used + needed > _AVAILABLE_IPUS:
                raise Error(f"Failed to acquire {needed} IPU(s): {used} of {_AVAILABLE_IPUS} already attached; "
                            "detach the other executor first (detachFromDevice())")
        self._attached = True
        _ATTACHED.add(self)
        self.copyWeightsToDevice()

    def detachFromDevice(self) -> None:  # noqa: N802
        if not self._attached:
            raise Error("Device is not attached")
        self.copyWeightsToHostIfNeeded()
        self._attached = False
        _ATTACHED.discard(self)

    def destroy(self) -> None:
        """Release the executable (weights are copied to the host first); the next call recompiles."""
        if self.isCompiled():
            self.copyWeightsToHostIfNeeded()
        self._attached = False
        _ATTACHED.discard(self)
        self._device_state = None
        self._compiled_inputs = None

    def copyWeightsToDevice(self) -> None:  # noqa: N802
        if self._device_state is None:
            raise Error("Model has not been compiled or has been destroyed.")
        dtype = self._device_dtype()
        for name, tensor in self._host_tensors():
            value = tensor.detach().clone()
            if value.is_floating_point() and dtype is not None:
                value = value.to(dtype)
            self._device_state[name] = value
        self._uploaded_version = _HOST_WEIGHTS_VERSION[0]
        self._dirty_host_weights = False

    def copyWeightsToHost(self) -> None:  # noqa: N802
        if self._device_state is None:
            raise Error("Model has not been compiled or has been destroyed.")
        with torch.no_grad():
            for name, tensor in self._host_tensors():
                tensor.data.copy_(self._device_state[name].to(tensor.dtype))
        _HOST_WEIGHTS_VERSION[0] += 1
        self._uploaded_version = _HOST_WEIGHTS_VERSION[0]
        self._dirty_host_weights = False

    def copyWeightsToHostIfNeeded(self) -> bool:  # noqa: N802
        if self._dirty_host_weights:
            self.copyWeightsToHost()
            return True
        return False

    def setOptimizer(self, optimizer: _AdamW) -> None:  # noqa: N802
        """Push new hyper-parameters (learning rate, weight decay, ...) to the device optimizer."""
        if not self.training:
            raise Error("setOptimizer is only for training models")
        if not isinstance(optimizer, _AdamW):
            raise Error(f"expected a poptorch optimizer, got {type(optimizer).__name__}")
        if self.optimizer is not None and optimizer is not self.optimizer:
            for new, old in zip(optimizer.param_groups, self.optimizer.param_groups):
                for key in ("lr", "betas", "eps", "weight_decay"):
                    old[key] = new[key]
        elif self.optimizer is None:
            self.optimizer = optimizer

    def compile(self, *args: Any, **kwargs: Any) -> None:
        """Compile (here: trace once and upload the weights) without running."""
        self._signature = (args, kwargs)
        self._compile(list(_flatten((args, kwargs))))
        if not self._attached:
            self.attachToDevice()

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        flat = _flatten((args, kwargs))
        self._signature = (args, kwargs)
        if not self.isCompiled():
            self._compile(flat)
        self._check_inputs(flat)
        if not self._attached:
            self.attachToDevice()
        if not self.training:
            # Weights shared with a training executor: fetch its device weights through the host.
            mine = {id(p) for p in self.model.parameters()}
            for trainer in list(_TRAINING_EXECUTORS):
                if trainer.isCompiled() and mine & {id(p) for p in trainer.model.parameters()}:
                    trainer.copyWeightsToHostIfNeeded()
            if self._uploaded_version != _HOST_WEIGHTS_VERSION[0]:
                self.copyWeightsToDevice()
        return self._run(args, kwargs)

    # --- internals
    def _device_dtype(self) -> Optional[torch.dtype]:
        params = [p for p in self.model.parameters()]
        return params[0].dtype if params else None

    def _host_tensors(self) -> list[tuple[str, Tensor]]:
        return list(self.model.named_parameters()) + [(n, b) for n, b in self.model.named_buffers()]

    def _combined_factor(self) -> int:
        o = self.options
        accumulation = o.Training.gradient_accumulation if self.training else 1
        return o.device_iterations * accumulation * o.replication_factor

    def _compile(self, flat: list[Tensor]) -> None:
        factor = self._combined_factor()
        for t in flat:
            self._check_batch(t, factor)
        # One traced run on a single micro-batch discovers the stages (as tracing does).
        with _tracing() as trace, torch.no_grad():
            was_training = self.model.training
            self.model.train(self.training)
            try:
                self._call_model_on_first_micro_batch()
            finally:
                self.model.train(was_training)
        ipus = sorted({ipu for _, ipu in trace.blocks}) or [0]
        self.num_ipus_per_replica = max(ipus) + 1
        self._check_stages(trace)
        total = self.num_ipus_per_replica * self.options.replication_factor
        if total & (total - 1) and not self.options.auto_round_num_ipus:
            raise Error(f"The model uses {total} IPUs ({self.num_ipus_per_replica} per replica x replication "
                        f"factor {self.options.replication_factor}): the number of IPUs must be a power of 2; "
                        "use poptorch.Options().autoRoundNumIPUs(True) to round it up")
        self._device_state = {}
        self._compiled_inputs = [(tuple(t.shape), t.dtype) for t in flat]
        self.compile_count += 1
        self.last_trace = trace

    def _call_model_on_first_micro_batch(self) -> Any:
        args, kwargs = self._signature
        factor = self._combined_factor()
        dtype = self._device_dtype()

        def take(t: Tensor) -> Tensor:
            t = t[: t.shape[0] // factor]
            return t.to(dtype) if (t.is_floating_point() and dtype is not None) else t

        return self.model(*_map(args, take), **_map(kwargs, take))

    def _check_stages(self, trace: _Trace) -> None:
        strategy = self.options._execution_strategy
        if not trace.blocks:
            return
        if strategy.block_map:
            stages = []
            for user_id, _ in trace.blocks:
                if user_id not in strategy.block_map:
                    raise Error(f"Unknown Block '{user_id}' list of expected Blocks: {list(strategy.block_map)}")
                stages.append(strategy.block_map[user_id])
        elif strategy.auto_stage == AutoStage.AutoIncrement:
            stages = list(range(len(trace.blocks)))
        else:
            stages = [ipu for _, ipu in trace.blocks]
        for (name, _), prev, cur in zip(trace.blocks[1:], stages, stages[1:]):
            if cur < prev:
                raise Error(f"Block '{name}' runs in stage {cur} after stage {prev}: pipeline stages must "
                            "appear in increasing order of execution (fix the IPU ids of the stage map)")
        num_stages = len(set(stages))
        if self.training and strategy.pipelined and num_stages > 1:
            needed = 2 * num_stages - 1
            if self.options.Training.gradient_accumulation < needed:
                raise Error(
                    "poptorch.Options().Training.gradientAccumulation must be greater than or equal to the number "
                    f"of pipeline stages ({needed}) when using poptorch.PipelinedExecution. Please note that a "
                    f"model with {num_stages} pipeline stages in PopTorch will have an additional "
                    f"{num_stages - 1} stages when training.")

    def _check_batch(self, t: Tensor, factor: int) -> None:
        o = self.options
        if t.dim() == 0 or t.shape[0] % factor or t.shape[0] == 0:
            accumulation = o.Training.gradient_accumulation if self.training else 1
            raise Error(
                f"Invalid batch dimension: In the input {tuple(t.shape)}, the batch dimension "
                f"({t.shape[0] if t.dim() else 0}) must be a multiple of Options.deviceIterations("
                f"{o.device_iterations}) * Options.replicationFactor({o.replication_factor}) * "
                f"Options.Training.gradientAccumulation({accumulation}) = {factor} because it is used to "
                "calculate the batch size which will be executed on the device in any given iteration.")

    def _check_inputs(self, flat: list[Tensor]) -> None:
        got = [(tuple(t.shape), t.dtype) for t in flat]
        if got != self._compiled_inputs:
            raise Error(f"The model was compiled for inputs {self._compiled_inputs} but was called with {got}: "
                        "inputs must keep static shapes (pad tokens to a fixed length); call destroy() to "
                        "recompile for new shapes")

    @contextmanager
    def _device_weights(self) -> Iterator[None]:
        """Swap the device copy of the weights into the module for the duration of a run."""
        assert self._device_state is not None
        tensors = self._host_tensors()
        host = [t.data for _, t in tensors]
        for name, t in tensors:
            t.data = self._device_state[name]
        try:
            yield
        finally:
            for (name, t), h in zip(tensors, host):
                self._device_state[name] = t.data
                t.data = h
                if isinstance(t, nn.Parameter):
                    t.grad = None

    def _run(self, args: tuple, kwargs: dict) -> Any:
        o = self.options
        d_it, repl = o.device_iterations, o.replication_factor
        accum = o.Training.gradient_accumulation if self.training else 1
        dtype = self._device_dtype()

        def split(t: Tensor) -> Tensor:
            t = t.reshape(d_it, accum, repl, t.shape[0] // (d_it * accum * repl), *t.shape[1:])
            if t.is_floating_point() and dtype is not None:
                t = t.to(dtype)
            return t

        args_s, kwargs_s = _map(args, split), _map(kwargs, split)
        outputs: list[list[Any]] = []
        with self._device_weights():
            was_training = self.model.training
            self.model.train(self.training)
            try:
                for d in range(d_it):
                    per_iter = []
                    params = [p for p in self.model.parameters() if p.requires_grad]
                    grads: dict[nn.Parameter, Tensor] = {}
                    for g in range(accum):
                        for r in range(repl):
                            pick = lambda t: t[d, g, r]  # noqa: E731
                            a, k = _map(args_s, pick), _map(kwargs_s, pick)
                            if self.training:
                                out = self._train_micro_batch(a, k, params, grads)
                            else:
                                with torch.no_grad(), _tracing():
                                    out = self.model(*a, **k)
                            per_iter.append(_map(out, lambda t: t.detach()))
                    if self.training:
                        self._apply_update(params, grads, accum * repl)
                    outputs.append(per_iter)
            finally:
                self.model.train(was_training)
        if self.training:
            self._dirty_host_weights = True
        return self._select_outputs(outputs, d_it, accum, repl)

    def _train_micro_batch(self, a: tuple, k: dict, params: list[nn.Parameter],
                           grads: dict[nn.Parameter, Tensor]) -> Any:
        with _tracing() as trace:
            out = self.model(*a, **k)
        loss = trace.loss
        if loss is None:
            if isinstance(out, Tensor):
                loss = out
            elif isinstance(out, (tuple, list)) and out and isinstance(out[-1], Tensor):
                loss = out[-1]
            else:
                raise Error("The training model must return a loss (or mark it with poptorch.identity_loss)")
        # Mean reduction divides every micro-batch's contribution before it is accumulated
        # (the same numbers as dividing the accumulated sum, in float order of a sequential run).
        scale = self.optimizer.loss_scaling
        if self.options.Training.accumulation_and_replication_reduction_type == ReductionType.Mean:
            scale = scale / (self.options.Training.gradient_accumulation * self.options.replication_factor)
        scaled = loss.sum() * scale if scale != 1.0 else loss.sum()
        found = torch.autograd.grad(scaled, params, allow_unused=True)
        for p, g in zip(params, found):
            if g is None:
                continue
            acc = g.to(self.optimizer.accum_type)
            if p in grads:
                grads[p].add_(acc)
            else:
                grads[p] = acc.clone()
        return out

    def _apply_update(self, params: list[nn.Parameter], grads: dict[nn.Parameter, Tensor], count: int) -> None:
        """Unscale the reduced gradients and step the optimizer once."""
        scaling = self.optimizer.loss_scaling
        reduced = {p: (g.float() / scaling if scaling != 1.0 else g.float()) for p, g in grads.items()}
        with torch.no_grad():
            self.optimizer._step(reduced)

    def _select_outputs(self, outputs: list[list[Any]], d_it: int, accum: int, repl: int) -> Any:
        """[device_iterations][accumulation*replicas] outputs -> what OutputMode returns."""
        mode, period = self.options.output_mode, self.options.output_return_period
        if mode == OutputMode.Final:
            picked = outputs[-1][-repl:]
        elif mode == OutputMode.Sum:
            picked = [_sum_outputs([outputs[d][g * repl + r] for d in range(d_it) for g in range(accum)])
                      for r in range(repl)]
        elif mode == OutputMode.EveryN:
            picked = [o for d in range(period - 1, d_it, period) for o in outputs[d]]
        else:
            picked = [o for per_iter in outputs for o in per_iter]
        return _concat_outputs(picked)


def _sum_outputs(items: list[Any]) -> Any:
    first = items[0]
    if isinstance(first, Tensor):
        return torch.stack(items).sum(0)
    if isinstance(first, (list, tuple)):
        return type(first)(_sum_outputs([it[i] for it in items]) for i in range(len(first)))
    if isinstance(first, dict):
        return {k: _sum_outputs([it[k] for it in items]) for k in first}
    return first


def _concat_outputs(items: list[Any]) -> Any:
    """Concatenate per-micro-batch outputs along the batch dimension; scalars stack (size-1 dims dropped)."""
    first = items[0]
    if isinstance(first, Tensor):
        if first.dim() == 0:
            out = torch.stack(items)
            return out[0] if out.numel() == 1 else out
        return torch.cat(items, 0)
    if isinstance(first, (list, tuple)):
        return type(first)(_concat_outputs([it[i] for it in items]) for i in range(len(first)))
    if isinstance(first, dict):
        return {k: _concat_outputs([it[k] for it in items]) for k in first}
    return first


def trainingModel(model: nn.Module, options: Optional[Options] = None,  # noqa: N802
                  optimizer: Optional[_AdamW] = None) -> PoplarExecutor:
    """Wrap ``model`` (which returns a loss) for training on the (emulated) device."""
    return PoplarExecutor(model, options, True, optimizer)


def inferenceModel(model: nn.Module, options: Optional[Options] = None) -> PoplarExecutor:  # noqa: N802
    """Wrap ``model`` for inference on the (emulated) device."""
    return PoplarExecutor(model, options, False)


# ------------------------------------------------------------------------ data
class DataLoader(torch.utils.data.DataLoader):
    """A DataLoader whose batches are combined: micro-batch x device iterations x replicas x accumulation."""

    def __init__(self, options: Options, dataset: Any, batch_size: int = 1, shuffle: bool = False,
                 num_workers: int = 0, drop_last: bool = True, persistent_workers: Optional[bool] = None,
                 auto_distributed_partitioning: bool = True, mode: Any = None, async_options: Any = None,
                 rebatched_worker_size: Optional[int] = None, **kwargs: Any) -> None:
        if not isinstance(options, Options):
            raise Error(f"Invalid type: 'options' is of type {type(options)} (Expected poptorch.Options)")
        self.options = options
        self.micro_batch_size = _positive_int(batch_size, "batch_size")
        self.combined_factor = (options.device_iterations * options.replication_factor
                                * options.Training.gradient_accumulation)
        if persistent_workers is None:
            persistent_workers = num_workers > 0
        super().__init__(dataset, batch_size=batch_size * self.combined_factor, shuffle=shuffle,
                         num_workers=num_workers, drop_last=drop_last, persistent_workers=persistent_workers,
                         **kwargs)

    @property
    def combinedBatchSize(self) -> int:  # noqa: N802
        return self.micro_batch_size * self.combined_factor
