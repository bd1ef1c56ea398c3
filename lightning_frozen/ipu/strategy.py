"""``IPUStrategy``: train and evaluate a LightningModule on Graphcore IPUs through poptorch.

What runs where:

* host: data loading (poptorch.DataLoader, combined batches), the DataModule's batch transfer
  hooks (augmentation runs here, before poptorch sees the batch), token padding to a static
  length, the host part of validation/test/predict steps, logging, metrics, checkpoints;
* device: the whole training step (forward, loss, backward, gradient accumulation and replica
  reduction, the optimizer) in a ``poptorch.trainingModel``, and the module's ``forward`` in a
  ``poptorch.inferenceModel`` for validation/test/predict.

The two executors share the host module's weights; they are attached and detached in turn, and
the inference executor always runs with the latest training weights. One Lightning training step
consumes one combined batch = micro-batch x device iterations x replicas x gradient accumulation,
i.e. ``device_iterations`` optimizer steps on the device.
"""
from __future__ import annotations

import functools
import importlib
import logging
from contextlib import contextmanager
from types import ModuleType
from typing import Any, Callable, Iterator, Mapping, Optional, Union

import torch
from lightning_fabric.plugins import CheckpointIO
from pytorch_lightning.strategies import Strategy
from pytorch_lightning.trainer.states import RunningStage, TrainerFn
from pytorch_lightning.utilities import rank_zero_warn
from torch import Tensor, nn
from torch.utils import _pytree as pytree

from ..data.datamodule import RunLoader
from . import pipeline
from .options import IPUOptions, build_options, resolve_accumulation
from .precision import IPUPrecision, IPUPrecisionName

log = logging.getLogger(__name__)

MISSING_POPTORCH = (
    "IPUStrategy needs poptorch, which ships only with Graphcore's Poplar SDK (it is not on PyPI): "
    "install the SDK, `source <sdk>/enable.sh` and `pip install <sdk>/poptorch-*.whl` on an IPU host. "
    "To run the IPU code path on a CPU instead, give the strategy `emulator: true` "
    "(lightning_frozen.ipu.emulator)."
)


def load_poptorch(emulator: bool = False) -> ModuleType:
    """The poptorch module to drive: the emulator when asked for, else the real one (or one clear error)."""
    if emulator:
        from . import emulator as emulated

        return emulated
    try:
        return importlib.import_module("poptorch")
    except ImportError as err:
        raise ModuleNotFoundError(MISSING_POPTORCH) from err


@functools.lru_cache(maxsize=None)
def _with_pass_hook(loader_class: type) -> type:
    """``loader_class`` calling ``on_start()`` where each pass starts, as the DataModule's own loaders do."""
    return type(f"Run{loader_class.__name__}", (RunLoader, loader_class), {})


def _only_frames_changed(before: list[tuple[int, ...]], after: list[tuple[int, ...]]) -> bool:
    """True when the shapes differ only in dimension 1 of 5-d video tensors [B, F, 3, H, W]."""
    if len(before) != len(after):
        return False
    for a, b in zip(before, after):
        if len(a) != len(b):
            return False
        if len(a) == 5:
            a, b = a[:1] + a[2:], b[:1] + b[2:]
        if a != b:
            return False
    return True


def _pad_rows(t: Tensor, rows: int) -> Tensor:
    """Repeat the last row up to ``rows`` rows."""
    return torch.cat([t, t[-1:].expand(rows - t.shape[0], *t.shape[1:])]) if rows > t.shape[0] else t


class _DeviceStep(nn.Module):
    """What an executor runs: the tensors of a host pytree in, ``run(module, pytree)`` on the device.

    poptorch executors take tensors only; ``flatten`` keeps the structure on the host, and
    non-tensor values (paths, captions, ids) reach the device as None.
    """

    def __init__(self, module: nn.Module, run: Callable[[nn.Module, Any], Any]) -> None:
        super().__init__()
        self.module = module
        self._run = run
        self._spec: Optional[pytree.TreeSpec] = None
        self._positions: list[int] = []

    def flatten(self, inputs: Any) -> list[Tensor]:
        leaves, self._spec = pytree.tree_flatten(inputs)
        self._positions = [i for i, leaf in enumerate(leaves) if isinstance(leaf, Tensor)]
        return [leaves[i] for i in self._positions]

    def forward(self, *tensors: Tensor) -> Any:
        leaves: list[Any] = [None] * self._spec.num_leaves
        for position, tensor in zip(self._positions, tensors):
            leaves[position] = tensor
        return self._run(self.module, pytree.tree_unflatten(leaves, self._spec))


class IPUStrategy(Strategy):
    """Run a LightningModule on IPUs: stage map, replication, poptorch executors.

    The LightningModule provides:

    * ``training_loss(batch) -> Tensor``: the loss of one micro-batch, without ``self.log``; the
      training executor runs it on the device (forward, loss, backward and the optimizer), and
      the strategy logs the step's mean loss as ``train/loss``.
    * ``forward(...)``: ``validation_step``, ``test_step`` and ``predict_step`` run on the host as
      usual, except that their calls of ``self(...)`` run on the inference executor. Every tensor
      passed to or returned by ``forward`` has the batch in dimension 0; the strategy pads a short
      last batch to the compiled size and trims the outputs, and floating outputs come back as
      float32.

    Input shapes are static: only dimension 1 of 5-d (video) tensors may change between batches
    (a frame curriculum), which recompiles the executors and keeps weights and optimizer state.

    Args:
        stage_map: IPU id per module path of the LightningModule, in execution order (see
            ``lightning_frozen.ipu.pipeline``); None runs the whole module on one IPU per replica.
        recompute: a recomputation checkpoint at the output of every stage.
        training_opts: options of the training executor; ``gradient_accumulation`` None takes the
            Trainer's ``accumulate_grad_batches``.
        inference_opts: options of the inference executor; None derives them from ``training_opts``
            (no accumulation, all outputs).
        precision: "32", "16.32" (FP16 weights, FP32 optimizer accumulation) or "16.16".
        loss_scaling: static loss scale of the poptorch optimizer (default 1024 for FP16, none for FP32).
        pad_text_to: pad (never truncate) ``input_ids``/``attention_mask`` on the host to this length
            so shapes stay static; None requires the DataModule to pad to ``max_length`` itself.
        emulator: run on the CPU emulator instead of poptorch (no IPU needed).
    """

    strategy_name = "ipu_strategy"

    def __init__(
        self,
        stage_map: Optional[dict[str, Union[int, list[int]]]] = None,
        recompute: bool = True,
        training_opts: Optional[Union[IPUOptions, dict]] = None,
        inference_opts: Optional[Union[IPUOptions, dict]] = None,
        precision: IPUPrecisionName = "32",
        loss_scaling: Optional[float] = None,
        pad_text_to: Optional[int] = None,
        emulator: bool = False,
        accelerator: Optional[Any] = None,
        checkpoint_io: Optional[CheckpointIO] = None,
    ) -> None:
        self.poptorch = load_poptorch(emulator)
        super().__init__(accelerator=accelerator, checkpoint_io=checkpoint_io,
                         precision_plugin=IPUPrecision(precision))
        self.stage_map = dict(stage_map) if stage_map is not None else None
        self.recompute = recompute
        self.training_opts = self._as_options(training_opts) or IPUOptions()
        self.inference_opts = self._as_options(inference_opts) or self.training_opts.for_inference()
        self.loss_scaling = loss_scaling
        self.pad_text_to = pad_text_to
        self.parallel_devices: Optional[list[torch.device]] = None  # filled by Lightning: one entry per IPU
        self.gradient_accumulation = 1
        self._trainer_accumulation: Optional[int] = None
        self._train_step: Optional[_DeviceStep] = None
        self._infer_step: Optional[_DeviceStep] = None
        self._train_exec: Any = None
        self._infer_exec: Any = None
        self._poptorch_optimizer: Any = None
        self._shapes: dict[str, list[tuple[int, ...]]] = {}
        self.recompilations: list[tuple[str, str]] = []
        self._infer_micro: Optional[int] = None
        self._host_sig: tuple = ()
        self._forward_calls = 0

    @staticmethod
    def _as_options(value: Optional[Union[IPUOptions, dict]]) -> Optional[IPUOptions]:
        if value is None or isinstance(value, IPUOptions):
            return value
        return IPUOptions(**value)

    # ------------------------------------------------------------ Strategy basics
    @property
    def root_device(self) -> torch.device:
        return torch.device("cpu")

    @property
    def num_ipus(self) -> int:
        return len(self.parallel_devices) if self.parallel_devices else 1

    def model_to_device(self) -> None:
        pass

    @property
    def is_global_zero(self) -> bool:
        return True

    # One host process drives every IPU (replicas live inside the poptorch executable).
    global_rank = local_rank = node_rank = 0
    world_size = 1

    def reduce(self, tensor: Any, group: Optional[Any] = None, reduce_op: Optional[Any] = "mean") -> Any:
        return tensor

    def barrier(self, name: Optional[str] = None) -> None:
        pass

    def broadcast(self, obj: Any, src: int = 0) -> Any:
        return obj

    def all_gather(self, tensor: Tensor, group: Optional[Any] = None, sync_grads: bool = False) -> Tensor:
        return tensor

    @property
    def handles_gradient_accumulation(self) -> bool:
        return True

    @property
    def is_emulated(self) -> bool:
        return bool(getattr(self.poptorch, "IS_EMULATOR", False))

    # ------------------------------------------------------------------- set-up
    def setup(self, trainer: Any) -> None:
        """Check the stage map, options and hooks against the module before anything compiles."""
        module = self.lightning_module
        if trainer.state.fn == TrainerFn.FITTING and not callable(getattr(module, "training_loss", None)):
            raise TypeError(f"IPUStrategy runs `training_loss(batch) -> Tensor` of the LightningModule on the device; "
                            f"{type(module).__name__} has none. Fix: define it (training_step's loss without self.log)")
        if self._trainer_accumulation is None:  # later runs of the same Trainer see the 1 set here
            self._trainer_accumulation = trainer.accumulate_grad_batches
        self.gradient_accumulation = resolve_accumulation(self.training_opts, self._trainer_accumulation)
        trainer.accumulate_grad_batches = 1  # the device accumulates
        # Options first: configure_optimizers may size schedules from the (combined-batch) dataloader.
        self.train_options = build_options(self.poptorch, self.training_opts, training=True,
                                           gradient_accumulation=self.gradient_accumulation)
        self.infer_options = build_options(self.poptorch, self.inference_opts, training=False)
        per_replica = 1
        if self.stage_map is not None:
            pipeline.validate(self.stage_map, module, num_ipus=self.num_ipus,
                              replication_factor=self.training_opts.replication_factor)
            per_replica = pipeline.ipus_per_replica(self.stage_map)
        elif self.num_ipus != self.training_opts.replication_factor:
            raise pipeline.StageMapError(
                f"without a stage map each replica uses one IPU, so trainer.devices ({self.num_ipus}) must equal "
                f"the replication factor ({self.training_opts.replication_factor}); fix: set one or add a stage map")
        if self.inference_opts.replication_factor * per_replica > self.num_ipus:
            raise pipeline.StageMapError(
                f"inference replication factor {self.inference_opts.replication_factor} needs more IPUs than "
                f"trainer.devices ({self.num_ipus}); fix: lower inference_opts.replication_factor")
        super().setup(trainer)
        placed = (self.stage_map, self.recompute)
        if self.stage_map is not None and module.__dict__.get("_ipu_stage_map") != placed:
            pipeline.apply(self.stage_map, module, self.poptorch, self.recompute)  # once per module
            module.__dict__["_ipu_stage_map"] = placed

    # ------------------------------------------------------------------- data
    def combined_batch_factor(self, training: bool) -> int:
        o = self.training_opts if training else self.inference_opts
        return o.device_iterations * o.replication_factor * (self.gradient_accumulation if training else 1)

    def process_dataloader(self, dataloader: object) -> object:
        """Rebuild torch DataLoaders as poptorch DataLoaders with combined batches."""
        if not isinstance(dataloader, torch.utils.data.DataLoader) or isinstance(dataloader, self.poptorch.DataLoader):
            return dataloader
        trainer = self.lightning_module.trainer
        training = trainer.state.stage == RunningStage.TRAINING or (
            trainer.state.stage is None and trainer.training)
        # Lightning wraps a predict loader's BatchSampler (to record indices); the wrapper keeps its attributes.
        batch_sampler = dataloader.batch_sampler
        micro = dataloader.batch_size or getattr(batch_sampler, "batch_size", None)
        if micro is None:
            raise ValueError("IPUStrategy needs DataLoaders built with batch_size (the micro-batch), "
                             "not a custom batch_sampler")
        options = self.train_options if training else self.infer_options
        if not training:
            self._infer_micro = int(micro)
        sampler = getattr(batch_sampler, "sampler", dataloader.sampler)
        plain = (torch.utils.data.RandomSampler, torch.utils.data.SequentialSampler)
        order = {} if isinstance(sampler, plain) else {"sampler": sampler}  # e.g. the DataModule's epoch-keyed order
        on_start = getattr(dataloader, "on_start", None)  # the DataModule's pass hook (run state, skip counts)
        loader_class = self.poptorch.DataLoader if on_start is None else _with_pass_hook(self.poptorch.DataLoader)
        loader = loader_class(
            options, dataloader.dataset, batch_size=micro, shuffle=isinstance(sampler, torch.utils.data.RandomSampler),
            num_workers=dataloader.num_workers, collate_fn=dataloader.collate_fn,
            drop_last=training, worker_init_fn=dataloader.worker_init_fn, **order,
        )
        if on_start is not None:
            loader.on_start = on_start
        return loader

    def batch_to_device(self, batch: Any, device: Optional[torch.device] = None, dataloader_idx: int = 0) -> Any:
        """Run the module's/DataModule's transfer hooks on the host (augmentation happens here)."""
        batch = super().batch_to_device(batch, torch.device("cpu"), dataloader_idx)
        return self._pad_text(batch)

    def _pad_text(self, batch: Any) -> Any:
        if self.pad_text_to is None or not isinstance(batch, Mapping):
            return batch
        if "input_ids" not in batch:
            return {k: self._pad_text(v) for k, v in batch.items()}
        length = batch["input_ids"].shape[1]
        if length > self.pad_text_to:
            raise ValueError(f"text batch has {length} tokens, more than pad_text_to={self.pad_text_to}; fix: "
                             "raise pad_text_to or truncate in the tokenizer (max_length)")
        out = dict(batch)
        extra = self.pad_text_to - length
        if extra:
            for key in ("input_ids", "attention_mask", "token_type_ids"):
                if key in out:
                    out[key] = torch.nn.functional.pad(out[key], (0, extra), value=0)
        return out

    # -------------------------------------------------------------- executors
    def _cast(self, tensors: list[Tensor]) -> list[Tensor]:
        dtype = self.precision_plugin.spec.weights
        return [t.to(dtype) if t.is_floating_point() else t for t in tensors]

    def _make_poptorch_optimizer(self) -> Any:
        if not self.optimizers:
            raise RuntimeError("IPUStrategy: configure_optimizers returned no optimizer")
        if len(self.optimizers) > 1:
            raise ValueError("IPUStrategy supports one optimizer (the device runs one update rule)")
        torch_opt = self._torch_optimizer()
        if not isinstance(torch_opt, torch.optim.AdamW):
            raise ValueError(f"IPUStrategy maps torch.optim.AdamW to poptorch.optim.AdamW; got "
                             f"{type(torch_opt).__name__}. Fix: return AdamW from configure_optimizers")
        spec = self.precision_plugin.spec
        scaling = self.loss_scaling if self.loss_scaling is not None else spec.default_loss_scaling
        trainer = self.lightning_module.trainer
        max_norm = None
        if trainer.gradient_clip_val:
            if (trainer.gradient_clip_algorithm or "norm") != "norm":
                raise ValueError("IPUStrategy clips by global norm only (poptorch max_grad_norm); "
                                 "fix: gradient_clip_algorithm: norm")
            max_norm = float(trainer.gradient_clip_val)
        groups = [{k: v for k, v in g.items() if k in ("params", "lr", "betas", "eps", "weight_decay")}
                  for g in torch_opt.param_groups]
        d = torch_opt.defaults
        return self.poptorch.optim.AdamW(
            groups, lr=d["lr"], betas=d["betas"], eps=d["eps"], weight_decay=d["weight_decay"], amsgrad=d["amsgrad"],
            loss_scaling=scaling, accum_type=spec.accum_type, first_order_momentum_accum_type=spec.momentum_type,
            second_order_momentum_accum_type=spec.momentum_type, max_grad_norm=max_norm)

    def _torch_optimizer(self) -> torch.optim.Optimizer:
        return getattr(self.optimizers[0], "_optimizer", self.optimizers[0])

    def _sync_hyperparameters(self) -> None:
        """Push learning-rate/weight-decay changes (LR schedulers) to the device optimizer."""
        changed = False
        for src, dst in zip(self._torch_optimizer().param_groups, self._poptorch_optimizer.param_groups):
            for key in ("lr", "weight_decay"):
                if dst[key] != src[key]:
                    dst[key] = src[key]
                    changed = True
        if changed:
            self._train_exec.setOptimizer(self._poptorch_optimizer)

    def _training_executor(self) -> Any:
        if self._train_exec is None:
            poptorch = self.poptorch
            self._train_step = _DeviceStep(self.lightning_module, lambda module, batch: poptorch.identity_loss(
                module.training_loss(batch), reduction="none"))
            self._poptorch_optimizer = self._make_poptorch_optimizer()
            self._train_exec = poptorch.trainingModel(self._train_step, self.train_options, self._poptorch_optimizer)
        return self._train_exec

    def _inference_executor(self) -> Any:
        if self._infer_exec is None:
            # the class's forward: the instance's is redirected here while a host step runs
            self._infer_step = _DeviceStep(self.lightning_module, lambda module, inputs: type(module).forward(
                module, *inputs[0], **inputs[1]))
            self._infer_exec = self.poptorch.inferenceModel(self._infer_step, self.infer_options)
        return self._infer_exec

    def _switch_to(self, stage: str, executor: Any, tensors: list[Tensor]) -> None:
        """Detach the other executor, and recompile this one if the frame count changed."""
        other = self._infer_exec if stage == "train" else self._train_exec
        if other is not None and other.isAttached():
            other.detachFromDevice()
        shapes = [tuple(t.shape) for t in tensors]
        previous = self._shapes.get(stage)
        if previous is not None and previous != shapes:
            if not _only_frames_changed(previous, shapes):
                raise ValueError(
                    f"IPU {stage} inputs changed shape from {previous} to {shapes}; only the frame count may change "
                    "(the frame curriculum recompiles). Fix: pad tokens to a fixed length (tokenizer "
                    "padding='max_length' or IPUStrategy pad_text_to) and keep the micro-batch size fixed")
            if executor.isCompiled():
                executor.destroy()
            self.recompilations.append((stage, f"{previous} -> {shapes}"))
            log.info("IPU %s executor recompiles for new input shapes %s", stage, shapes)
        self._shapes[stage] = shapes

    # ---------------------------------------------------------------- steps
    def training_step(self, batch: Any, batch_idx: int = 0, *args: Any, **kwargs: Any) -> Tensor:
        executor = self._training_executor()
        tensors = self._cast(self._train_step.flatten(batch))
        self._switch_to("train", executor, tensors)
        self._sync_hyperparameters()
        if executor.isCompiled() and self._host_signature() != self._host_sig:
            # Host weights were written since the last step (load_state_dict, a curriculum reload):
            # they win over the device copy.
            if not executor.isAttached():
                executor.attachToDevice()
            executor.copyWeightsToDevice()
        out = executor(*tensors)
        self._host_sig = self._host_signature()
        # The device stepped the optimizer; tell LR schedulers the host optimizer "stepped" too.
        self._torch_optimizer()._opt_called = True
        loss = out.detach().float().mean()
        self.lightning_module.log("train/loss", loss, prog_bar=True, batch_size=tensors[0].shape[0])
        return loss

    def optimizer_step(self, optimizer: Any, closure: Any, model: Any = None, **kwargs: Any) -> Any:
        """The update already happened on the device inside the training step; run only the closure."""
        return self.precision_plugin.optimizer_step(optimizer, model=model, closure=closure)

    def _forward_on_device(self, *args: Any, **kwargs: Any) -> Any:
        """The module's forward on the inference executor (a short batch padded to the compiled size, then trimmed)."""
        self._forward_calls += 1
        executor = self._inference_executor()
        tensors = self._cast(self._infer_step.flatten((args, kwargs)))
        n = min(t.shape[0] for t in tensors)  # inputs may hold k rows per sample (captions)
        factor = self.combined_batch_factor(training=False)
        if self._infer_micro is None:
            self._infer_micro = max(1, -(-n // factor))
        target = self._infer_micro * factor
        if n > target:
            raise ValueError(f"inference batch of {n} exceeds the compiled combined batch {target}")
        tensors = [_pad_rows(t, t.shape[0] * target // n) for t in tensors]
        self._switch_to("infer", executor, tensors)

        def trim(t: Tensor) -> Tensor:
            t = t[: t.shape[0] * n // target] if t.dim() else t
            return t.float() if t.is_floating_point() else t

        return pytree.tree_map_only(Tensor, trim, executor(*tensors))

    @contextmanager
    def _forward_redirected(self, step: str) -> Iterator[None]:
        module = self.lightning_module
        module.forward = self._forward_on_device  # an instance attribute shadows the class's forward
        calls = self._forward_calls
        try:
            yield
        finally:
            del module.forward
        if self._forward_calls == calls:
            rank_zero_warn(f"IPUStrategy: {type(module).__name__}.{step} did not call self(...), so it ran on the "
                           "host CPU; fix: compute outputs through forward to run them on the IPU")

    def validation_step(self, *args: Any, **kwargs: Any) -> Any:
        with self._forward_redirected("validation_step"):
            return self.lightning_module.validation_step(*args, **kwargs)

    def test_step(self, *args: Any, **kwargs: Any) -> Any:
        with self._forward_redirected("test_step"):
            return self.lightning_module.test_step(*args, **kwargs)

    def predict_step(self, *args: Any, **kwargs: Any) -> Any:
        with self._forward_redirected("predict_step"):
            return self.lightning_module.predict_step(*args, **kwargs)

    # ------------------------------------------------------ weights and teardown
    def sync_host_weights(self) -> None:
        """Bring the host module up to date with the training executor's device weights."""
        if self._train_exec is not None and self._train_exec.isCompiled():
            self._train_exec.copyWeightsToHostIfNeeded()
            self._host_sig = self._host_signature()

    def _host_signature(self) -> tuple:
        """In-place writes to host parameters bump their version counters; weight transfers do not."""
        return tuple((p._version, p.data_ptr()) for p in self.lightning_module.parameters())

    def lightning_module_state_dict(self) -> dict[str, Any]:
        self.sync_host_weights()
        return super().lightning_module_state_dict()

    def load_model_state_dict(self, checkpoint: Mapping[str, Any], strict: bool = True) -> None:
        super().load_model_state_dict(checkpoint, strict=strict)
        for executor in (self._train_exec, self._infer_exec):
            if executor is not None and executor.isCompiled() and executor.isAttached():
                executor.copyWeightsToDevice()

    def on_train_end(self) -> None:
        self.sync_host_weights()

    def teardown(self) -> None:
        self.sync_host_weights()
        for executor in (self._train_exec, self._infer_exec):
            if executor is not None and executor.isCompiled():
                executor.destroy()
        self._train_exec = self._infer_exec = None
        self._shapes.clear()
        super().teardown()

    @classmethod
    def register_strategies(cls, strategy_registry: Any) -> None:
        strategy_registry.register(cls.strategy_name, cls, description="Graphcore IPUs through poptorch")
        strategy_registry.register("ipu_emulator", cls, description="IPU code path on the CPU emulator",
                                   emulator=True)


def register() -> None:
    """Add ``ipu_strategy`` and ``ipu_emulator`` to Lightning's strategy registry (idempotent)."""
    from pytorch_lightning.strategies import StrategyRegistry

    if IPUStrategy.strategy_name not in StrategyRegistry:
        IPUStrategy.register_strategies(StrategyRegistry)
