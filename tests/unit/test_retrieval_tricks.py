"""Retrieval tricks: QB-Norm, dual softmax (transductive) and the multi-clip test protocol,
each against an independent computation."""
import numpy as np
import pytest
import torch
from helpers import frames
from torch.utils.data import DataLoader

from lightning_frozen.data import MSRVTT, read_frames
from lightning_frozen.data.multiclip import MultiClip
from lightning_frozen.metrics import RetrievalMetrics, format_metrics_table, retrieval_metrics, t2v_metrics
from lightning_frozen.similarity import dual_softmax, querybank_normalize, querybank_stats, sim_matrix


def test_querybank_normalize_is_the_dynamic_inverted_softmax():
    rng = np.random.default_rng(0)
    sims, bank = rng.uniform(-1, 1, (5, 7)), rng.uniform(-1, 1, (9, 7))
    log_norm, activated = querybank_stats(torch.tensor(bank), beta=20.0)
    got = querybank_normalize(torch.tensor(sims), log_norm, activated, beta=20.0).numpy()
    hubs = set(bank.argmax(axis=1))
    denominator = np.exp(20.0 * bank).sum(axis=0)
    for q in range(5):
        want = np.log(np.exp(20.0 * sims[q]) / denominator) if sims[q].argmax() in hubs else sims[q]
        np.testing.assert_allclose(got[q], want, rtol=1e-6, atol=1e-9)


def test_dual_softmax_weighs_by_a_softmax_over_the_queries():
    sims = torch.tensor([[0.9, 0.2, 0.1], [0.8, 0.7, 0.1], [0.8, 0.1, 0.75]], dtype=torch.float64)
    prior = np.exp(sims.numpy() / 0.1) / np.exp(sims.numpy() / 0.1).sum(axis=0, keepdims=True)
    np.testing.assert_allclose(dual_softmax(sims, 0.1).numpy(), sims.numpy() * prior)
    # video 0 is a hub (every query's best); the prior hands queries 1 and 2 their own videos back
    assert t2v_metrics(sims)["R1"] == pytest.approx(100 / 3) and t2v_metrics(dual_softmax(sims, 0.1))["R1"] == 100.0


def test_retrieval_metrics_report_dual_softmax_beside_the_plain_ones():
    torch.manual_seed(0)
    text, video = torch.randn(6, 8), torch.randn(6, 8)
    metric = RetrievalMetrics(dual_softmax=0.05)
    metric.update(text, video, torch.arange(6))
    values = metric.compute()
    sims = sim_matrix(text, video)
    assert values["t2v_R1"] == retrieval_metrics(sims)["t2v_R1"]
    assert values["dsl_t2v_R1"] == t2v_metrics(dual_softmax(sims, 0.05))["R1"]
    assert "dsl_t2v" in format_metrics_table(values)


def test_repeated_video_ids_are_averaged_before_scoring():
    torch.manual_seed(1)
    text, clips = torch.randn(4, 8), torch.randn(8, 8)  # two clips per video, in two batches
    metric = RetrievalMetrics(repeats="mean")
    metric.update(text.repeat(2, 1)[:4], clips[:4], torch.tensor([0, 1, 2, 3]))
    metric.update(text, clips[4:], torch.tensor([0, 1, 2, 3]))
    averaged = (clips[:4] + clips[4:]) / 2
    want = retrieval_metrics(sim_matrix(text, averaged))
    assert metric.compute() == want


def test_multiclip_reads_each_video_at_every_offset_of_its_intervals(tiny_msrvtt):
    dataset = frames(MSRVTT(tiny_msrvtt, cut="jsfusion", split="test", frame_size=32), 2)
    clips = MultiClip(dataset, stride=2)
    # 8-frame videos, 2 intervals of 4 frames: offsets 0 and 2
    assert len(clips) == 2 * len(dataset) and clips.indices[:4] == [0, 0, 1, 1]
    # evaluation totals count videos and captions, not clips
    assert (clips.num_videos, clips.num_captions) == (len(dataset), dataset.num_captions)
    item = clips[3]
    assert item["meta"]["index"] == 1
    path = tiny_msrvtt / item["meta"]["path"]
    torch.testing.assert_close(item["video"], read_frames(path, 8, "uniform", size=32)[[2, 6]])
    assert dataset.fix_start is None
    # a DataLoader (batched fetches) reads the same offsets
    batch = next(iter(DataLoader(clips, batch_size=4, collate_fn=list)))
    for direct, loaded in zip((clips[i] for i in range(4)), batch):
        torch.testing.assert_close(loaded["video"], direct["video"])
    assert not torch.equal(batch[0]["video"], batch[1]["video"])  # offsets 0 and 2 of one video differ
    dataset.run_state.set_num_frames(4)  # 4 intervals of 2 frames: offset 0 only
    assert len(clips) == len(dataset)
