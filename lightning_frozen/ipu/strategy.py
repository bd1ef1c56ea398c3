"""``IPUStrategy``: FrozenInTime training and evaluation on Graphcore IPUs through poptorch.

What runs where:

* host: data loading (poptorch.DataLoader, combined batches), the DataModule's batch
  transfer hooks (video augmentation and normalisation run here, on the CPU, before poptorch
  sees the batch), token padding to a static length, logging, metrics, checkpoints;
* device: the whole training step (both towers, similarity, loss, backward, gradient
  accumulation and replica reduction, the optimizer) in a ``poptorch.trainingModel``, and the
  encoders in a ``poptorch.inferenceModel`` for validation/test/predict.

The two executors share the host model's weights; they are attached and detached in turn,
and the inference executor always runs with the latest training weights. One Lightning
training step consumes one combined batch = micro-batch x device iterations x replicas x
gradient accumulation, i.e. ``device_iterations`` optimizer steps on the device.
"""
from __future__ import annotations

import logging
from typing import Any, Mapping, Optional, Union

import torch
from lightning_fabric.plugins import CheckpointIO
from pytorch_lightning.strategies import Strategy
from pytorch_lightning.trainer.states import RunningStage
from torch import Tensor, nn

from . import pipeline
from .backend import is_emulator, load_poptorch
from .options import IPUOptions, build_options, resolve_accumulation
from .precision import IPUPrecision, IPUPrecisionName

log = logging.getLogger(__name__)

BatchKeys = list[tuple[str, ...]]


def _flatten_batch(batch: Any, prefix: tuple[str, ...] = ()) -> tuple[BatchKeys, list[Tensor]]:
    """Nested dict of tensors -> (key paths, tensors), in sorted key order (a stable signature)."""
    if isinstance(batch, Tensor):
        return [prefix], [batch]
    if isinstance(batch, Mapping):
        keys: BatchKeys = []
        tensors: list[Tensor] = []
        for name in sorted(batch):
            k, t = _flatten_batch(batch[name], prefix + (str(name),))
            keys += k
            tensors += t
        return keys, tensors
    return [], []  # non-tensor values (paths, raw captions) stay on the host


MODEL_INPUTS = ("video", "input_ids", "attention_mask")


def device_inputs(batch: Any) -> Any:
    """Only what the device step needs: video and tokens (metadata stays on the host)."""
    if isinstance(batch, Mapping) and "video" in batch:
        return {k: batch[k] for k in MODEL_INPUTS if k in batch}
    if isinstance(batch, Mapping):
        return {name: device_inputs(sub) for name, sub in batch.items() if sub is not None}
    return batch


def _unflatten(keys: BatchKeys, tensors: tuple[Tensor, ...]) -> dict:
    out: dict = {}
    for path, tensor in zip(keys, tensors):
        node = out
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = tensor
    return out


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


class _TrainStep(nn.Module):
    """What the training executor runs: batch tensors -> loss of the whole step."""

    def __init__(self, module: nn.Module, poptorch: Any) -> None:
        super().__init__()
        self.module = module
        self.keys: BatchKeys = []
        self._poptorch = poptorch

    def forward(self, *tensors: Tensor) -> Tensor:
        loss = self.module.training_loss(_unflatten(self.keys, tensors))  # no logging on the device
        return self._poptorch.identity_loss(loss, reduction="none")


class _EncodeStep(nn.Module):
    """What the inference executor runs: (video, tokens) -> (text embeddings, video embeddings)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, video: Tensor, input_ids: Tensor, attention_mask: Tensor) -> tuple[Tensor, Tensor]:
        text_emb, video_emb = self.model(video, input_ids, attention_mask)
        return text_emb, video_emb


class IPUStrategy(Strategy):
    """Run FrozenModule on IPUs: stage map, replication, poptorch executors.

    Args:
        stage_map: IPU id per model group (see ``lightning_frozen.ipu.pipeline``); None runs the
            whole model on one IPU per replica.
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
        stage_map: Optional[Union[dict, pipeline.StageMap]] = None,
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
        self.stage_map = pipeline.StageMap.from_config(stage_map)
        self.training_opts = self._as_options(training_opts) or IPUOptions()
        self.inference_opts = self._as_options(inference_opts) or self.training_opts.for_inference()
        self.loss_scaling = loss_scaling
        self.pad_text_to = pad_text_to
        self.emulator = emulator
        self.parallel_devices: Optional[list[torch.device]] = None  # filled by Lightning: one entry per IPU
        self.gradient_accumulation = 1
        self._train_step: Optional[_TrainStep] = None
        self._train_exec: Any = None
        self._infer_exec: Any = None
        self._poptorch_optimizer: Any = None
        self._shapes: dict[str, list[tuple[int, ...]]] = {}
        self.recompilations: list[tuple[str, str]] = []
        self._infer_micro: Optional[int] = None
        self._host_sig: tuple = ()

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

    # ------------------------------------------------------------------- set-up
    def setup(self, trainer: Any) -> None:
        """Check the stage map and options against the model before anything compiles."""
        self.gradient_accumulation = resolve_accumulation(self.training_opts, trainer.accumulate_grad_batches)
        trainer.accumulate_grad_batches = 1  # the device accumulates
        # Options first: configure_optimizers may size schedules from the (combined-batch) dataloader.
        self.train_options = build_options(self.poptorch, self.training_opts, training=True,
                                           gradient_accumulation=self.gradient_accumulation)
        self.infer_options = build_options(self.poptorch, self.inference_opts, training=False)
        if self.stage_map is not None:
            pipeline.validate(self.stage_map, self._frozen_model(), num_ipus=self.num_ipus,
                              replication_factor=self.training_opts.replication_factor)
        elif self.num_ipus != self.training_opts.replication_factor:
            raise pipeline.StageMapError(
                f"without a stage map each replica uses one IPU, so trainer.devices ({self.num_ipus}) must equal "
                f"the replication factor ({self.training_opts.replication_factor}); fix: set one or add a stage map")
        if self.inference_opts.replication_factor * (self.stage_map.ipus_per_replica if self.stage_map else 1) \
                > self.num_ipus:
            raise pipeline.StageMapError(
                f"inference replication factor {self.inference_opts.replication_factor} needs more IPUs than "
                f"trainer.devices ({self.num_ipus}); fix: lower inference_opts.replication_factor")
        super().setup(trainer)
        model = self._frozen_model()
        if self.stage_map is not None and model.__dict__.get("_ipu_stage_map") != self.stage_map.as_dict():
            pipeline.apply(self.stage_map, model, self.poptorch)  # once per model (fit, then test, ...)
            model.__dict__["_ipu_stage_map"] = self.stage_map.as_dict()

    def _frozen_model(self) -> nn.Module:
        module = self.lightning_module
        return getattr(module, "model", module)

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
        if dataloader.batch_size is None:
            raise ValueError("IPUStrategy needs DataLoaders built with batch_size (the micro-batch), "
                             "not a custom batch_sampler")
        options = self.train_options if training else self.infer_options
        if not training:
            self._infer_micro = int(dataloader.batch_size)
        shuffle = isinstance(dataloader.sampler, torch.utils.data.RandomSampler)
        return self.poptorch.DataLoader(
            options, dataloader.dataset, batch_size=dataloader.batch_size, shuffle=shuffle,
            num_workers=dataloader.num_workers, collate_fn=dataloader.collate_fn,
            drop_last=training, worker_init_fn=dataloader.worker_init_fn,
        )

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
    def _weights_dtype(self) -> torch.dtype:
        return self.precision_plugin.spec.weights

    def _cast(self, tensors: list[Tensor]) -> list[Tensor]:
        dtype = self._weights_dtype()
        return [t.to(dtype) if t.is_floating_point() else t for t in tensors]

    def _make_poptorch_optimizer(self) -> Any:
        if not self.optimizers:
            raise RuntimeError("IPUStrategy: configure_optimizers returned no optimizer")
        if len(self.optimizers) > 1:
            raise ValueError("IPUStrategy supports one optimizer (the device runs one update rule)")
        torch_opt = self.optimizers[0]
        torch_opt = getattr(torch_opt, "_optimizer", torch_opt)
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
        if isinstance(torch_opt, torch.optim.AdamW):
            return self.poptorch.optim.AdamW(
                groups, lr=torch_opt.defaults["lr"], betas=torch_opt.defaults["betas"], eps=torch_opt.defaults["eps"],
                weight_decay=torch_opt.defaults["weight_decay"], loss_scaling=scaling, accum_type=spec.accum_type,
                first_order_momentum_accum_type=spec.momentum_type,
                second_order_momentum_accum_type=spec.momentum_type, max_grad_norm=max_norm)
        raise ValueError(f"IPUStrategy maps torch.optim.AdamW to poptorch.optim.AdamW; got "
                         f"{type(torch_opt).__name__}. Fix: return AdamW from configure_optimizers")

    def _sync_hyperparameters(self) -> None:
        """Push learning-rate/weight-decay changes (LR schedulers) to the device optimizer."""
        torch_opt = getattr(self.optimizers[0], "_optimizer", self.optimizers[0])
        changed = False
        for src, dst in zip(torch_opt.param_groups, self._poptorch_optimizer.param_groups):
            for key in ("lr", "weight_decay"):
                if dst[key] != src[key]:
                    dst[key] = src[key]
                    changed = True
        if changed:
            self._train_exec.setOptimizer(self._poptorch_optimizer)

    def _training_executor(self) -> Any:
        if self._train_exec is None:
            self._train_step = _TrainStep(self.lightning_module, self.poptorch)
            self._poptorch_optimizer = self._make_poptorch_optimizer()
            self._train_exec = self.poptorch.trainingModel(self._train_step, self.train_options,
                                                           self._poptorch_optimizer)
        return self._train_exec

    def _inference_executor(self) -> Any:
        if self._infer_exec is None:
            self._infer_exec = self.poptorch.inferenceModel(_EncodeStep(self._frozen_model()), self.infer_options)
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
        keys, tensors = _flatten_batch(device_inputs(batch))
        tensors = self._cast(tensors)
        self._train_step.keys = keys
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
        getattr(self.optimizers[0], "_optimizer", self.optimizers[0])._opt_called = True
        loss = out.detach().float().mean()
        module = self.lightning_module
        module.log("train/loss", loss, prog_bar=True, batch_size=tensors[0].shape[0] if tensors else None)
        return loss

    def optimizer_step(self, optimizer: Any, closure: Any, model: Any = None, **kwargs: Any) -> Any:
        """The update already happened on the device inside the training step; run only the closure."""
        return self.precision_plugin.optimizer_step(optimizer, model=model, closure=closure)

    def _encode(self, batch: Mapping) -> tuple[Tensor, Tensor]:
        """Embeddings of a host batch from the inference executor (padded to a combined batch, then trimmed)."""
        executor = self._inference_executor()
        tensors = self._cast([batch["video"], batch["input_ids"], batch["attention_mask"]])
        n = tensors[0].shape[0]
        factor = self.combined_batch_factor(training=False)
        micro = self._infer_micro
        if micro is None:
            micro = max(1, -(-n // factor))
            self._infer_micro = micro
        target = micro * factor
        if n > target:
            raise ValueError(f"validation batch of {n} exceeds the compiled combined batch {target}")
        if n < target:
            tensors = [torch.cat([t, t[-1:].expand(target - n, *t.shape[1:])]) for t in tensors]
        self._switch_to("infer", executor, tensors)
        text_emb, video_emb = executor(*tensors)
        return text_emb[:n].float(), video_emb[:n].float()

    def validation_step(self, batch: Any, *args: Any, **kwargs: Any) -> Any:
        self.lightning_module.update_retrieval("val", batch, *self._encode(batch))

    def test_step(self, batch: Any, *args: Any, **kwargs: Any) -> Any:
        self.lightning_module.update_retrieval("test", batch, *self._encode(batch))

    def predict_step(self, batch: Any, *args: Any, **kwargs: Any) -> Any:
        return self.lightning_module.predictions(batch, *self._encode(batch))

    # ------------------------------------------------------ weights and teardown
    def sync_host_weights(self) -> None:
        """Bring the host model up to date with the training executor's device weights."""
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

    @property
    def is_emulated(self) -> bool:
        return is_emulator(self.poptorch)

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
