"""The straightforward divided space-time attention: the baseline the fast path is held to.

It computes as the published code does (up to its einsum): every group gets its own copy of
the CLS key and value, and the tokens go through layout round trips on the way in and out.
Tests compare the fast path with it (forward and gradients) and benchmarks time both; the
model itself never runs it. It uses the tower's own modules and parameters, so one set of
weights serves both paths.
"""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from .space_time import DividedAttention, SpaceTimeBlock, SpaceTimeTransformer


def reference_attention(attn: DividedAttention, x: Tensor, frames: int, over: Literal["space", "time"]) -> Tensor:
    """`attn` applied to tokens [B, 1 + F*N, D], groups built by copies and repeated CLS keys."""
    b, n_tok, d = x.shape
    h, hd = attn.num_heads, attn.head_dim
    patches = (n_tok - 1) // frames
    qkv = attn.qkv(x).reshape(b, n_tok, 3, h, hd).permute(2, 0, 3, 1, 4)  # 3,B,h,N,hd
    q, k, v = qkv.unbind(0)
    drop = attn.attn_drop if attn.training else 0.0

    cls_out = F.scaled_dot_product_attention(q[:, :, :1], k, v, dropout_p=drop)  # B,h,1,hd

    def group(t: Tensor) -> Tensor:
        t = t[:, :, 1:].reshape(b, h, frames, patches, hd)
        if over == "time":
            t = t.transpose(2, 3)  # groups = spatial positions, members = frames
        groups, members = t.shape[2], t.shape[3]
        return t.permute(0, 2, 1, 3, 4).reshape(b * groups, h, members, hd)

    q_g, k_g, v_g = group(q), group(k), group(v)
    n_groups = q_g.shape[0] // b
    cls_k = k[:, :, :1].repeat_interleave(n_groups, dim=0)
    cls_v = v[:, :, :1].repeat_interleave(n_groups, dim=0)
    out = F.scaled_dot_product_attention(
        q_g, torch.cat([cls_k, k_g], dim=2), torch.cat([cls_v, v_g], dim=2), dropout_p=drop
    )  # B*G,h,M,hd
    out = out.reshape(b, n_groups, h, -1, hd).permute(0, 2, 1, 3, 4)  # B,h,G,M,hd
    if over == "time":
        out = out.transpose(2, 3)
    out = out.reshape(b, h, frames * patches, hd)
    out = torch.cat([cls_out, out], dim=2).transpose(1, 2).reshape(b, n_tok, d)
    return attn.proj_drop(attn.proj(out))


def reference_block(block: SpaceTimeBlock, x: Tensor, frames: int) -> Tensor:
    """One block with the published wiring (the space residual is x, not x + time)."""
    t = x + reference_attention(block.timeattn, block.norm3(x), frames, "time")
    y = x + block.drop_path(reference_attention(block.attn, block.norm1(t), frames, "space"))
    return y + block.drop_path(block.mlp(block.norm2(y)))


def reference_forward_features(tower: SpaceTimeTransformer, video: Tensor) -> Tensor:
    """All tokens after the final norm, [B, 1 + F*N, D], through the reference blocks."""
    frames = tower.time_steps(video.shape[1])
    x = tower.embed(video)
    for block in tower.blocks:
        x = reference_block(block, x, frames)
    return tower.norm(x)


def reference_forward(tower: SpaceTimeTransformer, video: Tensor) -> Tensor:
    """The CLS feature [B, D] that `tower(video)` computes, the straightforward way."""
    return reference_forward_features(tower, video)[:, 0]


class ReferenceTower(torch.nn.Module):
    """A tower whose forward is the reference path, sharing (not copying) the given tower's weights."""

    def __init__(self, tower: SpaceTimeTransformer):
        super().__init__()
        self.tower = tower

    def forward(self, video: Tensor) -> Tensor:
        return reference_forward(self.tower, video)
