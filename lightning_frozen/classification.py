"""VideoClassifier: action classification with the dual encoder's towers (the TimeSformer/ViViT recipes).

Two heads on the same ``FrozenInTime``:

* "linear": a linear layer on the video tower's CLS feature, trained on class labels. With
  ``train_blocks`` the tower is frozen (0: a linear probe), tuned in its last K blocks
  (partial fine-tuning) or tuned whole (None).
* "zero_shot": no new weights: each class name goes through a prompt ("a video of {label}")
  and the text tower, and a video's class scores are its cosine similarities to them over a
  temperature, as the dual encoder was trained to score captions. Test a retrieval checkpoint
  as it is, or fine-tune the video side against the fixed prompts.

A video read as several views (``clips_per_video`` clips, ``test_crops: 3`` crops) is scored
per view; training averages the views' logits (mean consensus), evaluation their class
probabilities. Top-1 and top-5 accuracy come from torchmetrics. The class names come from the
data (``Kinetics.labels``): every dataset of a run must list the same classes in the same order.

It reuses FrozenModule's weights, optimiser and schedule (``init_from``, AdamW with the
no-decay groups, warm-up and cosine, checkpoints that load with ``weights_only``); the text
tower is never trained here.
"""
from __future__ import annotations

from typing import Any, Literal, Optional

import torch
import torch.nn.functional as F
from pytorch_lightning.utilities import rank_zero_info
from timm.layers import trunc_normal_
from torch import Tensor, nn
from torchmetrics.classification import MulticlassAccuracy

from .models import TextConfig, VideoConfig
from .models.checkpoint import TemporalFix
from .module import FrozenModule
from .similarity import normalize
from .tokenizer import build_tokenizer

Head = Literal["linear", "zero_shot"]
_FIXED_SETTINGS = {"compile": "off", "compile_backend": "inductor", "part_lr": None}


class VideoClassifier(FrozenModule):
    """Video classification on the dual encoder's video tower (see the module docstring).

    Args:
        video, text, projection_dim: the dual encoder, as ``FrozenModule``'s (``init_from`` fills it
            from a published checkpoint, one of ours, or ViT / MAE image weights).
        num_classes: classes of the data (and outputs of the linear head).
        head: "linear" or "zero_shot".
        prompt: the zero-shot caption of a class, ``{label}`` standing for its name.
        temperature: zero-shot logits are cosine similarities divided by it.
        train_blocks: the video tower's trained part: None all of it; 0 none (a linear probe: only the
            head, or for zero_shot the video projection, trains); K its last K blocks and final norm
            (partial fine-tuning).
        label_smoothing: of the cross-entropy loss.
        lr, weight_decay, warmup_steps, schedule, init_from, temporal_fix, float32_matmul_precision:
            as ``FrozenModule``'s.
    """

    def __init__(
        self,
        video: VideoConfig = VideoConfig(),
        text: TextConfig = TextConfig(),
        projection_dim: int = 256,
        num_classes: int = 400,
        head: Head = "linear",
        prompt: str = "a video of {label}",
        temperature: float = 0.05,
        train_blocks: Optional[int] = None,
        label_smoothing: float = 0.0,
        lr: float = 1e-4,
        weight_decay: float = 0.01,
        warmup_steps: int = 0,
        schedule: Literal["constant", "cosine"] = "constant",
        init_from: Optional[str] = None,
        temporal_fix: TemporalFix = "zeros",
        float32_matmul_precision: Literal["highest", "high", "medium"] = "high",
    ):
        if head not in ("linear", "zero_shot"):
            raise ValueError(f"head must be 'linear' or 'zero_shot', got {head!r}")
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        if "{label}" not in prompt:
            raise ValueError(f"prompt {prompt!r} has no '{{label}}' for the class name")
        super().__init__(video=video, text=text, projection_dim=projection_dim, temperature=temperature, lr=lr,
                         weight_decay=weight_decay, warmup_steps=warmup_steps, schedule=schedule, init_from=init_from,
                         temporal_fix=temporal_fix, float32_matmul_precision=float32_matmul_precision)
        # FrozenModule's settings the classifier does not take (LightningCLI records only the classifier's arguments)
        for key, value in _FIXED_SETTINGS.items():
            self.hparams.setdefault(key, value)
        depth = len(self.model.video_model.blocks)
        if train_blocks is not None and not 0 <= train_blocks <= depth:
            raise ValueError(f"train_blocks must be null (the whole tower), 0 (a linear probe) or up to the "
                             f"tower's {depth} blocks, got {train_blocks}")
        self.head = nn.Linear(self.model.video_model.embed_dim, num_classes) if head == "linear" else None
        if self.head is not None:
            trunc_normal_(self.head.weight, std=0.02)
            nn.init.zeros_(self.head.bias)
        self._freeze(train_blocks)
        top5 = min(5, num_classes)
        self.eval_top1 = MulticlassAccuracy(num_classes, top_k=1, average="micro")
        self.eval_top5 = MulticlassAccuracy(num_classes, top_k=top5, average="micro")
        self.class_names: list[str] = []
        self._scored = 0
        self._class_embeddings: Optional[Tensor] = None

    # -- what trains -----------------------------------------------------------------------
    def _freeze(self, train_blocks: Optional[int]) -> None:
        tower = self.model.video_model
        if train_blocks is None:
            trained: list[nn.Module] = [tower]
        else:
            trained = [*tower.blocks[len(tower.blocks) - train_blocks:], tower.norm] if train_blocks else []
        trained.append(self.head if self.head is not None else self.model.vid_proj)
        self.model.requires_grad_(False)
        for module in trained:
            module.requires_grad_(True)

    def parameter_groups(self) -> list[dict[str, Any]]:
        """FrozenModule's groups of the trained tower parameters, and the head's (its bias without decay)."""
        groups = super().parameter_groups()
        if self.head is not None:
            lr, decay = self.hparams.lr, self.hparams.weight_decay
            groups += [{"name": "head", "params": [self.head.weight], "weight_decay": decay, "lr": lr},
                       {"name": "head/no_decay", "params": [self.head.bias], "weight_decay": 0.0, "lr": lr}]
        return groups

    def on_train_epoch_start(self) -> None:
        # Frozen parts run as at inference (no dropout): Lightning sets the whole module to train mode.
        for module in self.model.modules():
            params = list(module.parameters())
            if params and not any(p.requires_grad for p in params):
                module.eval()

    # -- data ------------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        super().setup(stage)
        self.class_names = _class_names(getattr(self.trainer, "datamodule", None)) or self.class_names
        if self.class_names and len(self.class_names) != self.hparams.num_classes:
            raise ValueError(f"the data has {len(self.class_names)} classes but model.num_classes is "
                             f"{self.hparams.num_classes}: set model.num_classes: {len(self.class_names)}")
        if self.hparams.head == "zero_shot" and not self.class_names:
            raise ValueError("head: zero_shot needs the class names: use a dataset with labels "
                             "(lightning_frozen.data.Kinetics)")

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["class_names"] = list(self.class_names)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.class_names = list(checkpoint.get("class_names", self.class_names))

    # -- scores ----------------------------------------------------------------------------
    def forward(self, video: Tensor) -> Tensor:
        """Logits [B, V, C] of clips [B, F, 3, H, W] (V = 1) or of views [B, V, F, 3, H, W]."""
        views = video.shape[1] if video.ndim == 6 else 1
        tower = self.model.video_model
        with torch.set_grad_enabled(torch.is_grad_enabled() and any(p.requires_grad for p in tower.parameters())):
            features = tower(video.flatten(0, 1) if video.ndim == 6 else video)
        if self.head is not None:
            logits = self.head(features)
        else:
            video_emb = normalize(self.model.vid_proj(features))
            logits = video_emb @ self.class_embeddings().t() / self.hparams.temperature
        return logits.view(-1, views, logits.shape[-1])

    def class_embeddings(self) -> Tensor:
        """The prompts of the class names through the (frozen) text tower, normalised: [C, P]."""
        if self._class_embeddings is None or self._class_embeddings.device != self.device:
            prompts = [self.hparams.prompt.format(label=name) for name in self.class_names]
            tokens = build_tokenizer(self.model.text_config.name_or_path)(prompts, padding=True, truncation=True,
                                                                           return_tensors="pt")
            with torch.no_grad():
                text_emb = self.model.encode_text(tokens["input_ids"].to(self.device),
                                                  tokens["attention_mask"].to(self.device))
            self._class_embeddings = normalize(text_emb)
        return self._class_embeddings

    def compute_loss(self, batch: dict[str, Any]) -> Tensor:
        """Cross-entropy of the views' mean logits (the training loss of one dataset's batch)."""
        return F.cross_entropy(self(batch["video"]).mean(1), _labels(batch, self.device),
                               label_smoothing=self.hparams.label_smoothing)

    # -- evaluation ------------------------------------------------------------------------
    def _evaluate(self, batch: dict[str, Any]) -> None:
        # An item standing in for an unreadable video (lax loading) is also read at its own position: count it once.
        keep = torch.tensor([not skipped for skipped in batch["meta"].get("skipped", [None] * len(batch["video"]))],
                            device=self.device)
        if not keep.any():
            return
        probs = self(batch["video"][keep]).softmax(-1).mean(1)
        labels = _labels(batch, self.device)[keep]
        self.eval_top1.update(probs, labels)
        self.eval_top5.update(probs, labels)
        self._scored += int(keep.sum())

    def validation_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> None:
        self._evaluate(batch)

    def test_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> None:
        self._evaluate(batch)

    def on_validation_epoch_start(self) -> None:
        self._class_embeddings = None  # the video side may have moved; prompts are re-read once per pass
        self._scored = 0

    on_test_epoch_start = on_validation_epoch_start

    def _log_accuracy(self, prefix: str) -> None:
        if self._scored == 0:
            return
        top1, top5 = 100 * float(self.eval_top1.compute()), 100 * float(self.eval_top5.compute())
        self.eval_top1.reset()
        self.eval_top5.reset()
        self.log_dict({f"{prefix}/top1": top1, f"{prefix}/top5": top5, f"{prefix}/videos_scored": float(self._scored)})
        if prefix == "test":
            rank_zero_info(f"{prefix} top-1 {top1:.2f}%  top-5 {top5:.2f}%  ({self._scored} videos, "
                           f"{len(self.class_names)} classes, chance {100 / max(1, len(self.class_names)):.1f}%)")

    def on_validation_epoch_end(self) -> None:
        self._log_accuracy("val")

    def on_test_epoch_end(self) -> None:
        self._log_accuracy("test")

    def predict_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> dict[str, Any]:
        """Class probabilities (views averaged) with the items' ids."""
        meta = batch["meta"]
        return {"ids": list(meta["id"]), "index": [int(i) for i in meta["index"]],
                "probs": self(batch["video"]).softmax(-1).mean(1).float().cpu()}


def _labels(batch: dict[str, Any], device: torch.device) -> Tensor:
    labels = batch["meta"].get("label")
    if labels is None:
        raise ValueError("the data has no class labels (meta['label']): train VideoClassifier on a labelled "
                         "dataset such as lightning_frozen.data.Kinetics")
    return torch.as_tensor(labels, device=device)


def _class_names(datamodule: Any) -> list[str]:
    """The class names every labelled dataset of the DataModule lists (one list, or an error naming both)."""
    found: list[tuple[str, list[str]]] = []
    for stage, datasets in getattr(datamodule, "datasets", {}).items():
        for dataset in datasets:
            leaf = getattr(dataset, "dataset", dataset)  # MultiClip and other Subsets
            names = list(getattr(leaf, "labels", []) or [])
            if names:
                found.append((f"{stage} {type(leaf).__name__}", names))
    for where, names in found[1:]:
        if names != found[0][1]:
            raise ValueError(f"the {where} dataset lists other classes (or another order) than the {found[0][0]} "
                             f"dataset: give every dataset the same labels file (labels: labels.txt)")
    return found[0][1] if found else []
