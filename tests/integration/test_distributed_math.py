"""Two gloo ranks: the contrastive loss over the global batch and the retrieval metric's sync equal one process's."""
from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from helpers.retrieval import assert_same, embeddings, one_shot
from torch import nn

from lightning_frozen.losses import ContrastiveLoss, MaxMarginRankingLoss, NormSoftmaxLoss, gather_with_grad
from lightning_frozen.metrics import RetrievalMetrics

WORLD = 2
GLOBAL_BATCH = 8
IN_TEXT, IN_VIDEO, EMB = 6, 7, 5


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



def _metric_worker(rank: int, out_dir: str) -> None:
    url = f"file://{Path(out_dir) / 'rendezvous'}"  # a file, not a port: nothing to race for
    dist.init_process_group(
        "gloo", init_method=url, rank=rank, world_size=2, timeout=timedelta(seconds=120)
    )
    try:
        text, video = embeddings(n=7, k=2, seed=5)
        ids = torch.arange(7)
        # DistributedSampler-like split of 7 into 4 + 4: rank r takes r, r+2, ...; the
        # padding repeats sample 0 on rank 1.
        local = torch.tensor([0, 2, 4, 6]) if rank == 0 else torch.tensor([1, 3, 5, 0])
        metric = RetrievalMetrics()
        for chunk in local.split(3):
            metric.update(text[chunk], video[chunk], video_ids=ids[chunk])
        values = {k: float(v) for k, v in metric.compute().items()}
        torch.save(values, Path(out_dir) / f"m{rank}.pt")
        dist.barrier()  # both ranks done communicating before gloo tears down (else a teardown abort)
    finally:
        dist.destroy_process_group()


def test_retrieval_metrics_syncs_across_ranks(tmp_path: Path) -> None:
    mp.spawn(_metric_worker, args=(str(tmp_path),), nprocs=2, join=True)
    text, video = embeddings(n=7, k=2, seed=5)
    ref = one_shot(text, video)
    for rank in range(2):
        assert_same(torch.load(tmp_path / f"m{rank}.pt"), ref)

