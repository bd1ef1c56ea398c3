"""Losses: hand-computed values, shape errors, and the DDP global-batch equivalence."""
from __future__ import annotations

import math
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from lightning_frozen.losses import (
    ContrastiveLoss,
    MaxMarginRankingLoss,
    NormSoftmaxLoss,
    gather_with_grad,
    global_contrastive_loss,
)
from lightning_frozen.similarity import sim_matrix

WORLD = 2
GLOBAL_BATCH = 8
IN_TEXT, IN_VIDEO, EMB = 6, 7, 5


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
class _Encoders(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.text = nn.Linear(IN_TEXT, EMB)
        self.video = nn.Linear(IN_VIDEO, EMB)


def _make_problem() -> tuple[_Encoders, torch.Tensor, torch.Tensor]:
    torch.manual_seed(1234)
    model = _Encoders().double()
    g = torch.Generator().manual_seed(99)
    x_text = torch.randn(GLOBAL_BATCH, IN_TEXT, generator=g, dtype=torch.float64)
    x_video = torch.randn(GLOBAL_BATCH, IN_VIDEO, generator=g, dtype=torch.float64)
    return model, x_text, x_video


def _loss_fns() -> dict[str, nn.Module]:
    return {"normsoftmax": NormSoftmaxLoss(0.05), "maxmargin": MaxMarginRankingLoss(0.2)}


def _step(model: _Encoders, x_text: torch.Tensor, x_video: torch.Tensor, loss_fn: nn.Module):
    model.zero_grad()
    loss = ContrastiveLoss(loss_fn)(model.text(x_text), model.video(x_video))
    loss.backward()
    grads = {name: p.grad.detach().clone() for name, p in model.named_parameters()}
    return loss.detach(), grads


def _worker(rank: int, out_dir: str) -> None:
    url = f"file://{Path(out_dir) / 'rendezvous'}"  # a file, not a port: nothing to race for
    # A short collective timeout turns a hang (e.g. mismatched collectives) into an error.
    dist.init_process_group(
        "gloo", init_method=url, rank=rank, world_size=WORLD, timeout=timedelta(seconds=120)
    )
    try:
        model, x_text, x_video = _make_problem()
        local = slice(rank * GLOBAL_BATCH // WORLD, (rank + 1) * GLOBAL_BATCH // WORLD)
        result: dict[str, object] = {}
        for name, loss_fn in _loss_fns().items():
            loss, grads = _step(model, x_text[local], x_video[local], loss_fn)
            for g in grads.values():  # what DDP does: average gradients over ranks
                dist.all_reduce(g)
                g /= WORLD
            result[name] = (loss, grads)
        # Rows are concatenated in rank order.
        result["gathered"] = gather_with_grad(torch.full((2, 3), float(rank)))
        torch.save(result, Path(out_dir) / f"rank{rank}.pt")
        dist.barrier()  # both ranks done communicating before gloo tears down (else a teardown abort)
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_rank_results(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    out = tmp_path_factory.mktemp("ddp")
    mp.spawn(_worker, args=(str(out),), nprocs=WORLD, join=True)
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]


@pytest.mark.parametrize("name", ["normsoftmax", "maxmargin"])
def test_ddp_gathered_loss_matches_single_process(two_rank_results: list[dict], name: str) -> None:
    model, x_text, x_video = _make_problem()
    ref_loss, ref_grads = _step(model, x_text, x_video, _loss_fns()[name])
    for rank in range(WORLD):
        loss, grads = two_rank_results[rank][name]
        assert loss.item() == pytest.approx(ref_loss.item(), abs=1e-6)
        assert grads.keys() == ref_grads.keys()
        for key in ref_grads:
            torch.testing.assert_close(grads[key], ref_grads[key], atol=1e-6, rtol=0)
    # Sanity: the local-only loss (no global negatives) would differ.
    local_loss, _ = _step(model, x_text[:4], x_video[:4], _loss_fns()[name])
    assert abs(local_loss.item() - ref_loss.item()) > 1e-6


def test_ddp_gather_keeps_rank_order(two_rank_results: list[dict]) -> None:
    expected = torch.cat([torch.full((2, 3), float(r)) for r in range(WORLD)])
    for rank in range(WORLD):
        assert torch.equal(two_rank_results[rank]["gathered"], expected)
