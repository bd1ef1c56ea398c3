"""A CPU stand-in for the part of poptorch that ``IPUStrategy``, ``build_options`` and the tests use.

poptorch ships only with Graphcore's Poplar SDK, so CI and laptops cannot import it. This
module has the same names and the batching semantics of poptorch 3.x, so that the strategy's
host-side logic (options, combined batches, stage boundaries, weight transfer between the
training and inference executors) runs and is tested without an IPU:

* a call consumes a *combined* batch whose first dimension is
  ``device_iterations x gradient_accumulation x replication_factor x micro_batch``, laid out
  ``[device_iterations, gradient_accumulation, replication_factor, micro_batch]``;
* training: for every device iteration the gradients of all accumulation steps and replicas
  are averaged and the optimizer steps once;
* outputs follow ``OutputMode`` (training default ``Final``, inference default ``All``);
* the training executor keeps its own device copy of the weights; the host copy is refreshed
  lazily (``copyWeightsToHostIfNeeded``), and an inference executor on the same parameters
  fetches the training weights through the host before it runs.

It rejects what poptorch rejects where our code paths can get it wrong: option values out of
range, a combined batch that does not divide, too little accumulation for a pipeline, a
non-power-of-two IPU count, stages out of execution order, input shapes that differ from the
compiled ones, more attached IPUs than the pool holds. It does not compile, check on-chip
memory or model speed.
"""
from __future__ import annotations

import enum
import operator
import types
import weakref
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Optional

import torch
from torch import Tensor, nn
from torch.utils import _pytree as pytree

IS_EMULATOR = True


class Error(RuntimeError):
    """Raised where poptorch raises ``poptorch.Error``."""


_AVAILABLE_IPUS: Optional[int] = None
_ATTACHED: "weakref.WeakSet[PoplarExecutor]" = weakref.WeakSet()
_TRAINING_EXECUTORS: "weakref.WeakSet[PoplarExecutor]" = weakref.WeakSet()
_HOST_WEIGHTS_VERSION = [0]  # bumped whenever device weights are written back to the host


def set_available_ipus(count: Optional[int]) -> None:
    """Size of the emulated IPU pool (None: unlimited); attaching beyond it fails like hardware."""
    global _AVAILABLE_IPUS
    _AVAILABLE_IPUS = count


class OutputMode(enum.IntEnum):
    Final = 0
    EveryN = 1
    All = 2
    Sum = 3
    Default = 4


class AutoStage(enum.IntEnum):
    SameAsIpu = 0


def _positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


# --------------------------------------------------------------------------- options
class _OptionsDict:
    """Attribute-style option storage, as poptorch's OptionsDict."""

    def __init__(self, **defaults: Any) -> None:
        self._values = dict(defaults)

    def set(self, **kwargs: Any) -> None:
        self._values.update(kwargs)

    def exists(self, name: str) -> bool:
        return name in self._values

    def __getattr__(self, name: str) -> Any:
        values = self.__dict__.get("_values", {})
        if name in values:
            return values[name]
        raise AttributeError(f"Invalid option {name!r}")

    def toDict(self) -> dict:  # noqa: N802 (poptorch's names)
        return dict(self._values)


class _PopartOptions:
    def __init__(self) -> None:
        self.options: dict[str, Any] = {}

    def set(self, key: str, value: Any) -> "_PopartOptions":
        self.options[key] = value
        return self


class _TrainingOptions(_OptionsDict):
    def __init__(self) -> None:
        super().__init__(gradient_accumulation=1)

    def gradientAccumulation(self, gradient_accumulation: int) -> "_TrainingOptions":  # noqa: N802
        self.set(gradient_accumulation=_positive_int(gradient_accumulation, "gradientAccumulation"))
        return self


class _PrecisionOptions:
    def __init__(self, popart: _PopartOptions) -> None:
        self._popart = popart

    def setPartialsType(self, dtype: torch.dtype) -> "_PrecisionOptions":  # noqa: N802
        self._popart.set("partialsTypeMatMuls", "half" if dtype == torch.half else "float")
        return self

    def enableStochasticRounding(self, enabled: bool) -> "_PrecisionOptions":  # noqa: N802
        self._popart.set("enableStochasticRounding", bool(enabled))
        return self

    def enableFloatingPointExceptions(self, enabled: bool) -> "_PrecisionOptions":  # noqa: N802
        self._popart.set("enableFloatingPointChecks", bool(enabled))
        return self


class TensorLocationSettings(_OptionsDict):
    """Where a class of tensors lives (on chip or in streaming memory) and whether it is sharded."""

    def useOnChipStorage(self, use: bool = True) -> "TensorLocationSettings":  # noqa: N802
        self.set(onChip=int(use))
        return self

    def useReplicatedTensorSharding(self, use: bool = True) -> "TensorLocationSettings":  # noqa: N802
        self.set(useReplicatedTensorSharding=int(use))
        return self


class _TensorLocationOptions(_OptionsDict):
    def setOptimizerLocation(self, location: TensorLocationSettings) -> "_TensorLocationOptions":  # noqa: N802
        self.set(location_optimizer=location.toDict())
        return self


class PipelinedExecution:
    """One pipeline stage per IPU (``AutoStage.SameAsIpu``); training needs accumulation >= 2N - 1."""

    pipelined = True

    def __init__(self, auto_stage: AutoStage = AutoStage.SameAsIpu) -> None:
        self.auto_stage = auto_stage


class ShardedExecution(PipelinedExecution):
    """Stages run one after the other on their IPUs: no pipelining, so no accumulation constraint."""

    pipelined = False


class Options(_OptionsDict):
    """poptorch.Options: how a model is replicated, batched, placed and executed."""

    def __init__(self) -> None:
        super().__init__(replication_factor=1, device_iterations=1, auto_round_num_ipus=False,
                         output_mode=OutputMode.Default, output_return_period=1, use_model=False,
                         available_memory_proportion={})
        self._Popart = _PopartOptions()
        self.Training = _TrainingOptions()
        self.Precision = _PrecisionOptions(self._Popart)
        self.TensorLocations = _TensorLocationOptions()
        self._execution_strategy = PipelinedExecution()

    def deviceIterations(self, device_iterations: int) -> "Options":  # noqa: N802
        self.set(device_iterations=_positive_int(device_iterations, "deviceIterations"))
        return self

    def replicationFactor(self, replication_factor: int) -> "Options":  # noqa: N802
        self.set(replication_factor=_positive_int(replication_factor, "replicationFactor"))
        return self

    def outputMode(self, output_mode: OutputMode, output_return_period: Optional[int] = None) -> "Options":  # noqa: N802
        if output_mode == OutputMode.EveryN and not (output_return_period and output_return_period > 0):
            raise AssertionError("EveryN anchor must have output_return_period set to valid positive integer")
        self.set(output_mode=output_mode, output_return_period=output_return_period or 1)
        return self

    def setAvailableMemoryProportion(self, proportions: dict[str, float]) -> "Options":  # noqa: N802
        for key, value in proportions.items():
            if not 0.0 < float(value) <= 1.0:
                raise ValueError(f"available memory proportion of {key} must be in (0, 1], got {value}")
        self.set(available_memory_proportion={int(k[3:]): float(v) for k, v in proportions.items()})
        return self

    def enableExecutableCaching(self, path: str) -> "Options":  # noqa: N802
        self._Popart.set("cachePath", str(path))
        self._Popart.set("enableEngineCaching", True)
        return self

    def randomSeed(self, random_seed: int) -> "Options":  # noqa: N802
        torch.manual_seed(random_seed)  # the emulated device draws from torch's generator
        self.set(random_seed=random_seed)
        return self

    def autoRoundNumIPUs(self, auto_round_num_ipus: bool = True) -> "Options":  # noqa: N802
        self.set(auto_round_num_ipus=bool(auto_round_num_ipus))
        return self

    def setExecutionStrategy(self, strategy: PipelinedExecution) -> "Options":  # noqa: N802
        self._execution_strategy = strategy
        return self

    def useIpuModel(self, use_model: bool) -> "Options":  # noqa: N802
        self.set(use_model=bool(use_model))
        return self


# ------------------------------------------------------------------ model annotation
class _Trace:
    """What one emulated forward pass saw: stage entries, checkpoints and the marked loss."""

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


def BeginBlock(layer: nn.Module, user_id: str, ipu_id: int) -> nn.Module:  # noqa: N802
    """Start a new block (and so a pipeline stage) on ``ipu_id`` where ``layer`` begins; returns the layer."""
    previous = layer.__dict__.pop("_emulator_begin_block", None)
    if previous is not None:
        previous.remove()

    def enter_block(module: nn.Module, args: Any) -> None:
        if _TRACE is not None:
            _TRACE.blocks.append((user_id, int(ipu_id)))
            _TRACE.current_ipu = int(ipu_id)

    layer.__dict__["_emulator_begin_block"] = layer.register_forward_pre_hook(enter_block)
    return layer


def recomputationCheckpoint(tensor: Tensor) -> Tensor:  # noqa: N802
    """Mark a tensor whose value is kept; what comes before it is recomputed in the backward pass."""
    if _TRACE is not None:
        _TRACE.checkpoints.append(_TRACE.current_ipu)
    return tensor


def identity_loss(x: Tensor, reduction: str) -> Tensor:
    """Mark ``x`` (reduced by ``reduction``: "sum", "mean" or "none") as the loss to minimise."""
    out = {"sum": torch.sum, "mean": torch.mean, "none": lambda t: t}[reduction](x)
    if _TRACE is not None:
        _TRACE.loss = out
    return out


# ---------------------------------------------------------------------------- optim
class _AdamW:
    """poptorch.optim.AdamW: decoupled weight decay, static loss scaling, typed accumulators."""

    def __init__(self, params: Any, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 1e-2, amsgrad: bool = False,
                 loss_scaling: Optional[float] = None, accum_type: torch.dtype = torch.float32,
                 first_order_momentum_accum_type: torch.dtype = torch.float32,
                 second_order_momentum_accum_type: torch.dtype = torch.float32,
                 max_grad_norm: Optional[float] = None) -> None:
        if amsgrad:
            raise ValueError("Only non-amsgrad AdamW is supported")
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay)
        groups = list(params)
        if groups and not isinstance(groups[0], dict):
            groups = [{"params": groups}]
        self.param_groups = [{**defaults, **group, "params": list(group["params"])} for group in groups]
        self.loss_scaling = float(loss_scaling) if loss_scaling else 1.0
        self.accum_type = accum_type
        self.moment_types = (first_order_momentum_accum_type, second_order_momentum_accum_type)
        self.max_grad_norm = max_grad_norm
        self.state: dict[nn.Parameter, dict[str, Any]] = {}

    def _step(self, grads: dict[nn.Parameter, Tensor]) -> None:
        """One update from averaged, unscaled gradients, in torch.optim.AdamW's operation order."""
        if self.max_grad_norm is not None:
            norm = torch.sqrt(sum((g.float() ** 2).sum() for g in grads.values()))
            grads = {p: g * min(1.0, self.max_grad_norm / (float(norm) + 1e-6)) for p, g in grads.items()}
        for group in self.param_groups:
            lr, (b1, b2), eps, wd = group["lr"], group["betas"], group["eps"], group["weight_decay"]
            for p in group["params"]:
                if p not in grads:
                    continue
                state = self.state.setdefault(p, {"step": 0, "exp_avg": torch.zeros_like(p, dtype=self.moment_types[0]),
                                                  "exp_avg_sq": torch.zeros_like(p, dtype=self.moment_types[1])})
                state["step"] += 1
                g = grads[p].float()
                w = p.data.float().mul_(1 - lr * wd)
                m = state["exp_avg"].float().lerp_(g, 1 - b1)
                v = state["exp_avg_sq"].float().mul_(b2).addcmul_(g, g, value=1 - b2)
                state["exp_avg"], state["exp_avg_sq"] = m.to(self.moment_types[0]), v.to(self.moment_types[1])
                bias1, bias2 = 1 - b1 ** state["step"], 1 - b2 ** state["step"]
                w.addcdiv_(m, (v.sqrt() / bias2 ** 0.5).add_(eps), value=-lr / bias1)
                p.data.copy_(w.to(p.dtype))


optim = types.SimpleNamespace(AdamW=_AdamW)


# ------------------------------------------------------------------------ executors
def _combine(items: list[Any], combine: Callable[[list[Tensor]], Tensor]) -> Any:
    """Outputs of several micro-batches (same structure) -> one output, leaf by leaf."""
    flat = [pytree.tree_flatten(item) for item in items]
    leaves = [combine([leaves[i] for leaves, _ in flat]) for i in range(len(flat[0][0]))]
    return pytree.tree_unflatten(leaves, flat[0][1])


def _concat(tensors: list[Tensor]) -> Tensor:
    """Along the batch dimension; scalars (a loss per micro-batch) stack, one value is returned as it is."""
    if tensors[0].dim():
        return torch.cat(tensors)
    return tensors[0] if len(tensors) == 1 else torch.stack(tensors)


class PoplarExecutor:
    """What ``trainingModel``/``inferenceModel`` return: call it with a combined batch."""

    def __init__(self, model: nn.Module, options: Options, optimizer: Optional[_AdamW] = None) -> None:
        self.model = model
        self.options = options
        self.optimizer = optimizer
        self.training = optimizer is not None
        self.output_mode = options.output_mode
        if self.output_mode == OutputMode.Default:
            self.output_mode = OutputMode.Final if self.training else OutputMode.All
        if self.output_mode == OutputMode.EveryN and options.device_iterations % options.output_return_period:
            raise Error(f"Anchor return period {options.output_return_period} must divide the device "
                        f"iterations ({options.device_iterations})")
        self.accumulation = options.Training.gradient_accumulation if self.training else 1
        self._device_state: Optional[dict[str, Tensor]] = None
        self._compiled_inputs: Optional[list[tuple[tuple[int, ...], torch.dtype]]] = None
        self._dirty_host_weights = False
        self._uploaded_version = -1
        self._attached = False
        self.compile_count = 0
        self.last_trace: Optional[_Trace] = None
        self.num_ipus_per_replica = 1
        if self.training:
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
            self._device_state[name] = value.to(dtype) if value.is_floating_point() else value
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
        for new, old in zip(optimizer.param_groups, self.optimizer.param_groups):
            for key in ("lr", "betas", "eps", "weight_decay"):
                old[key] = new[key]

    def __call__(self, *args: Any) -> Any:
        leaves = pytree.tree_leaves(args)
        if not self.isCompiled():
            self._compile(args, leaves)
        got = [(tuple(t.shape), t.dtype) for t in leaves]
        if got != self._compiled_inputs:
            raise Error(f"The model was compiled for inputs {self._compiled_inputs} but was called with {got}: "
                        "inputs must keep static shapes (pad tokens to a fixed length); call destroy() to "
                        "recompile for new shapes")
        if not self._attached:
            self.attachToDevice()
        if not self.training:
            # Parameters shared with a training executor: fetch its device weights through the host.
            mine = {id(p) for p in self.model.parameters()}
            for trainer in list(_TRAINING_EXECUTORS):
                if trainer.isCompiled() and mine & {id(p) for p in trainer.model.parameters()}:
                    trainer.copyWeightsToHostIfNeeded()
            if self._uploaded_version != _HOST_WEIGHTS_VERSION[0]:
                self.copyWeightsToDevice()
        return self._run(args)

    # --- internals
    def _device_dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def _host_tensors(self) -> list[tuple[str, Tensor]]:
        return list(self.model.named_parameters()) + list(self.model.named_buffers())

    def _split(self, args: tuple) -> tuple:
        """Every input tensor as [device_iterations, accumulation, replicas, micro-batch, ...] in the weights' dtype."""
        o, dtype = self.options, self._device_dtype()
        layout = (o.device_iterations, self.accumulation, o.replication_factor)

        def split(t: Tensor) -> Tensor:
            t = t.reshape(*layout, t.shape[0] // (layout[0] * layout[1] * layout[2]), *t.shape[1:])
            return t.to(dtype) if t.is_floating_point() else t

        return pytree.tree_map_only(Tensor, split, args)

    def _compile(self, args: tuple, leaves: list[Tensor]) -> None:
        o = self.options
        factor = o.device_iterations * self.accumulation * o.replication_factor
        for t in leaves:
            if t.dim() == 0 or t.shape[0] % factor or t.shape[0] == 0:
                raise Error(
                    f"Invalid batch dimension: In the input {tuple(t.shape)}, the batch dimension "
                    f"({t.shape[0] if t.dim() else 0}) must be a multiple of Options.deviceIterations("
                    f"{o.device_iterations}) * Options.replicationFactor({o.replication_factor}) * "
                    f"Options.Training.gradientAccumulation({self.accumulation}) = {factor} because it is used to "
                    "calculate the batch size which will be executed on the device in any given iteration.")
        # One traced run on the first micro-batch discovers the stages (as tracing does).
        first = pytree.tree_map_only(Tensor, lambda t: t[0, 0, 0], self._split(args))
        with _tracing() as trace, torch.no_grad(), self._mode():
            self.model(*first)
        self._check_stages(trace)
        total = self.num_ipus_per_replica * o.replication_factor
        if total & (total - 1) and not o.auto_round_num_ipus:
            raise Error(f"The model uses {total} IPUs ({self.num_ipus_per_replica} per replica x replication "
                        f"factor {o.replication_factor}): the number of IPUs must be a power of 2; "
                        "use poptorch.Options().autoRoundNumIPUs(True) to round it up")
        self._device_state = {}
        self._compiled_inputs = [(tuple(t.shape), t.dtype) for t in leaves]
        self.compile_count += 1
        self.last_trace = trace

    def _check_stages(self, trace: _Trace) -> None:
        stages = [ipu for _, ipu in trace.blocks]
        self.num_ipus_per_replica = max(stages, default=0) + 1
        for (name, _), prev, cur in zip(trace.blocks[1:], stages, stages[1:]):
            if cur < prev:
                raise Error(f"Block '{name}' runs in stage {cur} after stage {prev}: pipeline stages must "
                            "appear in increasing order of execution (fix the IPU ids of the stage map)")
        num_stages = len(set(stages))
        pipelined = self.options._execution_strategy.pipelined
        if self.training and pipelined and num_stages > 1 and self.accumulation < 2 * num_stages - 1:
            raise Error(
                "poptorch.Options().Training.gradientAccumulation must be greater than or equal to the number "
                f"of pipeline stages ({2 * num_stages - 1}) when using poptorch.PipelinedExecution. Please note "
                f"that a model with {num_stages} pipeline stages in PopTorch will have an additional "
                f"{num_stages - 1} stages when training.")

    @contextmanager
    def _mode(self) -> Iterator[None]:
        """The model in train() or eval() mode as the executor's kind says, restored afterwards."""
        was_training = self.model.training
        self.model.train(self.training)
        try:
            yield
        finally:
            self.model.train(was_training)

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

    def _run(self, args: tuple) -> Any:
        split = self._split(args)
        iterations, replicas = self.options.device_iterations, self.options.replication_factor
        outputs: list[list[Any]] = []  # [device iteration][accumulation step x replicas]
        with self._device_weights(), self._mode():
            params = [p for p in self.model.parameters() if p.requires_grad]
            for d in range(iterations):
                grads: dict[nn.Parameter, Tensor] = {}
                per_iteration = []
                for g in range(self.accumulation):
                    for r in range(replicas):
                        micro = pytree.tree_map_only(Tensor, operator.itemgetter((d, g, r)), split)
                        if self.training:
                            out = self._train_micro_batch(micro, params, grads)
                        else:
                            with torch.no_grad(), _tracing():
                                out = self.model(*micro)
                        per_iteration.append(pytree.tree_map_only(Tensor, Tensor.detach, out))
                if self.training:
                    scaling = self.optimizer.loss_scaling
                    with torch.no_grad():
                        self.optimizer._step({p: g.float() / scaling for p, g in grads.items()})
                outputs.append(per_iteration)
        if self.training:
            self._dirty_host_weights = True
        return self._select_outputs(outputs, replicas)

    def _train_micro_batch(self, micro: tuple, params: list[nn.Parameter], grads: dict[nn.Parameter, Tensor]) -> Any:
        """Forward and backward of one micro-batch; its gradient, scaled and averaged, joins the accumulator."""
        with _tracing() as trace:
            out = self.model(*micro)
        loss = trace.loss if trace.loss is not None else out
        if not isinstance(loss, Tensor):
            raise Error("The training model must return a loss (or mark it with poptorch.identity_loss)")
        # Mean reduction over accumulation and replicas, applied per micro-batch before accumulating.
        scale = self.optimizer.loss_scaling / (self.accumulation * self.options.replication_factor)
        found = torch.autograd.grad(loss.sum() * scale, params, allow_unused=True)
        for p, g in zip(params, found):
            if g is not None:
                g = g.to(self.optimizer.accum_type)
                grads[p] = grads[p].add_(g) if p in grads else g.clone()
        return out

    def _select_outputs(self, outputs: list[list[Any]], replicas: int) -> Any:
        """[device_iterations][accumulation x replicas] outputs -> what OutputMode returns."""
        mode, period = self.output_mode, self.options.output_return_period
        if mode == OutputMode.Final:
            picked = outputs[-1][-replicas:]
        elif mode == OutputMode.Sum:
            picked = [_combine([o for step in outputs for o in step[r::replicas]], lambda ts: torch.stack(ts).sum(0))
                      for r in range(replicas)]
        elif mode == OutputMode.EveryN:
            picked = [o for step in outputs[period - 1::period] for o in step]
        else:
            picked = [o for step in outputs for o in step]
        return _combine(picked, _concat)


def trainingModel(model: nn.Module, options: Options, optimizer: _AdamW) -> PoplarExecutor:  # noqa: N802
    """Wrap ``model`` (which returns or marks a loss) for training on the emulated device."""
    return PoplarExecutor(model, options, optimizer)


def inferenceModel(model: nn.Module, options: Options) -> PoplarExecutor:  # noqa: N802
    """Wrap ``model`` for inference on the emulated device."""
    return PoplarExecutor(model, options)


class DataLoader(torch.utils.data.DataLoader):
    """A DataLoader whose batches are combined: micro-batch x device iterations x replicas x accumulation."""

    def __init__(self, options: Options, dataset: Any, batch_size: int = 1, shuffle: bool = False,
                 num_workers: int = 0, drop_last: bool = True, **kwargs: Any) -> None:
        self.options = options
        self.micro_batch_size = _positive_int(batch_size, "batch_size")
        self.combined_factor = (options.device_iterations * options.replication_factor
                                * options.Training.gradient_accumulation)
        super().__init__(dataset, batch_size=batch_size * self.combined_factor, shuffle=shuffle,
                         num_workers=num_workers, drop_last=drop_last, persistent_workers=num_workers > 0, **kwargs)

    @property
    def combinedBatchSize(self) -> int:  # noqa: N802
        return self.micro_batch_size * self.combined_factor
