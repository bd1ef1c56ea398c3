"""Losses: hand-computed values, shape errors (the two-rank equivalence: integration/test_distributed_math.py)."""
from __future__ import annotations

import math

import pytest
import torch
import torch.distributed as dist
from torch import nn

from lightning_frozen.losses import (
    ContrastiveLoss,
    MaxMarginRankingLoss,
    NormSoftmaxLoss,
    gather_with_grad,
    global_contrastive_loss,
)
from lightning_frozen.similarity import sim_matrix


# ---------------------------------------------------------------- NormSoftmax
def test_normsoftmax_2x2_by_hand() -> None:
    a, b, c, d = 0.8, 0.1, -0.2, 0.5
    t = 0.5
    sims = torch.tensor([[a, b], [c, d]], dtype=torch.float64)
    # text->video: row softmax; video->text: column softmax, both at temperature t.
    row0 = math.log(math.exp(a / t) / (math.exp(a / t) + math.exp(b / t)))
    row1 = math.log(math.exp(d / t) / (math.exp(c / t) + math.exp(d / t)))
    col0 = math.log(math.exp(a / t) / (math.exp(a / t) + math.exp(c / t)))
    col1 = math.log(math.exp(d / t) / (math.exp(b / t) + math.exp(d / t)))
    expected = -(row0 + row1) / 2 - (col0 + col1) / 2
    got = NormSoftmaxLoss(temperature=t)(sims)
    assert got.item() == pytest.approx(expected, abs=1e-12)


def test_normsoftmax_3x3_loops() -> None:
    # Asymmetric 3x3: text->video (rows) and video->text (columns) terms differ.
    sims = [[0.9, 0.4, -0.3], [0.2, 0.1, 0.7], [-0.5, 0.6, 0.3]]
    t = 0.1
    n = len(sims)
    text_to_video = sum(
        sims[i][i] / t - math.log(sum(math.exp(sims[i][j] / t) for j in range(n))) for i in range(n)
    )
    video_to_text = sum(
        sims[j][j] / t - math.log(sum(math.exp(sims[i][j] / t) for i in range(n))) for j in range(n)
    )
    expected = -text_to_video / n - video_to_text / n
    assert abs(text_to_video - video_to_text) > 1e-3
    got = NormSoftmaxLoss(temperature=t)(torch.tensor(sims, dtype=torch.float64))
    assert got.item() == pytest.approx(expected, abs=1e-10)


def test_normsoftmax_bad_temperature() -> None:
    with pytest.raises(ValueError, match="temperature"):
        NormSoftmaxLoss(temperature=0.0)


# ---------------------------------------------------------------- MaxMargin
def _max_margin_reference(sims: list[list[float]], margin: float, fix_norm: bool) -> float:
    n = len(sims)
    terms = []
    for i in range(n):
        for j in range(n):
            if fix_norm and i == j:
                continue
            terms.append(max(0.0, margin - sims[i][i] + sims[i][j]))  # text i, wrong video j
            terms.append(max(0.0, margin - sims[i][i] + sims[j][i]))  # video i, wrong text j
    return sum(terms) / len(terms)


@pytest.mark.parametrize("fix_norm", [True, False])
def test_max_margin_small_case(fix_norm: bool) -> None:
    sims = [[0.9, 0.2, 0.5], [0.3, 0.1, 0.4], [-0.6, 0.8, 0.7]]
    margin = 0.3
    loss = MaxMarginRankingLoss(margin=margin, fix_norm=fix_norm)
    got = loss(torch.tensor(sims, dtype=torch.float64))
    assert got.item() == pytest.approx(_max_margin_reference(sims, margin, fix_norm), abs=1e-12)


def test_max_margin_2x2_by_hand() -> None:
    # s = [[1.0, 0.2], [0.6, 0.5]], margin 1, fix_norm: four off-diagonal hinges.
    # row: 1-1.0+0.2=0.2 ; 1-0.5+0.6=1.1 ; col: 1-1.0+0.6=0.6 ; 1-0.5+0.2=0.7
    sims = torch.tensor([[1.0, 0.2], [0.6, 0.5]], dtype=torch.float64)
    got = MaxMarginRankingLoss(margin=1.0, fix_norm=True)(sims)
    assert got.item() == pytest.approx((0.2 + 1.1 + 0.6 + 0.7) / 4, abs=1e-12)
    # Without fix_norm the two diagonal pairs add 2 * 2 terms of exactly `margin`.
    got_all = MaxMarginRankingLoss(margin=1.0, fix_norm=False)(sims)
    assert got_all.item() == pytest.approx((0.2 + 1.1 + 0.6 + 0.7 + 4 * 1.0) / 8, abs=1e-12)


# ---------------------------------------------------------------- shapes and sims
def test_sim_matrix_is_cosine() -> None:
    g = torch.Generator().manual_seed(0)
    a = torch.randn(3, 4, generator=g, dtype=torch.float64)
    b = torch.randn(5, 4, generator=g, dtype=torch.float64)
    got = sim_matrix(a, b)
    for i in range(3):
        for j in range(5):
            ref = torch.dot(a[i], b[j]) / (a[i].norm() * b[j].norm())
            assert got[i, j].item() == pytest.approx(ref.item(), abs=1e-12)
    # A zero row gives 0 similarity, not NaN.
    assert torch.equal(sim_matrix(torch.zeros(1, 4), b.float()), torch.zeros(1, 5))


@pytest.mark.parametrize("loss", [NormSoftmaxLoss(), MaxMarginRankingLoss()])
def test_losses_reject_non_square(loss: nn.Module) -> None:
    with pytest.raises(ValueError, match=r"square.*\(3, 2\)"):
        loss(torch.zeros(3, 2))
    with pytest.raises(ValueError, match="square"):
        loss(torch.zeros(4))


def test_shape_mismatches_raise() -> None:
    with pytest.raises(ValueError, match=r"same d.*\(2, 3\).*\(2, 4\)"):
        sim_matrix(torch.zeros(2, 3), torch.zeros(2, 4))
    with pytest.raises(ValueError, match=r"\(4, 5\).*\(3, 5\)"):
        global_contrastive_loss(torch.zeros(4, 5), torch.zeros(3, 5), NormSoftmaxLoss())
    with pytest.raises(ValueError, match="at least 2"):
        MaxMarginRankingLoss()(torch.zeros(1, 1))


def test_gather_is_identity_without_distributed() -> None:
    assert not dist.is_initialized()
    t = torch.randn(3, 2)
    assert gather_with_grad(t) is t
    text, video = torch.randn(4, 3), torch.randn(4, 3)
    expected = NormSoftmaxLoss()(sim_matrix(text, video))
    assert torch.equal(ContrastiveLoss(NormSoftmaxLoss())(text, video), expected)


# ---------------------------------------------------------------- two gloo ranks
















def test_mean_consensus_scores_like_the_mean_clip_similarity():
    """A text's dot product with the consensus is its mean cosine over the clips; its cosine ranks videos alike
    up to each video's own scale (the norm of the consensus)."""
    from lightning_frozen.similarity import mean_consensus, sim_matrix

    torch.manual_seed(0)
    clips, text = torch.randn(4 * 3, 8), torch.randn(5, 8)
    video = mean_consensus(clips, 3)
    assert video.shape == (4, 8)
    per_clip = sim_matrix(text, clips).view(5, 4, 3).mean(-1)
    torch.testing.assert_close(text / text.norm(dim=-1, keepdim=True) @ video.t(), per_clip)
    torch.testing.assert_close(sim_matrix(text, video), per_clip / video.norm(dim=-1))
    with pytest.raises(ValueError, match="clip embeddings"):
        mean_consensus(torch.randn(7, 8), 3)
