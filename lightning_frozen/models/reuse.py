"""Video embedding that computes less: reuse across frames (Déjà Vu, ReuseViT) and token merging (ToMe).

Consecutive frames are mostly alike, and so are a ViT's tokens for them. Most of a block's
work is token-wise (the qkv projection and the MLP); a patch token whose input barely moved
since its reference frame can take the reference's outputs of those parts instead of
computing them. Attention, which mixes tokens, always runs over every token. The tokens that
do need computing are gathered and computed together, so the skipped work is really
skipped: fewer rows go through the matmuls.

A token's reference is the same token in the previous frame: within the threshold of it, the
token takes the outputs the previous frame used (its own, or those it took in turn), so an
unchanging token is computed once. The decisions of all frames are made at once and every
token that needs computing is gathered into one batch. A token that creeps slowly can drift
one threshold per frame from the input its outputs were computed for: every
``keyframe_interval``-th frame is computed in full, which bounds that chain.

What each tower can reuse:

* CLIP's per-frame ViT ("mean", "transformer"): the qkv and MLP outputs of every patch token
  (``diff``: by a distance threshold; ``learned``: by a small decision module per block and
  part, ReuseViT's idea, trained by ``fit`` to keep the embeddings close to the exact ones).
  Each frame's class token is always computed. ``tome`` instead merges ``r`` tokens per block
  within each frame (Bolya et al.'s bipartite soft matching), whatever the other frames show.
* The space-time tower: the time-attention qkv, space-attention qkv and MLP outputs of patch
  tokens, in every block but the last (computed exactly: it only produces the class token).
  The clip's one class token attends over all frames and is always computed; the time
  attention mixes a patch with the same patch in the other frames, and the temporal
  embedding makes every frame's tokens differ, so fewer tokens stay within a threshold.
"""
from __future__ import annotations

import math
from functools import partial
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import ReuseConfig
from .space_time import SpaceTimeTransformer

TokenFn = Callable[[Tensor], Tensor]


class ReuseGate(nn.Module):
    """ReuseViT's decision for one block part: per token, the logit of reusing the previous frame's output.

    Features: log relative distance to the previous frame's token, cosine similarity to it, and
    how much the frame's class token attended to the token in the last attention (times the
    token count: 1 is average). A linear term starts as a soft distance threshold (reuse below
    0.1, as "diff" does); a small MLP, starting at zero, learns what the threshold misses.
    """

    features = 3

    def __init__(self, hidden: int = 16, threshold: float = 0.1, sharpness: float = 4.0):
        super().__init__()
        self.linear = nn.Linear(self.features, 1)
        self.mlp = nn.Sequential(nn.Linear(self.features, hidden), nn.GELU(), nn.Linear(hidden, 1))
        with torch.no_grad():
            self.linear.weight.zero_()[0, 0] = -sharpness
            self.linear.bias.fill_(sharpness * math.log(threshold))
            self.mlp[2].weight.zero_()
            self.mlp[2].bias.zero_()

    def forward(self, features: Tensor) -> Tensor:
        return (self.linear(features) + self.mlp(features)).squeeze(-1)


class Reuse(nn.Module):
    """The ``video.reuse`` setting of a ``FrozenInTime``: runs a tower with reuse, counts what it skipped.

    Its parameters (``learned``: one gate per block part) are the model's ``reuse.*`` weights.
    """

    def __init__(self, config: ReuseConfig, depth: int):
        super().__init__()
        self.config = config
        self.gates = (nn.ModuleList(ReuseGate() for _ in range(2 * depth))
                      if config.mode == "learned" else None)
        self.computed = 0
        self.total = 0
        self._probabilities: list[Tensor] = []

    def applies(self, training: bool) -> bool:
        """Reuse runs in eval mode; in training only to train a learned one."""
        return self.config.mode != "off" and (not training or self.config.mode == "learned")

    def forward(self, tower: nn.Module, video: Tensor) -> Tensor:
        """The tower's output for ``video`` [B, F, 3, H, W], computed with reuse."""
        if isinstance(tower, SpaceTimeTransformer):
            return reused_space_time(tower, video, self)
        if self.config.mode == "tome":
            return merged_frames(tower, video, self)
        return reused_frames(tower, video, self)

    # -- what was skipped -------------------------------------------------------------------------
    def count(self, computed: int, total: int) -> None:
        self.computed += computed
        self.total += total

    def rate(self) -> float:
        """Share of the token computations of the reusable parts (qkv, MLP) skipped since the last reset."""
        return 1.0 - self.computed / self.total if self.total else 0.0

    def reset_counts(self) -> None:
        self.computed = self.total = 0

    # -- reuse of one token-wise part ------------------------------------------------------------
    def tokens(self, site: int, fn: TokenFn, x: Tensor, importance: Optional[Tensor] = None,
               first_always: bool = False) -> Tensor:
        """``fn`` of tokens ``x`` [B, F, N, D] -> [B, F, N, E]: a token close to the same token of the
        previous frame takes that frame's output (the last computed one along the chain); the tokens
        that need computing are gathered from all frames and computed as one batch. ``first_always``:
        token 0 of every frame (its class token) is always computed."""
        b, frames, n, d = x.shape
        if frames == 1:
            self.count(b * n, b * n)
            return fn(x)
        reuse = self.decide(site, x, importance)
        forced = torch.zeros(frames - 1, n, dtype=torch.bool, device=x.device)
        if first_always:
            forced[:, 0] = True
        if self.config.keyframe_interval:
            forced[torch.arange(1, frames, device=x.device) % self.config.keyframe_interval == 0] = True
        if reuse.dtype != torch.bool:  # training a learned reuse: all computed, mixed by the decisions
            reuse = reuse * ~forced
            full = fn(x)
            outputs = [full[:, 0]]
            for t in range(1, frames):
                keep = reuse[:, t - 1, :, None]
                outputs.append(keep * outputs[-1] + (1 - keep) * full[:, t])
            self.count(b * n + int((reuse < 0.5).sum()), b * frames * n)
            return torch.stack(outputs, 1)
        compute = torch.cat([reuse.new_ones(b, 1, n), ~(reuse & ~forced)], dim=1).view(-1)
        rows = compute.nonzero().squeeze(1)
        computed = fn(x.reshape(-1, d).index_select(0, rows))
        # Each token's source: the last frame up to this one where it was computed (frame 0 always is),
        # and that token's row among the computed ones.
        frame = torch.arange(frames, device=x.device).view(1, frames, 1)
        source = torch.where(compute.view(b, frames, n), frame, 0).cummax(dim=1).values
        position = (torch.arange(b, device=x.device).view(b, 1, 1) * frames + source) * n + \
            torch.arange(n, device=x.device)
        row_of = compute.cumsum(0) - 1
        self.count(len(rows), b * frames * n)
        return computed.index_select(0, row_of[position.view(-1)]).view(b, frames, n, -1)

    def decide(self, site: int, x: Tensor, importance: Optional[Tensor]) -> Tensor:
        """Which tokens of frames 1.. of ``x`` [B, F, N, D] reuse their previous frame's output: a bool
        mask [B, F-1, N], or while training a learned reuse a 0/1 float mask whose gradient is that of
        the soft decision (straight-through)."""
        norms = torch.linalg.vector_norm(x, dim=-1)
        distance = torch.linalg.vector_norm(x[:, 1:] - x[:, :-1], dim=-1) / norms[:, :-1].clamp_min(1e-6)
        if self.config.mode == "diff":
            return distance < self.config.threshold
        n = distance.shape[-1]
        importance = torch.ones_like(distance) if importance is None else importance[:, 1:] * n
        cosine = F.cosine_similarity(x[:, 1:], x[:, :-1], dim=-1)
        logits = self.gates[site](torch.stack([distance.clamp_min(1e-4).log(), cosine, importance], -1))
        if not self.training:
            return logits > 0
        self._probabilities.append(logits.sigmoid().mean())
        uniform = torch.rand_like(logits).clamp(1e-6, 1 - 1e-6)
        noisy = logits + uniform.log() - (-uniform).log1p()  # logistic noise: a Gumbel-sigmoid sample
        soft = noisy.sigmoid()
        return (noisy > 0).to(soft.dtype) + soft - soft.detach()

    def distillation_loss(self, encode_video: Callable[..., Tensor], video: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """A learned reuse's training objective: embeddings close to the exact ones (cosine) at the target
        rate of reused tokens (mean decision probability over the frames that decide)."""
        with torch.no_grad():
            exact = encode_video(video, reuse=False)
        self._probabilities.clear()
        approx = encode_video(video)
        if not self._probabilities:
            raise ValueError("a learned reuse needs clips of 2 or more frames to decide anything")
        rate = torch.stack(self._probabilities).mean()
        self._probabilities.clear()
        cosine = F.cosine_similarity(approx, exact, dim=-1).mean()
        loss = (1 - cosine) + (rate - self.config.target_rate) ** 2
        return loss, {"cosine": cosine.detach(), "rate": rate.detach()}


def _tokenwise(reuse: Reuse, site: int, fn: TokenFn, x: Tensor, frames: int) -> Tensor:
    """``fn`` of every token of a space-time sequence ``x`` [B, 1 + F*N, D]: the clip's class token
    computed, the patch tokens through ``reuse``."""
    b, length, d = x.shape
    out = reuse.tokens(site, fn, x[:, 1:].reshape(b, frames, (length - 1) // frames, d))
    reuse.count(b, b)
    return torch.cat([fn(x[:, :1]), out.reshape(b, length - 1, -1)], dim=1)


def _qkv(block: nn.Module, x: Tensor) -> Tensor:
    return block.attn.qkv(block.norm1(x))


def _mlp(block: nn.Module, x: Tensor) -> Tensor:
    return block.mlp(block.norm2(x))


def _time_qkv(block: nn.Module, x: Tensor) -> Tensor:
    return block.timeattn.qkv(block.norm3(x))


def _heads(qkv: Tensor, num_heads: int) -> tuple[Tensor, Tensor, Tensor]:
    """[M, T, 3D] -> q, k, v [M, h, T, hd]."""
    m, t, three_d = qkv.shape
    return qkv.view(m, t, 3, num_heads, three_d // (3 * num_heads)).permute(2, 0, 3, 1, 4).unbind(0)


def _attention_out(block: nn.Module, out: Tensor) -> Tensor:
    """A timm block's attention output [M, h, T, hd] through its projection and residual scaling."""
    attn = block.attn
    return block.drop_path1(block.ls1(attn.proj_drop(attn.proj(attn.norm(out.transpose(1, 2).flatten(2))))))


def reused_frames(tower: nn.Module, video: Tensor, reuse: Reuse) -> Tensor:
    """CLIP's per-frame tower with frame-to-frame reuse: [B, F, 3, H, W] -> frame features [B, F, D]."""
    b, f = video.shape[:2]
    x = tower.embed_frames(video.flatten(0, 1))
    t, d = x.shape[1:]
    learned = reuse.config.mode == "learned"
    importance = None
    last = len(tower.blocks) - 1
    for i, block in enumerate(tower.blocks):
        qkv = reuse.tokens(2 * i, partial(_qkv, block), x.view(b, f, t, d), importance, first_always=True)
        q, k, v = _heads(qkv.view(b * f, t, -1), block.attn.num_heads)
        if i == last:
            q = q[:, :, :1]  # only the class token reaches the output
        out = F.scaled_dot_product_attention(q, k, v)
        if learned:  # how much each frame's class token looks at each token: a feature of the next decisions
            scores = (q[:, :, :1] @ k.transpose(-1, -2)) * q.shape[-1] ** -0.5
            importance = scores.softmax(-1).mean(1).view(b, f, t)
        y = x[:, :q.shape[2]] + _attention_out(block, out)
        if i == last:
            mlp = _mlp(block, y)
        else:
            mlp = reuse.tokens(2 * i + 1, partial(_mlp, block), y.view(b, f, t, d), importance, True).view(b * f, t, d)
        x = y + block.drop_path2(block.ls2(mlp))
    return tower.norm(x[:, 0]).view(b, f, d)


def reused_space_time(tower: SpaceTimeTransformer, video: Tensor, reuse: Reuse) -> Tensor:
    """The space-time tower with frame-to-frame reuse of patch tokens: [B, F, 3, H, W] -> [B, D]."""
    frames = video.shape[1]
    x = tower.embed(video)
    for i, block in enumerate(tower.blocks[:-1]):
        t = x + block.timeattn.attend(_tokenwise(reuse, 3 * i, partial(_time_qkv, block), x, frames), frames, "time")
        y = x + block.drop_path(block.attn.attend(_tokenwise(reuse, 3 * i + 1, partial(_qkv, block), t, frames),
                                                  frames, "space"))
        x = y + block.drop_path(_tokenwise(reuse, 3 * i + 2, partial(_mlp, block), y, frames))
    x = tower.blocks[-1](x, frames, cls_only=True)
    return tower.norm(x)[:, 0]


def merge_tokens(x: Tensor, size: Optional[Tensor], metric: Tensor, r: int) -> tuple[Tensor, Tensor]:
    """ToMe's bipartite soft matching: ``r`` tokens of x [M, T, D] merged into their most similar partner.

    Tokens alternate into two sets; each token of the first set finds its most similar token
    of the second (cosine of ``metric`` [M, T, C], the attention keys), and the ``r`` best
    pairs are averaged, weighted by how many original tokens each holds (``size`` [M, T, 1]).
    The class token (position 0) is never merged and stays first.
    """
    m, t, d = x.shape
    r = min(r, (t - 1) // 2)
    if size is None:
        size = x.new_ones(m, t, 1)
    if r <= 0:
        return x, size
    metric = F.normalize(metric, dim=-1)
    scores = metric[:, ::2] @ metric[:, 1::2].transpose(1, 2)
    scores[:, 0] = -torch.inf  # the class token is the first of the first set
    best, partner = scores.max(dim=-1)
    order = best.argsort(dim=-1, descending=True)
    merged, kept = order[:, :r, None], order[:, r:, None].sort(dim=1).values
    weighted = x * size
    src_x, dst_x = weighted[:, ::2], weighted[:, 1::2]
    src_size, dst_size = size[:, ::2], size[:, 1::2]
    target = partner[..., None].gather(1, merged)
    dst_x = dst_x.scatter_add(1, target.expand(-1, -1, d), src_x.gather(1, merged.expand(-1, -1, d)))
    dst_size = dst_size.scatter_add(1, target, src_size.gather(1, merged))
    size = torch.cat([src_size.gather(1, kept), dst_size], dim=1)
    x = torch.cat([src_x.gather(1, kept.expand(-1, -1, d)), dst_x], dim=1)
    return x / size, size


def merged_frames(tower: nn.Module, video: Tensor, reuse: Reuse) -> Tensor:
    """CLIP's per-frame tower with ``tome_r`` tokens merged per block in each frame: [B, F, 3, H, W] -> [B, F, D].

    Attention is proportional (each key's logit plus the log of the tokens it holds), as ToMe's.
    """
    b, f = video.shape[:2]
    x = tower.embed_frames(video.flatten(0, 1))
    patches = x.shape[1] - 1
    size = None
    last = len(tower.blocks) - 1
    for i, block in enumerate(tower.blocks):
        q, k, v = _heads(_qkv(block, x), block.attn.num_heads)
        reuse.count(len(x) * (x.shape[1] - 1), len(x) * patches)
        if i == last:
            q = q[:, :, :1]
        bias = None if size is None else size.log().view(len(x), 1, 1, -1)
        y = x[:, :q.shape[2]] + _attention_out(block, F.scaled_dot_product_attention(q, k, v, attn_mask=bias))
        if i < last:
            y, size = merge_tokens(y, size, k.mean(1), reuse.config.tome_r)
            reuse.count(len(y) * (y.shape[1] - 1), len(y) * patches)
        x = y + block.drop_path2(block.ls2(_mlp(block, y)))
    return tower.norm(x[:, 0]).view(b, f, -1)
