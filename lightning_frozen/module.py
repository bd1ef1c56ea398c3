"""FrozenModule: training, evaluation and embedding export around the FrozenInTime dual encoder."""
from __future__ import annotations

import functools
import math
from typing import Any, Callable, Literal, Optional, Union

import pytorch_lightning as pl
import torch
from pytorch_lightning.trainer.states import TrainerFn
from pytorch_lightning.utilities import rank_zero_info
from torch import Tensor, nn

from .data.collate import named_batches
from .losses import MaxMarginRankingLoss, NormSoftmaxLoss, global_contrastive_loss
from .metrics import RetrievalMetrics, format_metrics_table
from .models import TextConfig, VideoConfig, create_model, load_checkpoint, load_pretrained_towers
from .models.checkpoint import TemporalFix
from .models.clip import check_clip_tokenizer
from .models.config import DictConfig
from .models.frozen import PARTS, part_of
from .similarity import mean_consensus

# Parameters without weight decay: norms and biases (1-D) and learned embeddings.
_NO_DECAY_NAMES = ("pos_embed", "cls_token", "temporal_embed", "_embeddings.")


class FrozenModule(pl.LightningModule):
    """Contrastive video-text training (joint image + video), retrieval validation, embedding export.

    With ``video.reuse.mode: learned`` the fit trains the reuse decisions alone (the towers are
    frozen): the video embeddings computed with reuse are held close to the exact ones at the
    target reuse rate, and validation scores retrieval with reuse on.

    Args:
        video: video tower settings (arch, frames, time_init, ...).
        text: text tower settings (Hugging Face model id or local directory).
        projection_dim: size of the joint embedding space.
        loss: "norm_softmax" (InfoNCE, the published recipe) or "max_margin".
        temperature: NormSoftmax temperature.
        margin: MaxMargin margin.
        lr: peak learning rate of AdamW.
        part_lr: peak learning rates of parts of the model that should not learn at `lr`, by part:
            "video" (the video tower's image parameters), "temporal" (what models time: time
            attention, the temporal embedding, a temporal transformer), "text" (the text tower),
            "projections" (into the joint space), "reuse" (a learned reuse's decisions). A pretrained
            text tower next to a video tower trained from scratch wants a smaller one ({text: 5e-5}),
            or it forgets what its words mean before the video side learns; CLIP4Clip fine-tunes
            CLIP's own parameters at 1e-7 and the new temporal ones at 1e-4.
        weight_decay: AdamW weight decay (not applied to norms, biases and embeddings).
        warmup_steps: linear warm-up steps.
        schedule: "constant" after warm-up, or "cosine" decay to 0 over the run.
        init_from: weights to start from (published .pth.tar, this project's .ckpt or a state dict);
            the temporal embedding is inflated or cut to video.num_frames. Without it, the towers'
            pretrained weights are loaded (``text.pretrained``, ``video.pretrained``). Either is read
            in ``configure_model``, never when a checkpoint (``ckpt_path``) provides the weights.
        temporal_fix: how init_from inflates the temporal embedding: "zeros", "interp", "bilinear".
        test_dual_softmax: a temperature turns on dual softmax for ``test`` (transductive: it sees
            every test caption at once), reported beside the plain metrics as ``test/dsl_*``.
        test_average_clips: average the video embeddings of test items that share a video (the
            original multi-clip protocol, with ``lightning_frozen.data.multiclip.MultiClip``).
        compile: run the model through ``torch.compile`` ("default" or "max-autotune" mode) with static
            shapes; each new shape (a stage's frame count, evaluation, a short last batch) compiles once,
            and the frame curriculum starts afresh at every stage. "off": eager.
        compile_backend: torch.compile backend ("inductor"; "aot_eager" compiles fast, for debugging).
        float32_matmul_precision: ``torch.set_float32_matmul_precision`` for training steps on CUDA
            ("high": TF32 matmuls for fp32 training); evaluation and prediction keep the process's own
            setting (exact fp32 unless set otherwise). Ignored off CUDA.
    """

    def __init__(
        self,
        video: VideoConfig = VideoConfig(),
        text: TextConfig = TextConfig(),
        projection_dim: int = 256,
        loss: Literal["norm_softmax", "max_margin"] = "norm_softmax",
        temperature: float = 0.05,
        margin: float = 0.2,
        lr: float = 1e-4,
        part_lr: Optional[dict[str, float]] = None,
        weight_decay: float = 0.01,
        warmup_steps: int = 0,
        schedule: Literal["constant", "cosine"] = "constant",
        init_from: Optional[str] = None,
        temporal_fix: TemporalFix = "zeros",
        test_dual_softmax: Optional[float] = None,
        test_average_clips: bool = False,
        compile: Literal["off", "default", "max-autotune"] = "off",
        compile_backend: str = "inductor",
        float32_matmul_precision: Literal["highest", "high", "medium"] = "high",
    ):
        super().__init__()
        unknown = sorted(set(part_lr or {}) - set(PARTS))
        if unknown:
            raise ValueError(f"model.part_lr: unknown parts {unknown}; parts: {list(PARTS)}")
        self.save_hyperparameters()
        self.model = create_model({"video": video, "text": text, "projection_dim": projection_dim}, pretrained=False)
        self.trains_reuse = self.model.video_config.reuse.mode == "learned"
        if self.trains_reuse:  # the towers stay as they are: only the reuse decisions learn
            for name, param in self.model.named_parameters():
                param.requires_grad_(part_of(name) == "reuse")
        self.loss_fn: nn.Module = (NormSoftmaxLoss(temperature) if loss == "norm_softmax"
                                   else MaxMarginRankingLoss(margin))
        self.val_metrics = RetrievalMetrics()
        self.test_metrics = RetrievalMetrics(dual_softmax=test_dual_softmax,
                                             repeats="mean" if test_average_clips else "first")
        self._initial_weights_ready = False
        self._cached_total_steps: Optional[int] = None
        self._compiled: Optional[Callable[..., tuple[Tensor, Tensor]]] = None
        self._eval_precision: Optional[str] = None

    # -- weights ---------------------------------------------------------------------------
    def weights_from_checkpoint(self) -> None:
        """The run restores a checkpoint (``ckpt_path``): skip ``init_from`` and pretrained towers."""
        self._initial_weights_ready = True

    def configure_model(self) -> None:
        # Runs before Lightning restores a ckpt_path, once per module (fit, then test, keeps the weights).
        if self._initial_weights_ready:
            return
        if self.hparams.init_from:
            # a learned reuse starts from a model without decisions: they are what this fit trains
            report = load_checkpoint(self.model, self.hparams.init_from, self.hparams.temporal_fix,
                                     allowed_missing=("reuse.",) if self.trains_reuse else ())
            for line in report.adapted:
                rank_zero_info(f"init_from: adapted {line}")
        else:
            load_pretrained_towers(self.model)
        self._initial_weights_ready = True

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Plain dicts instead of config dataclasses: the file then loads with weights_only=True.
        hparams = checkpoint.get("hyper_parameters", {})
        for key in ("video", "text"):
            if isinstance(hparams.get(key), DictConfig):
                hparams[key] = hparams[key].to_dict()

    def setup(self, stage: str) -> None:
        """Check the data against the model before the first step (lengths, frames, shapes)."""
        datamodule = getattr(self.trainer, "datamodule", None)
        check_data_fits_model(self, datamodule)
        if self.hparams.compile != "off" and getattr(datamodule, "padding", "max_length") != "max_length":
            # compiled for static shapes: a new caption length per batch would compile again and again
            raise ValueError(
                f"model.compile: {self.hparams.compile} compiles for static shapes, but data.padding is "
                f"{datamodule.padding!r}: caption lengths then change from batch to batch and every new length "
                "compiles again. Set data.padding: max_length (captions padded to data.max_length).")

    # -- training --------------------------------------------------------------------------
    def compute_loss(self, batch: dict[str, Any]) -> Tensor:
        """Contrastive loss of one dataset's batch over the global (all-rank) batch."""
        return global_contrastive_loss(*self.embed_pairs(batch), self.loss_fn)

    def dataset_losses(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        """Loss per training dataset of a single or joint (name -> batch) step."""
        # None: a shorter dataset under CombinedLoader's min_size/sequential modes
        return {name: self.compute_loss(one) for name, one in named_batches(batch).items() if one is not None}

    def training_loss(self, batch: dict[str, Any]) -> Tensor:
        """The summed loss of a step, without logging (IPUStrategy runs this on the device)."""
        return sum(self.dataset_losses(batch).values())

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        if self.trains_reuse:
            return self.reuse_training_step(batch)
        losses = self.dataset_losses(batch)
        sizes = {name: len(b["video"]) for name, b in named_batches(batch).items() if b is not None}
        if len(losses) > 1:
            for name, loss in losses.items():
                self.log(f"train/loss_{name}", loss, batch_size=sizes[name])
        total = sum(losses.values())
        self.log("train/loss", total, prog_bar=True, batch_size=sum(sizes.values()))
        return total

    def reuse_training_step(self, batch: dict[str, Any]) -> Tensor:
        """A learned reuse's step: the video embeddings with reuse against the exact ones (no text)."""
        videos = [one["video"] for one in named_batches(batch).values() if one is not None]
        total, cosine, rate = 0.0, 0.0, 0.0
        for video in videos:
            loss, stats = self.model.reuse.distillation_loss(self.model.encode_video, video)
            total, cosine, rate = total + loss, cosine + stats["cosine"], rate + stats["rate"]
        size = sum(len(v) for v in videos)
        self.log("train/loss", total, prog_bar=True, batch_size=size)
        self.log("train/reuse_cosine", cosine / len(videos), batch_size=size)
        self.log("train/reuse_probability", rate / len(videos), batch_size=size)
        return total

    def on_train_epoch_end(self) -> None:
        datamodule = getattr(self.trainer, "datamodule", None)
        if datamodule is not None and hasattr(datamodule, "skipped_counts"):
            for name, count in datamodule.skipped_counts().items():
                self.log(f"data/skipped_{name}", float(count), sync_dist=True, reduce_fx="sum")

    # -- evaluation ------------------------------------------------------------------------
    def forward(self, video: Tensor, input_ids: Tensor, attention_mask: Tensor) -> tuple[Tensor, Tensor]:
        """(text embeddings, video embeddings); under IPUStrategy, evaluation steps run this on the device."""
        return self._run_model()(video, input_ids, attention_mask)

    def embed_pairs(self, batch: dict[str, Any]) -> tuple[Tensor, Tensor]:
        """(text embeddings, video embeddings) of a batch.

        Several clips a video (``[B, N, F, 3, H, W]``: ``clips_per_video``, or test crops) are
        encoded one by one and their embeddings combined by ``mean_consensus`` into the video's.
        """
        video = batch["video"]
        if video.ndim == 5:
            return self(video, batch["input_ids"], batch["attention_mask"])
        text_emb, clip_emb = self(video.flatten(0, 1), batch["input_ids"], batch["attention_mask"])
        return text_emb, mean_consensus(clip_emb, video.shape[1])

    def update_retrieval(self, stage: str, batch: dict[str, Any], text_emb: Tensor, video_emb: Tensor) -> None:
        """Add a batch's embeddings to the stage's retrieval metric (k captions per video allowed)."""
        mask = batch.get("caption_mask")
        if mask is not None:  # each video's captions consecutive
            text_emb = text_emb.reshape(video_emb.shape[0], mask.shape[1], -1)
        ids = torch.as_tensor(batch["meta"]["index"], device=video_emb.device)
        metric = self.val_metrics if stage == "val" else self.test_metrics
        metric.update(text_emb, video_emb, ids, mask)

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self.update_retrieval("val", batch, *self.embed_pairs(batch))

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self.update_retrieval("test", batch, *self.embed_pairs(batch))

    def _log_retrieval(self, metric: RetrievalMetrics, prefix: str) -> None:
        values = metric.compute()
        metric.reset()
        videos, captions = metric.scored
        total_videos, total_captions = _evaluation_totals(self.trainer, prefix)
        counts = {"videos_scored": videos, "videos_total": total_videos,
                  "captions_scored": captions, "captions_total": total_captions}
        for key, value in {**values, **counts}.items():
            self.log(f"{prefix}/{key}", float(value), sync_dist=False, rank_zero_only=False)
        if self.trainer.state.fn in (TrainerFn.VALIDATING, TrainerFn.TESTING):
            rank_zero_info("\n" + format_metrics_table(values, prefix) + f"\nscored {videos} of {total_videos} "
                           f"videos and {captions} of {total_captions} captions"
                           + ("" if videos == total_videos else " (the rest unreadable or beyond limit_*_batches)"))

    def on_validation_epoch_start(self) -> None:
        self.model.reuse.reset_counts()

    def on_test_epoch_start(self) -> None:
        self.model.reuse.reset_counts()

    def _log_reuse(self, prefix: str) -> None:
        """The share of token computations that reuse skipped in this evaluation (with ``video.reuse``)."""
        if self.model.reuse.total:
            self.log(f"{prefix}/reuse_rate", self.model.reuse.rate(), sync_dist=True)
            self.model.reuse.reset_counts()

    def on_validation_epoch_end(self) -> None:
        self._log_retrieval(self.val_metrics, "val")
        self._log_reuse("val")

    def on_test_epoch_end(self) -> None:
        self._log_retrieval(self.test_metrics, "test")
        self._log_reuse("test")

    def predict_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> dict[str, Any]:
        if "input_ids" not in batch:  # video-only items (a folder to search): no captions to embed
            return self.predictions(batch, None, self.embed_windows(batch))
        return self.predictions(batch, *self.embed_pairs(batch))

    def embed_windows(self, batch: dict[str, Any]) -> Tensor:
        """Video embeddings of video-only items.

        Windows of a search index name the video frames their clip holds (``meta["frames"]``):
        overlapping windows share frames, so a per-frame video tower encodes each distinct frame
        of the batch once (``FrozenInTime.encode_windows``) and pools each window's frames, as
        ``encode_video`` of each clip would. The space-time tower encodes clips as they come.
        """
        video, meta = batch["video"], batch["meta"]
        frames = meta.get("frames")
        if self.model.temporal is None or frames is None or any(f is None for f in frames) or video.ndim != 5:
            return self.model.encode_video(video)
        first: dict[tuple[Any, int], int] = {}  # (video, frame number) -> its first row in the flattened clips
        rows = [[first.setdefault((path, number), b * video.shape[1] + j) for j, number in enumerate(window)]
                for b, (path, window) in enumerate(zip(meta["path"], frames))]
        distinct = sorted(set(first.values()))
        position = {row: i for i, row in enumerate(distinct)}
        window_frames = torch.tensor([[position[row] for row in window] for window in rows], device=video.device)
        return self.model.encode_windows(video.flatten(0, 1)[distinct], window_frames, batch_size=len(distinct))

    @staticmethod
    def predictions(batch: dict[str, Any], text_emb: Optional[Tensor], video_emb: Tensor) -> dict[str, Any]:
        """Video and caption embeddings (L2-normalised; ``text`` None for video-only items) with their ids.

        ``index`` (each item's position) lets the writer keep one row per video when lax
        loading handed a replacement for an unreadable one; ``skipped`` lists those.
        """
        meta = batch["meta"]
        return {
            "ids": list(meta["id"]),
            "paths": list(meta["path"]),
            "index": [int(i) for i in meta["index"]],
            "skipped": [path for paths in meta.get("skipped", []) if paths for path in paths],
            "video": nn.functional.normalize(video_emb.float(), dim=-1).cpu(),
            "text": None if text_emb is None else nn.functional.normalize(text_emb.float(), dim=-1).cpu(),
        }

    # -- speed -----------------------------------------------------------------------------
    def _run_model(self) -> Callable[..., tuple[Tensor, Tensor]]:
        """The model, or its compiled forward (built on first use; outside the module tree, so
        checkpoints keep their keys)."""
        if self.hparams.compile == "off":
            return self.model
        if self._compiled is None:
            mode = None if self.hparams.compile == "default" else self.hparams.compile
            self._compiled = torch.compile(self.model.forward, dynamic=False, mode=mode,
                                           backend=self.hparams.compile_backend)
        return self._compiled

    def reset_compiled(self) -> None:
        """Drop the compiled graphs (FrameCurriculum calls this when a stage changes the frame count),
        so that a run of many stages never reaches torch.compile's recompile limit."""
        if self._compiled is not None:
            self._compiled = None
            torch.compiler.reset()

    def _training_precision(self, on: bool) -> None:
        """`float32_matmul_precision` while training steps run on CUDA; the process's own otherwise."""
        if self.device.type != "cuda":
            return
        if on:
            if self._eval_precision is None:
                self._eval_precision = torch.get_float32_matmul_precision()
            torch.set_float32_matmul_precision(self.hparams.float32_matmul_precision)
        elif self._eval_precision is not None:
            torch.set_float32_matmul_precision(self._eval_precision)
            self._eval_precision = None

    def on_train_start(self) -> None:
        self._training_precision(True)

    def on_validation_start(self) -> None:
        self._training_precision(False)

    def on_validation_end(self) -> None:
        if self.trainer.state.fn == TrainerFn.FITTING and not self.trainer.sanity_checking:
            self._training_precision(True)

    def on_train_end(self) -> None:
        self._training_precision(False)

    # -- optimisation ----------------------------------------------------------------------
    def parameter_groups(self) -> list[dict[str, Any]]:
        """AdamW groups, named for the learning-rate monitor and the curves: the parts (``part_of``) that
        share a learning rate ("all" when every part does), each as decay and "/no_decay"."""
        rates = {part: (self.hparams.part_lr or {}).get(part, self.hparams.lr) for part in PARTS}
        groups: dict[tuple[float, bool], list[nn.Parameter]] = {}
        parts_at: dict[float, set[str]] = {}
        for name, param in self.model.named_parameters():
            if not param.requires_grad:
                continue
            part = part_of(name)
            no_decay = param.ndim <= 1 or any(key in name for key in _NO_DECAY_NAMES)
            groups.setdefault((rates[part], no_decay), []).append(param)
            parts_at.setdefault(rates[part], set()).add(part)
        present = set().union(*parts_at.values())
        out = []
        for rate, parts in parts_at.items():
            label = "all" if parts == present else "+".join(p for p in PARTS if p in parts)
            for no_decay in (False, True):
                if (rate, no_decay) in groups:
                    out.append({"name": f"{label}/no_decay" if no_decay else label, "params": groups[(rate, no_decay)],
                                "weight_decay": 0.0 if no_decay else self.hparams.weight_decay, "lr": rate})
        return out

    def lr_factor(self, step: int, total_steps: Union[int, Callable[[], int]]) -> float:
        """Multiplier of the peak learning rate at `step` (`total_steps` is only read by the cosine decay)."""
        warmup = self.hparams.warmup_steps
        if step < warmup:
            return (step + 1) / warmup
        if self.hparams.schedule == "constant" or step == warmup:
            return 1.0
        total = total_steps() if callable(total_steps) else total_steps
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    def configure_optimizers(self) -> dict[str, Any]:
        # fused: one kernel for all parameters on CUDA instead of several per tensor
        optimizer = torch.optim.AdamW(self.parameter_groups(), lr=self.hparams.lr, fused=self.device.type == "cuda")
        self._cached_total_steps = None  # this fit's (see _total_steps)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, functools.partial(self.lr_factor,
                                                                                   total_steps=self._total_steps))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def _total_steps(self) -> int:
        # Read on the first step that needs it, not in configure_optimizers: asking earlier makes
        # Lightning start the train loader before a resumed run is restored and before the frame
        # curriculum has set the epoch count and the stage's frame count.
        if self._cached_total_steps is None:
            self._cached_total_steps = int(self.trainer.estimated_stepping_batches) if self._trainer else 1
        return self._cached_total_steps


def _evaluation_totals(trainer: Any, prefix: str) -> tuple[int, int]:
    """(videos, captions) of the evaluation datasets that a full pass would score.

    A dataset of several items per video (``MultiClip``) says how many videos it holds (``num_videos``).
    """
    datasets = getattr(getattr(trainer, "datamodule", None), "datasets", {}).get(prefix, [])
    return (sum(int(getattr(d, "num_videos", len(d))) for d in datasets),
            sum(int(getattr(d, "num_captions", len(d))) for d in datasets))


def check_data_fits_model(module: FrozenModule, datamodule: Any) -> None:
    """Settings of data and model that only fail together, checked before the first step."""
    if datamodule is None:
        return
    if module.model.text_config.tower == "clip" and getattr(datamodule, "tokenizer_name", None):
        check_clip_tokenizer(module.model.text_model.config, datamodule.tokenizer, datamodule.tokenizer_name)
    positions = getattr(module.model.text_model.config, "max_position_embeddings", None)
    max_length = getattr(datamodule, "max_length", None)
    if positions and max_length and max_length > positions:
        raise ValueError(f"data.max_length is {max_length} but the text model "
                         f"({module.model.text_config.name_or_path}) has {positions} positions: "
                         f"set data.max_length <= {positions}")
    rows = module.model.video_model.num_frames
    run_state = getattr(datamodule, "run_state", None)
    if run_state is None or run_state.schedule is not None:
        return  # a frame curriculum schedules the frames per clip (and checks its stages against the model)
    if run_state.num_frames > rows:
        raise ValueError(f"the data reads {run_state.num_frames} frames per clip but model.video.num_frames is {rows}: "
                         f"set data.num_frames <= {rows} (the CLI takes it from model.video.num_frames)")
