"""Retrieval metrics: hand-computed ranks, masks, ties, torchmetrics agreement, DDP sync."""
from __future__ import annotations

import statistics

import numpy as np
import pytest
import torch
from helpers.retrieval import assert_same, embeddings, one_shot
from torchmetrics.retrieval import RetrievalHitRate, RetrievalRecall

from lightning_frozen.metrics import (
    RetrievalMetrics,
    format_metrics_table,
    retrieval_metrics,
    t2v_metrics,
    v2t_metrics,
)


def expected_from_ranks(ranks: list[int]) -> dict[str, float]:
    """Independent reference: recall in percent, median / mean rank, gmean."""
    n = len(ranks)
    out = {f"R{t}": 100.0 * sum(r <= t for r in ranks) / n for t in (1, 5, 10, 50)}
    out["MedR"] = float(statistics.median(ranks))
    out["MeanR"] = sum(ranks) / n
    out["gmean"] = (out["R1"] * out["R5"] * out["R10"]) ** (1 / 3)
    return out


def assert_metrics(got: dict, ranks: list[int]) -> None:
    exp = expected_from_ranks(ranks)
    assert set(got) == set(exp)
    for key, value in exp.items():
        assert float(got[key]) == pytest.approx(value, abs=1e-9), key


# ---------------------------------------------------------------- hand-computed
SIMS_3 = [
    [0.9, 0.1, 0.3],  # query 0 -> video 0 (0.9): nothing above -> rank 1
    [0.5, 0.4, 0.8],  # query 1 -> video 1 (0.4): 0.5, 0.8 above -> rank 3
    [0.2, 0.7, 0.6],  # query 2 -> video 2 (0.6): 0.7 above -> rank 2
]


@pytest.mark.parametrize("as_numpy", [False, True])
def test_single_caption_by_hand(as_numpy: bool) -> None:
    sims = np.array(SIMS_3) if as_numpy else torch.tensor(SIMS_3)
    assert_metrics(t2v_metrics(sims), [1, 3, 2])
    # v2t, per column: video 0 [0.9,0.5,0.2] own 0.9 -> 1; video 1 [0.1,0.4,0.7] own 0.4
    # -> 2; video 2 [0.3,0.8,0.6] own 0.6 -> 2.
    assert_metrics(v2t_metrics(sims), [1, 2, 2])


def test_recall_thresholds_with_known_ranks() -> None:
    # Row i has its own video at rank r_i: r_i - 1 other videos score 1, the own 0, rest -1.
    ranks = [1, 2, 5, 6, 10, 11, 1, 3, 12, 4, 7, 9]
    n = len(ranks)
    sims = -torch.ones(n, n)
    for i, r in enumerate(ranks):
        sims[i, i] = 0.0
        others = [j for j in range(n) if j != i][: r - 1]
        sims[i, others] = 1.0
    got = t2v_metrics(sims)
    assert got["R1"] == pytest.approx(100 * 2 / 12)
    assert got["R5"] == pytest.approx(100 * 6 / 12)
    assert got["R10"] == pytest.approx(100 * 10 / 12)
    assert got["R50"] == pytest.approx(100.0)
    assert got["MedR"] == pytest.approx(5.5)
    assert got["MeanR"] == pytest.approx(71 / 12)


# rows 2j, 2j+1 are the two captions of video j
SIMS_6x3 = [
    [0.9, 0.2, 0.1],  # q0, video 0: own 0.9 -> 1
    [0.3, 0.8, 0.1],  # q1, video 0: own 0.3 -> 2
    [0.6, 0.5, 0.7],  # q2, video 1: own 0.5 -> 3
    [0.1, 0.9, 0.5],  # q3, video 1: own 0.9 -> 1   (masked below)
    [0.2, 0.3, 0.4],  # q4, video 2: own 0.4 -> 1
    [0.5, 0.1, 0.0],  # q5, video 2: own 0.0 -> 3
]
MASK_6 = [True, True, True, False, True, True]


def test_multi_caption_without_mask() -> None:
    sims = torch.tensor(SIMS_6x3)
    assert_metrics(t2v_metrics(sims), [1, 2, 3, 1, 1, 3])
    # v2t columns over all 6 queries:
    # video 0 [.9 .3 .6 .1 .2 .5]: best own q0 0.9 -> 1
    # video 1 [.2 .8 .5 .9 .3 .1]: best own q3 0.9 -> 1
    # video 2 [.1 .1 .7 .5 .4 .0]: best own q4 0.4, above it 0.7 and 0.5 -> 3
    assert_metrics(v2t_metrics(sims), [1, 1, 3])


@pytest.mark.parametrize("mask_shape", ["flat", "n_by_k"])
def test_multi_caption_with_mask(mask_shape: str) -> None:
    sims = torch.tensor(SIMS_6x3)
    mask = torch.tensor(MASK_6)
    if mask_shape == "n_by_k":
        mask = mask.reshape(3, 2)
    # t2v: q3 dropped.
    assert_metrics(t2v_metrics(sims, mask), [1, 2, 3, 1, 3])
    # v2t: q3 cannot be retrieved. video 1 best valid own is q2 0.5, above it q1 0.8 -> 2;
    # video 2: q3's 0.5 no longer competes, only q2's 0.7 is above 0.4 -> 2.
    assert_metrics(v2t_metrics(sims, mask), [1, 2, 2])
    both = retrieval_metrics(sims, mask)
    assert both["t2v_MeanR"] == pytest.approx(2.0) and both["v2t_MeanR"] == pytest.approx(5 / 3)


def test_ties_are_optimistic() -> None:
    flat = torch.full((4, 4), 0.3)
    assert_metrics(t2v_metrics(flat), [1, 1, 1, 1])
    assert_metrics(v2t_metrics(flat), [1, 1, 1, 1])
    sims = torch.tensor(
        [
            [0.5, 0.5, 0.2],  # own 0.5 ties with video 1 -> 1
            [0.1, 0.4, 0.4],  # own 0.4 ties with video 2 -> 1
            [0.7, 0.7, 0.3],  # two strictly greater -> 3
        ]
    )
    assert_metrics(t2v_metrics(sims), [1, 1, 3])
    # v2t columns: video 0 [.5 .1 .7] own .5 -> 2; video 1 [.5 .4 .7] own .4 -> 3;
    # video 2 [.2 .4 .3] own .3 -> 2
    assert_metrics(v2t_metrics(sims), [2, 3, 2])


def test_bad_inputs_raise() -> None:
    with pytest.raises(ValueError, match=r"7 rows.*3 columns.*multiple"):
        t2v_metrics(torch.zeros(7, 3))
    with pytest.raises(ValueError, match="2-D"):
        v2t_metrics(torch.zeros(3))
    with pytest.raises(ValueError, match=r"query_masks shape \(5,\)"):
        t2v_metrics(torch.zeros(6, 3), torch.ones(5, dtype=torch.bool))
    with pytest.raises(ValueError, match="NaN"):
        sims = torch.zeros(3, 3)
        sims[1, 2] = float("nan")
        v2t_metrics(sims)
    with pytest.raises(ValueError, match="every caption"):
        t2v_metrics(torch.zeros(2, 2), torch.zeros(2, dtype=torch.bool))


# ---------------------------------------------------------------- torchmetrics agreement
def _tm_recall(sims: torch.Tensor, relevant: torch.Tensor, top_k: int, hit_rate: bool) -> float:
    """Per-row retrieval with torchmetrics: each row is a query over the columns."""
    q, c = sims.shape
    indexes = torch.arange(q).unsqueeze(1).expand(q, c)
    metric_cls = RetrievalHitRate if hit_rate else RetrievalRecall
    metric = metric_cls(top_k=top_k)
    # torchmetrics treats preds <= 0 as not retrieved; a constant shift keeps the ranking.
    preds = sims - sims.min() + 1.0
    value = metric(preds.reshape(-1), relevant.reshape(-1), indexes=indexes.reshape(-1))
    return 100.0 * value.item()  # float32 in torchmetrics: compare at 1e-4, far below one query


@pytest.mark.parametrize("seed", [0, 1])
def test_agrees_with_torchmetrics_single_caption(seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    sims = torch.randn(40, 40, generator=g, dtype=torch.float64)
    eye = torch.eye(40, dtype=torch.bool)
    t2v, v2t = t2v_metrics(sims), v2t_metrics(sims)
    for k in (1, 5, 10):
        assert t2v[f"R{k}"] == pytest.approx(_tm_recall(sims, eye, k, hit_rate=False), abs=1e-4)
        assert v2t[f"R{k}"] == pytest.approx(_tm_recall(sims.t(), eye, k, hit_rate=False), abs=1e-4)


def test_agrees_with_torchmetrics_multi_caption_masked() -> None:
    g = torch.Generator().manual_seed(3)
    n, k = 12, 3
    sims = torch.randn(n * k, n, generator=g, dtype=torch.float64)
    mask = torch.rand(n * k, generator=g) > 0.3
    mask[0::k] = True  # every video keeps at least one caption
    relevant = torch.zeros(n * k, n, dtype=torch.bool)
    relevant[torch.arange(n * k), torch.arange(n * k) // k] = True
    t2v, v2t = t2v_metrics(sims, mask), v2t_metrics(sims, mask)
    for top in (1, 5, 10):
        # t2v: one relevant video per valid query -> recall.
        ref = _tm_recall(sims[mask], relevant[mask], top, hit_rate=False)
        assert t2v[f"R{top}"] == pytest.approx(ref, abs=1e-4)
        # v2t: a video succeeds if any own valid caption is in its top-k -> hit rate.
        ref = _tm_recall(sims[mask].t(), relevant[mask].t(), top, hit_rate=True)
        assert v2t[f"R{top}"] == pytest.approx(ref, abs=1e-4)


# ---------------------------------------------------------------- RetrievalMetrics






def test_retrieval_metrics_accumulates_likeone_shot() -> None:
    text, video = embeddings(n=20, k=1)
    metric = RetrievalMetrics()
    for start in range(0, 20, 6):  # batches of 6, 6, 6, 2; 2-D text form
        metric.update(text[start : start + 6, 0], video[start : start + 6])
    got = metric.compute()
    ref = one_shot(text, video)
    assert_same(got, ref)
    assert 0 < ref["t2v_R1"] < 100  # the data is neither trivial nor hopeless
    assert "t2v_gmean" in got and "v2t_MedR" in got


def test_retrieval_metrics_multi_caption_mask_and_reset() -> None:
    text, video = embeddings(n=10, k=3, seed=1)
    mask = torch.ones(10, 3, dtype=torch.bool)
    mask[[2, 5, 7], 2] = False
    text[~mask] = 0.0  # padded captions: a zero embedding must not produce NaN
    metric = RetrievalMetrics()
    metric.update(text[:4], video[:4], query_mask=mask[:4])
    metric.update(text[4:], video[4:], query_mask=mask[4:])
    assert_same(metric.compute(), one_shot(text, video, mask))
    metric.reset()
    metric.update(text[:5, :2], video[:5])  # k may change after reset
    assert_same(metric.compute(), one_shot(text[:5, :2], video[:5]))


def test_retrieval_metrics_drops_duplicate_ids_and_sorts() -> None:
    text, video = embeddings(n=9, k=2, seed=2)
    ids = torch.arange(100, 109)
    perm = torch.tensor([4, 0, 7, 2, 8, 1, 3, 6, 5])
    # Shuffled order, then the sampler-style padding repeats the first two samples.
    order = torch.cat([perm, perm[:2]])
    metric = RetrievalMetrics()
    for chunk in order.split(4):
        metric.update(text[chunk], video[chunk], video_ids=ids[chunk])
    assert_same(metric.compute(), one_shot(text, video))

    # The first occurrence wins: a later copy of id 104 carrying other data is ignored.
    first = RetrievalMetrics()
    first.update(text[:5], video[:5], video_ids=ids[:5])
    first.update(text[[5, 6, 7, 8, 0]], video[[5, 6, 7, 8, 8]], video_ids=ids[[5, 6, 7, 8, 4]])
    assert_same(first.compute(), one_shot(text, video))

    # Without ids the duplicates count twice, which changes the result.
    plain = RetrievalMetrics()
    for chunk in order.split(4):
        plain.update(text[chunk], video[chunk])
    dup = plain.compute()
    assert any(abs(float(dup[k_]) - float(v)) > 1e-6 for k_, v in one_shot(text, video).items())


@pytest.mark.filterwarnings("ignore:The ``compute`` method")
def test_retrieval_metrics_bad_updates() -> None:
    metric = RetrievalMetrics()
    with pytest.raises(ValueError, match=r"\(4, 8\)"):
        metric.update(torch.zeros(4, 8), torch.zeros(3, 8))
    metric.update(torch.zeros(2, 3, 8), torch.zeros(2, 8), video_ids=torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="from 3 to 2"):
        metric.update(torch.zeros(2, 2, 8), torch.zeros(2, 8), video_ids=torch.tensor([2, 3]))
    with pytest.raises(ValueError, match="video_ids"):
        metric.update(torch.zeros(2, 3, 8), torch.zeros(2, 8))
    with pytest.raises(ValueError, match="before any update"):
        RetrievalMetrics().compute()


def test_format_metrics_table() -> None:
    metrics = retrieval_metrics(torch.tensor(SIMS_3))
    table = format_metrics_table(metrics, prefix="val")
    lines = table.splitlines()
    assert "R@1" in lines[0] and "gmean" in lines[0]
    t2v_line = next(line for line in lines if "t2v" in line)
    v2t_line = next(line for line in lines if "v2t" in line)
    assert t2v_line.startswith("val t2v")
    # t2v ranks [1, 3, 2]: R@1 33.33, MedR 2, MeanR 2; v2t ranks [1, 2, 2]: MeanR 1.67
    assert t2v_line.split()[3:] == ["33.33", "100.00", "100.00", "100.00", "2.00", "2.00", "69.34"]
    assert v2t_line.split()[7:9] == ["2.00", "1.67"]
    # Prefixed keys and tensors work too; missing keys print "-".
    prefixed = {f"val/{k}": torch.tensor(v) for k, v in metrics.items() if k.startswith("t2v")}
    t = format_metrics_table(prefixed, prefix="val")
    assert "33.33" in t
    assert next(line for line in t.splitlines() if "v2t" in line).split()[-1] == "-"


# ---------------------------------------------------------------- DDP sync (two gloo ranks)


