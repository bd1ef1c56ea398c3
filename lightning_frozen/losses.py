"""Contrastive losses for text-video retrieval, with negatives from the global batch.

The original Frozen-in-Time trained with single-process DataParallel, so every
similarity matrix spanned the whole batch. Under DDP each rank only sees its own
slice; ``global_contrastive_loss`` gathers the embeddings (with gradients) so the
loss and, after DDP's gradient averaging, the parameter gradients equal those of
one process on the full batch.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from .similarity import sim_matrix

__all__ = [
    "NormSoftmaxLoss",
    "MaxMarginRankingLoss",
    "gather_with_grad",
    "global_contrastive_loss",
    "ContrastiveLoss",
]


def _check_square(sims: Tensor, name: str) -> None:
    if sims.ndim != 2 or sims.shape[0] != sims.shape[1]:
        raise ValueError(
            f"{name} expects a square [n, n] similarity matrix (text i vs video j, "
            f"positives on the diagonal), got shape {tuple(sims.shape)}; build it with "
            "sim_matrix(text_emb, video_emb) from equally sized batches."
        )


class NormSoftmaxLoss(nn.Module):
    """Symmetric InfoNCE on a cosine-similarity matrix (the Frozen-in-Time loss).

    Text->video and video->text log-softmax at temperature ``temperature``; the
    loss is the sum of the two mean negative log-likelihoods of the diagonal.
    """

    def __init__(self, temperature: float = 0.05) -> None:
        super().__init__()
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature!r}; the paper uses 0.05.")
        self.temperature = float(temperature)

    def forward(self, sims: Tensor) -> Tensor:
        _check_square(sims, "NormSoftmaxLoss")
        i_logsm = F.log_softmax(sims / self.temperature, dim=1)
        j_logsm = F.log_softmax(sims.t() / self.temperature, dim=1)
        return -i_logsm.diagonal().mean() - j_logsm.diagonal().mean()

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}"


class MaxMarginRankingLoss(nn.Module):
    """Bidirectional hinge loss: every positive s_ii against every s_ij and s_ji.

    Term ``relu(margin - s_ii + s_ij)`` for each row negative and
    ``relu(margin - s_ii + s_ji)`` for each column negative, averaged. With
    ``fix_norm`` the diagonal pairs (which always contribute exactly ``margin``)
    are left out of the mean, as in the original CE / Frozen code.
    """

    def __init__(self, margin: float = 1.0, fix_norm: bool = True) -> None:
        super().__init__()
        self.margin = float(margin)
        self.fix_norm = bool(fix_norm)

    def forward(self, sims: Tensor) -> Tensor:
        _check_square(sims, "MaxMarginRankingLoss")
        n = sims.shape[0]
        if self.fix_norm and n < 2:
            raise ValueError(
                f"MaxMarginRankingLoss(fix_norm=True) needs at least 2 pairs to have a "
                f"negative, got n={n}; use a larger batch."
            )
        pos = sims.diagonal().unsqueeze(1)  # [n, 1]: s_ii for row i
        row = F.relu(self.margin - pos + sims)  # text i vs video j
        col = F.relu(self.margin - pos + sims.t())  # video i vs text j
        total = row.sum() + col.sum()
        if self.fix_norm:  # the mean over off-diagonal terms, without a boolean mask (a host sync)
            return (total - row.diagonal().sum() - col.diagonal().sum()) / (2 * n * (n - 1))
        return total / (2 * n * n)

    def extra_repr(self) -> str:
        return f"margin={self.margin}, fix_norm={self.fix_norm}"


def _distributed_world() -> int:
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return 1


def gather_with_grad(t: Tensor) -> Tensor:
    """All-gather ``t`` from every rank, concatenated on dim 0 in rank order.

    Uses ``torch.distributed.nn.functional.all_gather`` so gradients flow back:
    its backward sums the gradients of all ranks into each rank's slice. All
    ranks must pass the same shape: training loaders drop the last partial batch
    and DistributedSampler evens out the ranks. Identity when not distributed or
    with a single process. No extra collective or host sync on the hot path.
    """
    if _distributed_world() == 1:
        return t
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(t), dim=0)


def global_contrastive_loss(
    text_emb: Tensor, video_emb: Tensor, loss_fn: Callable[[Tensor], Tensor]
) -> Tensor:
    """Gather both embeddings over ranks and apply ``loss_fn`` to their cosine sims.

    With DDP's gradient averaging, N ranks of local batch b give the same loss and
    parameter gradients as one process with batch N*b: the gather's backward sums N
    identical copies of dL/d(local emb), and DDP divides by N.
    """
    if text_emb.ndim != 2 or video_emb.ndim != 2 or text_emb.shape != video_emb.shape:
        raise ValueError(
            f"global_contrastive_loss expects paired [b, d] text and video embeddings of "
            f"the same shape, got {tuple(text_emb.shape)} and {tuple(video_emb.shape)}; "
            "row i of each must be the same sample."
        )
    sims = sim_matrix(gather_with_grad(text_emb), gather_with_grad(video_emb))
    return loss_fn(sims)


class ContrastiveLoss(nn.Module):
    """Module form of ``global_contrastive_loss`` wrapping a similarity-matrix loss."""

    def __init__(self, loss: nn.Module | None = None) -> None:
        super().__init__()
        self.loss = loss if loss is not None else NormSoftmaxLoss()

    def forward(self, text_emb: Tensor, video_emb: Tensor) -> Tensor:
        return global_contrastive_loss(text_emb, video_emb, self.loss)
