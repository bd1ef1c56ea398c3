"""Cosine similarity in the joint space: one definition for the losses, the metrics,
the model and search, so training and evaluation can never disagree on it."""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

__all__ = ["normalize", "sim_matrix"]


def normalize(x: Tensor, eps: float = 1e-8) -> Tensor:
    """L2-normalise the rows of ``x``; an all-zero row stays zero instead of turning NaN."""
    return F.normalize(x, dim=-1, eps=eps)


def sim_matrix(a: Tensor, b: Tensor, eps: float = 1e-8) -> Tensor:
    """Cosine similarity of every row of ``a`` [n, d] with every row of ``b`` [m, d].

    Norms are clamped at ``eps`` so an all-zero row gives similarity 0, not NaN.
    """
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(
            f"sim_matrix expects two 2-D tensors [n, d] and [m, d] with the same d, got "
            f"{tuple(a.shape)} and {tuple(b.shape)}; flatten extra dims first."
        )
    return normalize(a, eps) @ normalize(b, eps).t()
