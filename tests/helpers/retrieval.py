"""Correlated text/video embeddings and a one-shot metric reference, for the retrieval metric tests."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lightning_frozen.metrics import retrieval_metrics


def embeddings(n: int, k: int, p: int = 8, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    video = torch.randn(n, p, generator=g)
    text = video.unsqueeze(1) + 1.5 * torch.randn(n, k, p, generator=g)  # correlated, imperfect
    return text, video


def one_shot(text: torch.Tensor, video: torch.Tensor, mask: torch.Tensor | None = None) -> dict:
    n, k, p = text.shape
    sims = F.normalize(text.reshape(n * k, p), dim=1) @ F.normalize(video, dim=1).t()
    return retrieval_metrics(sims, None if mask is None else mask.reshape(-1))


def assert_same(got: dict, ref: dict) -> None:
    assert set(got) == set(ref)
    for key in ref:
        assert float(got[key]) == pytest.approx(float(ref[key]), abs=1e-6), key

