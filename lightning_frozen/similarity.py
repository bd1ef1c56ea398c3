"""Cosine similarity in the joint space: one definition for the losses, the metrics,
the model and search, so training and evaluation can never disagree on it."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["dual_softmax", "mean_consensus", "normalize", "querybank_normalize", "querybank_stats", "sim_matrix"]


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


def mean_consensus(clip_emb: Tensor, clips: int) -> Tensor:
    """One embedding per video from the embeddings of its ``clips`` clips ([B*N, d], video-major):
    the mean of their unit vectors (ClipBERT's mean consensus of the clips, for a dual encoder).

    A text's mean cosine similarity over the clips equals its dot product with this vector; the
    cosine used everywhere else divides that by the vector's norm, so each clip counts equally and
    the video stays one direction in the joint space (the loss, the metrics and a search index
    each keep one vector per video).
    """
    if clip_emb.ndim != 2 or clip_emb.shape[0] % clips:
        raise ValueError(f"mean_consensus expects [videos * {clips}, d] clip embeddings, got {tuple(clip_emb.shape)}")
    return normalize(clip_emb).view(-1, clips, clip_emb.shape[1]).mean(1)


def querybank_stats(bank_sims: Tensor, beta: float = 20.0) -> tuple[Tensor, Tensor]:
    """What QB-Norm needs of a gallery, from the similarities of a query bank to it [B, N].

    Returns ``log_norm`` [N], ``logsumexp_b(beta * s(b, g))`` (the inverted-softmax denominator
    of each gallery item), and ``activated`` [N], True for items some bank query ranks first.
    Computed once per gallery (at index time, or once per test run).
    """
    if bank_sims.ndim != 2:
        raise ValueError(f"bank_sims must be [bank, gallery], got shape {tuple(bank_sims.shape)}")
    log_norm = torch.logsumexp(beta * bank_sims, dim=0)
    activated = torch.zeros(bank_sims.shape[1], dtype=torch.bool, device=bank_sims.device)
    activated[bank_sims.argmax(dim=1)] = True
    return log_norm, activated


def querybank_normalize(sims: Tensor, log_norm: Tensor, activated: Tensor, beta: float = 20.0) -> Tensor:
    """QB-Norm with the dynamic inverted softmax (Bogolin et al., CVPR 2022) on sims [Q, N].

    A query whose best gallery item is "activated" (a hub: the top hit of some bank query)
    gets ``beta * s - log_norm``: items that answer every query lose their head start. Other
    queries keep their similarities. Ranks change; the scores are no longer cosines.
    """
    normalized = beta * sims - log_norm.unsqueeze(0)
    hubbed = activated[sims.argmax(dim=1)].unsqueeze(1)
    return torch.where(hubbed, normalized, sims)


def dual_softmax(sims: Tensor, temperature: float = 0.05, dim: int = 0) -> Tensor:
    """Dual softmax inference (Cheng et al. 2021) on sims [Q, N]: each similarity weighted by a
    softmax along ``dim``; dim 0 (over the queries) is the prior that a gallery item answers this
    query more than the other queries, for ranking the gallery per query.

    Transductive: it needs every test query at once, which real search never has.
    """
    return sims * torch.softmax(sims / temperature, dim=dim)
