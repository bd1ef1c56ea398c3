"""Text-video retrieval metrics (recall@K, median / mean rank) as in Frozen-in-Time.

Similarity matrices are [n*k, n]: row = text query, column = video, with the k
captions of video j in rows j*k .. j*k+k-1. Ties are broken optimistically: a
rank is 1 + the number of candidates with strictly greater similarity (the
original code does so for text->video; we do it in both directions so a
result never depends on sort stability).
"""
from __future__ import annotations

from typing import Any, Literal, Optional, Union

import numpy as np
import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from .similarity import dual_softmax, sim_matrix

__all__ = [
    "t2v_metrics",
    "v2t_metrics",
    "retrieval_metrics",
    "ranks_to_metrics",
    "t2v_ranks",
    "v2t_ranks",
    "RetrievalMetrics",
    "format_metrics_table",
]

ArrayLike = Union[Tensor, np.ndarray]
METRIC_KEYS = ("R1", "R5", "R10", "R50", "MedR", "MeanR", "gmean")


def _prepare(sims: ArrayLike, query_masks: Optional[ArrayLike]) -> tuple[Tensor, Tensor, int]:
    """Validate shapes and return (sims [n*k, n], valid [n*k] bool, k)."""
    sims_t = torch.as_tensor(sims)
    if sims_t.ndim != 2:
        raise ValueError(f"sims must be a 2-D [n*k, n] matrix, got shape {tuple(sims_t.shape)}.")
    num_queries, num_videos = sims_t.shape
    if num_videos == 0 or num_queries == 0 or num_queries % num_videos != 0:
        raise ValueError(
            f"sims has {num_queries} rows (text queries) and {num_videos} columns (videos); "
            "rows must be a non-zero multiple k of columns, with the k captions of video j "
            "in rows j*k .. j*k+k-1. Pad missing captions and mark them in query_masks."
        )
    k = num_queries // num_videos
    if not sims_t.is_floating_point():
        sims_t = sims_t.float()
    if query_masks is None:
        valid = torch.ones(num_queries, dtype=torch.bool, device=sims_t.device)
    else:
        mask = torch.as_tensor(query_masks, device=sims_t.device)
        if mask.is_floating_point():
            raise ValueError(f"query_masks must be bool (or 0/1 integers), got dtype {mask.dtype}.")
        if tuple(mask.shape) not in ((num_queries,), (num_videos, k)):
            raise ValueError(
                f"query_masks shape {tuple(mask.shape)} does not fit sims {tuple(sims_t.shape)}: "
                f"expected ({num_queries},) or ({num_videos}, {k})."
            )
        valid = mask.reshape(-1).bool()
    if not bool(valid.any()):
        raise ValueError("query_masks marks every caption as missing; nothing to evaluate.")
    if bool(torch.isnan(sims_t[valid]).any()):
        raise ValueError(
            "sims contains NaN for valid queries; check the embeddings (a zero vector "
            "normalised without eps gives NaN)."
        )
    return sims_t, valid, k


def ranks_to_metrics(ranks: ArrayLike) -> dict[str, float]:
    """Recall@{1,5,10,50} in percent, median / mean rank, and gmean of R1, R5, R10.

    ``ranks`` are 1-based; the median of an even count averages the middle two.
    """
    r = torch.as_tensor(ranks, dtype=torch.float64).reshape(-1).cpu()
    if r.numel() == 0:
        raise ValueError("ranks_to_metrics got no ranks; nothing to evaluate.")
    out = {f"R{t}": 100.0 * float((r <= t).double().mean()) for t in (1, 5, 10, 50)}
    out["MedR"] = float(np.median(r.numpy()))
    out["MeanR"] = float(r.mean())
    out["gmean"] = float((out["R1"] * out["R5"] * out["R10"]) ** (1.0 / 3.0))
    return out


def t2v_ranks(sims: ArrayLike, query_masks: Optional[ArrayLike] = None) -> Tensor:
    """1-based rank of each valid query's own video among all n videos (optimistic ties)."""
    s, valid, k = _prepare(sims, query_masks)
    own_video = torch.arange(s.shape[0], device=s.device) // k
    gt = s.gather(1, own_video.unsqueeze(1))  # [n*k, 1]
    ranks = 1 + (s > gt).sum(dim=1)
    return ranks[valid]


def v2t_ranks(sims: ArrayLike, query_masks: Optional[ArrayLike] = None) -> Tensor:
    """Per video, the best 1-based rank of its valid captions among all valid queries.

    Rank is monotone in similarity, so the best rank is the rank of the own caption
    with the highest similarity. Videos whose captions are all masked are dropped.
    """
    s, valid, k = _prepare(sims, query_masks)
    n = s.shape[1]
    cols = s.t()  # [n, n*k]: video -> every query
    own = cols.reshape(n, n, k).diagonal(dim1=0, dim2=1).t()  # [n, k]: s[j*k + c, j]
    own_valid = valid.reshape(n, k)
    neg_inf = torch.tensor(float("-inf"), dtype=own.dtype, device=own.device)
    best = torch.where(own_valid, own, neg_inf).max(dim=1).values  # [n]
    beats = (cols > best.unsqueeze(1)) & valid.unsqueeze(0)
    ranks = 1 + beats.sum(dim=1)
    return ranks[own_valid.any(dim=1)]


def t2v_metrics(sims: ArrayLike, query_masks: Optional[ArrayLike] = None) -> dict[str, float]:
    """Text->video retrieval metrics over the valid queries of ``sims`` [n*k, n].

    Masked queries are dropped. Ties are optimistic: rank = 1 + number of videos
    with strictly greater similarity than the query's own video.
    """
    return ranks_to_metrics(t2v_ranks(sims, query_masks))


def v2t_metrics(sims: ArrayLike, query_masks: Optional[ArrayLike] = None) -> dict[str, float]:
    """Video->text retrieval metrics: each video ranks all valid queries (n*k).

    A video's rank is the best (smallest) rank of its own valid captions; masked
    captions cannot be retrieved. Ties are optimistic: rank = 1 + number of valid
    queries with strictly greater similarity.
    """
    return ranks_to_metrics(v2t_ranks(sims, query_masks))


def retrieval_metrics(sims: ArrayLike, query_masks: Optional[ArrayLike] = None) -> dict[str, float]:
    """Both directions in one flat dict: ``t2v_R1`` .. ``t2v_gmean``, ``v2t_R1`` ..."""
    out = {f"t2v_{key}": v for key, v in t2v_metrics(sims, query_masks).items()}
    out.update({f"v2t_{key}": v for key, v in v2t_metrics(sims, query_masks).items()})
    return out


class RetrievalMetrics(Metric):
    """Accumulates paired text / video embeddings and reports retrieval metrics.

    States are "cat" lists, so under DDP every rank computes over the union of all
    ranks' samples. DistributedSampler pads the last batch by repeating samples;
    pass ``video_ids`` to drop those repeats (first occurrence kept). With ids the
    samples are also sorted by id, so the result never depends on rank order.
    ``repeats="mean"`` averages the video embeddings of samples that share an id instead
    (several clips of one video: ``MultiClip``, the original multi-clip test protocol), and
    ``dual_softmax`` (a temperature) adds ``dsl_*`` metrics (transductive).
    """

    full_state_update = False
    is_differentiable = False
    higher_is_better = True

    def __init__(self, eps: float = 1e-8, dual_softmax: Optional[float] = None,
                 repeats: Literal["first", "mean"] = "first", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if repeats not in ("first", "mean"):
            raise ValueError(f"repeats must be 'first' or 'mean', got {repeats!r}")
        self.eps = eps
        self.dual_softmax = dual_softmax
        self.repeats = repeats
        self.add_state("text", default=[], dist_reduce_fx="cat")
        self.add_state("video", default=[], dist_reduce_fx="cat")
        self.add_state("mask", default=[], dist_reduce_fx="cat")
        self.add_state("ids", default=[], dist_reduce_fx="cat")
        self._k: Optional[int] = None
        self._with_ids: Optional[bool] = None
        self.scored: tuple[int, int] = (0, 0)

    def update(
        self,
        text_emb: Tensor,
        video_emb: Tensor,
        video_ids: Optional[Tensor] = None,
        query_mask: Optional[Tensor] = None,
    ) -> None:
        """Add a batch: text [B, P] or [B, k, P], video [B, P], ids [B], mask [B, k]."""
        if text_emb.ndim == 2:
            text_emb = text_emb.unsqueeze(1)
        if text_emb.ndim != 3 or video_emb.ndim != 2:
            raise ValueError(
                f"expected text_emb [B, P] or [B, k, P] and video_emb [B, P], got "
                f"{tuple(text_emb.shape)} and {tuple(video_emb.shape)}."
            )
        b, k, p = text_emb.shape
        if video_emb.shape != (b, p):
            raise ValueError(
                f"video_emb shape {tuple(video_emb.shape)} does not pair with text_emb "
                f"{tuple(text_emb.shape)}: expected ({b}, {p})."
            )
        if self._k is not None and k != self._k:
            raise ValueError(
                f"captions per video changed from {self._k} to {k} between updates; pad "
                "to a fixed k and mark the padding in query_mask."
            )
        if query_mask is None:
            query_mask = torch.ones(b, k, dtype=torch.bool, device=text_emb.device)
        elif tuple(query_mask.shape) not in ((b, k), (b * k,)) or query_mask.is_floating_point():
            raise ValueError(
                f"query_mask must be a bool tensor of shape ({b}, {k}), got "
                f"{tuple(query_mask.shape)} {query_mask.dtype}."
            )
        with_ids = video_ids is not None
        if self._with_ids is not None and with_ids != self._with_ids:
            raise ValueError("pass video_ids to every update() or to none of them.")
        if with_ids:
            video_ids = torch.as_tensor(video_ids, device=text_emb.device).reshape(-1)
            if video_ids.numel() != b or video_ids.is_floating_point():
                raise ValueError(
                    f"video_ids must be {b} integers (one per video), got shape "
                    f"{tuple(video_ids.shape)} {video_ids.dtype}."
                )
            self.ids.append(video_ids.long())
        self._k, self._with_ids = k, with_ids
        self.text.append(text_emb.detach())
        self.video.append(video_emb.detach())
        self.mask.append(query_mask.detach().reshape(b, k).bool())

    def reset(self) -> None:
        super().reset()
        self._k = None
        self._with_ids = None

    def _gathered(self) -> tuple[Tensor, Tensor, Tensor]:
        if isinstance(self.text, list) and not self.text:
            raise ValueError("RetrievalMetrics.compute() called before any update().")
        text = dim_zero_cat(self.text).float()
        video = dim_zero_cat(self.video).float()
        mask = dim_zero_cat(self.mask).bool()
        has_ids = not (isinstance(self.ids, list) and not self.ids)
        if has_ids:
            ids = dim_zero_cat(self.ids)
            if ids.numel() != video.shape[0]:
                raise ValueError(
                    f"{ids.numel()} video_ids for {video.shape[0]} videos: pass video_ids "
                    "on every rank and every update(), or on none."
                )
            keep = _first_occurrence_sorted(ids)
            video = _mean_per_id(ids, video) if self.repeats == "mean" else video[keep]
            text, mask = text[keep], mask[keep]
        return text, video, mask

    def compute(self) -> dict[str, float]:
        text, video, mask = self._gathered()
        n, k, p = text.shape
        self.scored = (n, int(mask.sum()))  # (videos, captions) this compute() scored, all ranks
        sims, valid = sim_matrix(text.reshape(n * k, p), video, self.eps), mask.reshape(-1)
        out = retrieval_metrics(sims, valid)
        if self.dual_softmax is not None:
            out.update(dual_softmax_metrics(sims, valid, self.dual_softmax))
        return out


def _mean_per_id(ids: Tensor, video: Tensor) -> Tensor:
    """Video embeddings averaged over the samples of each id, ordered by id.

    Several clips of one video (``MultiClip``, the original code's sliding-window test) are
    averaged; padding repeats (DistributedSampler) are copies, so their mean is the sample itself.
    """
    uniq, inverse = torch.unique(ids, sorted=True, return_inverse=True)
    sums = video.new_zeros(uniq.numel(), video.shape[1]).index_add_(0, inverse, video)
    counts = torch.bincount(inverse, minlength=uniq.numel()).to(video.dtype).unsqueeze(1)
    return sums / counts


def _first_occurrence_sorted(ids: Tensor) -> Tensor:
    """Indices of the first occurrence of each distinct id, ordered by id."""
    uniq, inverse = torch.unique(ids, sorted=True, return_inverse=True)
    positions = torch.arange(ids.numel(), device=ids.device)
    first = torch.full((uniq.numel(),), ids.numel(), dtype=torch.long, device=ids.device)
    return first.scatter_reduce(0, inverse, positions, reduce="amin")


def dual_softmax_metrics(sims: Tensor, valid: Tensor, temperature: float) -> dict[str, float]:
    """``dsl_t2v_*`` and ``dsl_v2t_*``: retrieval after dual softmax (transductive: it uses every
    test query at once). t2v weighs each video's column by a softmax over the captions, v2t each
    caption's row by a softmax over the videos; padded captions take no part."""
    sims = sims.masked_fill(~valid.unsqueeze(1), -1e4)
    out = {f"dsl_t2v_{key}": v for key, v in t2v_metrics(dual_softmax(sims, temperature, dim=0), valid).items()}
    out.update({f"dsl_v2t_{key}": v for key, v in v2t_metrics(dual_softmax(sims, temperature, dim=1), valid).items()})
    return out


def format_metrics_table(metrics: dict[str, Any], prefix: str = "test") -> str:
    """Render ``{t2v_R1: .., v2t_MedR: ..}`` as a two-row text table for logs.

    Accepts keys with or without a leading ``"<prefix>/"`` or ``"<prefix>_"``;
    missing entries print as "-".
    """
    header = ["R@1", "R@5", "R@10", "R@50", "MedR", "MeanR", "gmean"]
    rows = []
    directions = ["t2v", "v2t"]
    if _lookup(metrics, prefix, "dsl_t2v_R1") is not None:
        directions += ["dsl_t2v", "dsl_v2t"]  # dual softmax: transductive
    for direction in directions:
        cells = [f"{prefix} {direction}"]
        for key in METRIC_KEYS:
            value = _lookup(metrics, prefix, f"{direction}_{key}")
            cells.append("-" if value is None else f"{float(value):.2f}")
        rows.append(cells)
    width0 = max(len(r[0]) for r in rows)
    widths = [max(len(h), 6) for h in header]
    lines = [" " * width0 + " | " + " ".join(h.rjust(w) for h, w in zip(header, widths))]
    lines.append("-" * len(lines[0]))
    for r in rows:
        values = " ".join(c.rjust(w) for c, w in zip(r[1:], widths))
        lines.append(r[0].ljust(width0) + " | " + values)
    return "\n".join(lines)


def _lookup(metrics: dict[str, Any], prefix: str, key: str) -> Any:
    for candidate in (key, f"{prefix}/{key}", f"{prefix}_{key}"):
        if candidate in metrics:
            v = metrics[candidate]
            return v.item() if isinstance(v, Tensor) else v
    return None
