"""SpaceTimeTransformer: the video tower of Frozen-in-Time (divided space-time attention).

Parameter names and the block's residual wiring follow the published model exactly, so
its checkpoints load unchanged and ImageNet ViT weights (timm key names) fill everything
but the temporal parts. With one frame and ``time_init="zeros"`` the model computes what
the ViT it was initialised from computes.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from timm.layers import DropPath, Mlp, trunc_normal_
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

TimeInit = Literal["zeros", "rand"]


@dataclass(frozen=True)
class Geometry:
    img_size: int
    patch_size: int
    embed_dim: int
    depth: int
    num_heads: int


# The published towers: ViT-B/16 and ViT-B/32 at 224 px.
PRESETS: dict[str, Geometry] = {
    "base_patch16_224": Geometry(224, 16, 768, 12, 12),
    "base_patch32_224": Geometry(224, 32, 768, 12, 12),
}


class VideoPatchEmbed(nn.Module):
    """One Conv2d patchifier shared by every frame; tokens come out frame-major."""

    def __init__(self, img_size: int, patch_size: int, embed_dim: int, in_chans: int = 3):
        super().__init__()
        if img_size % patch_size:
            raise ValueError(f"img_size {img_size} is not a multiple of patch_size {patch_size}")
        self.img_size = img_size
        self.patch_size = patch_size
        self.num_patches = (img_size // patch_size) ** 2
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, video: Tensor) -> Tensor:
        b, f, c, h, w = video.shape
        if h != self.img_size or w != self.img_size:
            raise ValueError(
                f"video frames are {h}x{w} but the model expects {self.img_size}x{self.img_size}: "
                "set data.input_res to the model's img_size"
            )
        x = self.proj(video.reshape(b * f, c, h, w))  # [B*F, D, h', w']
        return x.flatten(2).transpose(1, 2).reshape(b, f * self.num_patches, -1)


class DividedAttention(nn.Module):
    """Multi-head attention over groups of tokens, with the CLS token shared by every group.

    The CLS query attends to every token. Patch queries attend within their group (the
    same frame for space attention, the same spatial position for time attention) plus
    the CLS key/value, which is prepended to every group.
    """

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, attn_drop: float = 0.0, proj_drop: float = 0.0):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"embed_dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.attn_drop = attn_drop
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: Tensor, frames: int, over: Literal["space", "time"]) -> Tensor:
        b, n_tok, d = x.shape
        h, hd = self.num_heads, self.head_dim
        patches = (n_tok - 1) // frames
        qkv = self.qkv(x).reshape(b, n_tok, 3, h, hd).permute(2, 0, 3, 1, 4)  # 3,B,h,N,hd
        q, k, v = qkv.unbind(0)
        drop = self.attn_drop if self.training else 0.0

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
        return self.proj_drop(self.proj(out))


class SpaceTimeBlock(nn.Module):
    """Time attention, then space attention, then MLP; the space residual is x, not x + time."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 drop: float = 0.0, attn_drop: float = 0.0, drop_path: float = 0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = DividedAttention(dim, num_heads, qkv_bias, attn_drop, drop)
        self.timeattn = DividedAttention(dim, num_heads, qkv_bias, attn_drop, drop)
        self.norm3 = nn.LayerNorm(dim, eps=1e-6)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=nn.GELU, drop=drop)

    def forward(self, x: Tensor, frames: int) -> Tensor:
        t = x + self.timeattn(self.norm3(x), frames, "time")
        y = x + self.drop_path(self.attn(self.norm1(t), frames, "space"))
        return y + self.drop_path(self.mlp(self.norm2(y)))


class SpaceTimeTransformer(nn.Module):
    """Video ViT with divided space-time attention; returns the final-norm CLS token."""

    def __init__(
        self,
        img_size: int = 224,
        patch_size: int = 16,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        num_frames: int = 4,
        time_init: TimeInit = "zeros",
        pos_init_std: float = 0.02,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        grad_checkpointing: bool = False,
    ):
        super().__init__()
        if time_init not in ("zeros", "rand"):
            raise ValueError(f"time_init must be 'zeros' or 'rand', got {time_init!r}")
        self.num_frames = num_frames
        self.embed_dim = self.num_features = embed_dim
        self.grad_checkpointing = grad_checkpointing
        self.patch_embed = VideoPatchEmbed(img_size, patch_size, embed_dim)
        self.patches_per_frame = self.patch_embed.num_patches
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, self.patches_per_frame + 1, embed_dim))
        self.temporal_embed = nn.Parameter(torch.zeros(1, num_frames, embed_dim))
        self.pos_drop = nn.Dropout(drop_rate)
        rates = torch.linspace(0, drop_path_rate, depth).tolist()
        self.blocks = nn.ModuleList(
            SpaceTimeBlock(embed_dim, num_heads, mlp_ratio, True, drop_rate, attn_drop_rate, r) for r in rates
        )
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self._init_weights(time_init, pos_init_std)

    def _init_weights(self, time_init: TimeInit, pos_init_std: float) -> None:
        # ViT's 0.02 suits long runs or pretrained weights. A tower trained from scratch for
        # a few hundred steps learns where and when things are much sooner when the position
        # embeddings start large enough to stand out from the patch content (the demo: 0.5).
        trunc_normal_(self.pos_embed, std=pos_init_std)
        trunc_normal_(self.cls_token, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if time_init == "rand":
            # Frame order only enters through the temporal embedding: at zero every frame
            # looks alike and the model starts (and long stays) blind to motion direction.
            trunc_normal_(self.temporal_embed, std=pos_init_std)
        else:
            # Time attention starts as the identity (its output is zero) and the temporal
            # embedding at zero, so the model begins as the image ViT it was initialised from.
            for block in self.blocks:
                nn.init.zeros_(block.timeattn.qkv.weight)
                nn.init.zeros_(block.timeattn.qkv.bias)
                nn.init.ones_(block.timeattn.proj.weight)
                nn.init.zeros_(block.timeattn.proj.bias)

    def embed(self, video: Tensor) -> Tensor:
        """Patch tokens plus CLS with spatial and temporal position embeddings."""
        frames = video.shape[1]
        if frames > self.num_frames:
            raise ValueError(
                f"clip has {frames} frames but the model holds temporal embeddings for {self.num_frames}: "
                "raise video.num_frames (checkpoints inflate with temporal_fix)"
            )
        x = self.patch_embed(video)
        b, _, dim = x.shape
        # broadcast over frames and patches: no full-size copies of the embeddings
        x = x.view(b, frames, self.patches_per_frame, dim) + self.pos_embed[:, None, 1:]
        x = (x + self.temporal_embed[:, :frames, None]).flatten(1, 2)
        cls = (self.cls_token + self.pos_embed[:, :1]).expand(b, -1, -1)
        return self.pos_drop(torch.cat([cls, x], dim=1))

    def forward_features(self, video: Tensor) -> Tensor:
        """All tokens after the final norm, [B, 1 + F*N, D]."""
        frames = video.shape[1]
        x = self.embed(video)
        for block in self.blocks:
            if self.grad_checkpointing and self.training and torch.is_grad_enabled():
                x = checkpoint(block, x, frames, use_reentrant=False)
            else:
                x = block(x, frames)
        return self.norm(x)

    def forward(self, video: Tensor) -> Tensor:
        """video [B, F, 3, H, W] (F <= num_frames) -> CLS feature [B, D]."""
        return self.forward_features(video)[:, 0]
