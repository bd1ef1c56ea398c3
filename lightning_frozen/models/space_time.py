"""SpaceTimeTransformer: the video tower of Frozen-in-Time (divided space-time attention).

Parameter names and the block's residual wiring follow the published model exactly, so
its checkpoints load unchanged and ImageNet ViT weights (timm key names) fill everything
but the temporal parts. With one frame and ``time_init="zeros"`` the model computes what
the ViT it was initialised from computes. The same tower made from CLIP's ViT takes CLIP's
numerics as options (a LayerNorm before the blocks, quick-GELU, LayerNorm eps 1e-5, no patch
bias), which add or change nothing when left at their defaults.

The video-transformer initialisation options: a Conv3d tubelet embedding (ViViT) whose kernel
is inflated from 2D weights, and time attention started as a copy of the space attention.
"""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from timm.layers import DropPath, Mlp, get_act_layer, trunc_normal_
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from .config import Inflate, PatchEmbedKind, TimeInit


def check_frame_size(height: int, width: int, img_size: int) -> None:
    """Frames must have the size the position embeddings were made for."""
    if height != img_size or width != img_size:
        raise ValueError(f"video frames are {height}x{width} but the model expects {img_size}x{img_size}: "
                         "set data.input_res to the model's img_size")


class VideoPatchEmbed(nn.Module):
    """Patch tokens, frame-major: one Conv2d shared by every frame ("conv2d", the published model),
    or one Conv3d over each tubelet of ``tubelet_size`` frames ("conv3d", ViViT), whose tokens then
    stand for F / tubelet_size time steps.

    ``inflate`` says how 2D weights become the tubelet kernel when the loader fills it from a 2D
    patch embedding (``inflated``).
    """

    def __init__(self, img_size: int, patch_size: int, embed_dim: int, in_chans: int = 3,
                 kind: PatchEmbedKind = "conv2d", tubelet_size: int = 2, inflate: Inflate = "central",
                 bias: bool = True):
        super().__init__()
        if img_size % patch_size:
            raise ValueError(f"img_size {img_size} is not a multiple of patch_size {patch_size}")
        if kind not in ("conv2d", "conv3d"):
            raise ValueError(f"patch_embed must be 'conv2d' or 'conv3d', got {kind!r}")
        if inflate not in ("central", "average"):
            raise ValueError(f"inflate must be 'central' or 'average', got {inflate!r}")
        if kind == "conv3d" and tubelet_size < 1:
            raise ValueError(f"tubelet_size must be >= 1 frame, got {tubelet_size}")
        self.img_size = img_size
        self.patch_size = patch_size
        self.num_patches = (img_size // patch_size) ** 2
        self.tubelet_size = tubelet_size if kind == "conv3d" else 1
        self.inflate = inflate
        if kind == "conv2d":
            self.proj: nn.Module = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size, bias=bias)
        else:
            kernel = (tubelet_size, patch_size, patch_size)
            self.proj = nn.Conv3d(in_chans, embed_dim, kernel_size=kernel, stride=kernel, bias=bias)

    def forward(self, video: Tensor) -> Tensor:
        b, f, c, h, w = video.shape
        check_frame_size(h, w, self.img_size)
        if isinstance(self.proj, nn.Conv2d):
            x = self.proj(video.reshape(b * f, c, h, w))  # [B*F, D, h', w']
            return x.flatten(2).transpose(1, 2).reshape(b, f * self.num_patches, -1)
        if f % self.tubelet_size:
            raise ValueError(f"clips of {f} frames do not split into tubelets of {self.tubelet_size}: "
                             "give clips a multiple of video.tubelet_size frames")
        x = self.proj(video.transpose(1, 2))  # [B, D, F/t, h', w']
        return x.flatten(2).transpose(1, 2)  # time step by time step, patches row-major within

    def inflated(self, weight: Tensor) -> Tensor:
        """A 2D patch kernel [D, C, p, p] as this tubelet kernel [D, C, t, p, p].

        "central" puts it on the tubelet's middle frame (zeros on the others), "average" spreads
        it evenly over the t frames: on a clip whose frames are all alike, both give the 2D
        embedding of that frame.
        """
        t = self.tubelet_size
        if self.inflate == "average":
            return weight.unsqueeze(2).repeat(1, 1, t, 1, 1) / t
        out = weight.new_zeros(*weight.shape[:2], t, *weight.shape[2:])
        out[:, :, t // 2] = weight
        return out


class DividedAttention(nn.Module):
    """Multi-head attention over groups of tokens, with the CLS token shared by every group.

    The CLS query attends to every token. Patch queries attend within their group (the
    same frame for space attention, the same spatial position for time attention) plus
    the CLS key/value, which every group shares.

    How it computes, and why (one design for CPU and CUDA; `space_time_reference` holds
    the straightforward version that tests and benchmarks compare it with):

    * No repeated CLS copies per group and no layout round trips: the qkv projection is
      split (a view) into the CLS row and the frame-major patches, and each attention
      reads the patches through strided views.
    * Space (groups of N patches, large): one copy puts each frame's keys and values
      behind the CLS key, ``[B*F, 1+N]``; patch queries (a view) go through
      ``scaled_dot_product_attention``, i.e. flash/cuDNN/efficient kernels on CUDA (bf16
      and fp32) and the fused kernel on CPU. The CLS query reads the same buffer with a
      key mask that keeps one CLS slot, so it needs no copy of its own.
    * Time (groups of F frames + CLS, tiny): fused SDPA kernels work in 64-128 row tiles and
      waste nearly all of them on 5-token groups, so the scores are batched matmuls ``[F, F]``
      per group with the CLS key's score as one more column, the softmax runs in fp32 and the
      CLS value joins through ``baddbmm``. The CLS query's scores over all tokens are one more
      matmul. Under torch.compile these small ops fuse.

    On a CPU the tower is bound by its linear layers, so the attention path matters little
    there; what saves CPU time is `SpaceTimeTransformer.forward` skipping the last block's work
    that cannot reach the CLS output (benchmarks/model_throughput.py measures both).
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
        """Tokens [B, 1 + F*N, D] -> [B, 1 + F*N, D]."""
        return self.attend(self.qkv(x), frames, over)

    def attend(self, qkv: Tensor, frames: int, over: Literal["space", "time"]) -> Tensor:
        """The attention and output projection of projected tokens ``qkv`` [B, 1 + F*N, 3D]."""
        b, n_tok, _ = qkv.shape
        patches = (n_tok - 1) // frames
        cls, rest = qkv.split((1, n_tok - 1), dim=1)
        cls = cls.view(b, 3, self.num_heads, self.head_dim)
        rest = rest.view(b, frames, patches, 3, self.num_heads, self.head_dim)
        attend = space_attention if over == "space" else time_attention
        cls_out, patch_out = attend(cls, rest, self.attn_drop if self.training else 0.0)
        return self.proj_drop(self.proj(torch.cat([cls_out, patch_out], dim=1)))

    def forward_cls(self, x: Tensor) -> Tensor:
        """Space attention of the CLS query alone (it attends to every token): [B, 1, D].

        For the last block, whose patch outputs never reach the CLS feature.
        """
        out = cls_query_attention(self.qkv, x, self.num_heads, self.attn_drop if self.training else 0.0)
        return self.proj_drop(self.proj(out))


def cls_query_attention(qkv: nn.Linear, x: Tensor, num_heads: int, drop: float = 0.0) -> Tensor:
    """The first token's query over every token's key and value, before the output projection: [B, 1, D].

    Only that one query is projected, so a last block whose other outputs are unused skips their work.
    """
    b, n_tok, dim = x.shape
    hd = dim // num_heads
    weight, bias = qkv.weight, qkv.bias
    q = F.linear(x[:, :1], weight[:dim], None if bias is None else bias[:dim])
    kv = F.linear(x, weight[dim:], None if bias is None else bias[dim:])
    k, v = kv.view(b, n_tok, 2, num_heads, hd).permute(2, 0, 3, 1, 4).unbind(0)
    out = F.scaled_dot_product_attention(q.view(b, 1, num_heads, hd).transpose(1, 2), k, v, dropout_p=drop)
    return out.transpose(1, 2).reshape(b, 1, dim)


def space_attention(cls: Tensor, rest: Tensor, drop: float) -> tuple[Tensor, Tensor]:
    """cls [B, 3, h, hd], rest [B, F, N, 3, h, hd] -> outputs [B, 1, D], [B, F*N, D]."""
    b, frames, patches, _, h, hd = rest.shape
    q_cls, kv_cls = cls.split((1, 2), dim=1)
    q_rest, kv_rest = rest.split((1, 2), dim=3)
    # Each frame's keys and values behind the CLS one: the only copy this attention makes.
    kv = torch.cat([kv_cls[:, None, None].expand(b, frames, 1, 2, h, hd), kv_rest], dim=2)
    k, v = kv.view(b * frames, 1 + patches, 2, h, hd).permute(2, 0, 3, 1, 4).unbind(0)
    q = q_rest.reshape(b * frames, patches, h, hd).transpose(1, 2)
    patch_out = F.scaled_dot_product_attention(q, k, v, dropout_p=drop)
    patch_out = patch_out.transpose(1, 2).reshape(b, frames * patches, h * hd)
    # The CLS query over every token once: the CLS slot of frame 0 and all patch slots.
    mask = None
    if frames > 1:
        mask = torch.ones(frames, 1 + patches, dtype=torch.bool, device=kv.device)
        mask[1:, 0] = False
        mask = mask.view(1, 1, 1, -1)
    k_all, v_all = kv.view(b, frames * (1 + patches), 2, h, hd).permute(2, 0, 3, 1, 4).unbind(0)
    cls_out = F.scaled_dot_product_attention(q_cls.transpose(1, 2), k_all, v_all, attn_mask=mask, dropout_p=drop)
    return cls_out.transpose(1, 2).reshape(b, 1, h * hd), patch_out


def _softmax(logits: Tensor, scale: float, drop: float, dtype: torch.dtype) -> Tensor:
    """Attention weights from raw scores: fp32 softmax (as SDPA kernels do), dropout, back to `dtype`."""
    probs = (logits.float() * scale).softmax(dim=-1)
    return F.dropout(probs, drop, training=drop > 0).to(dtype)


def time_attention(cls: Tensor, rest: Tensor, drop: float) -> tuple[Tensor, Tensor]:
    """cls [B, 3, h, hd], rest [B, F, N, 3, h, hd] -> outputs [B, 1, D], [B, F*N, D]."""
    b, frames, patches, _, h, hd = rest.shape
    scale = hd ** -0.5
    q_cls, k_cls, v_cls = cls.unbind(1)  # B,h,hd
    # Groups of one spatial position: B,h,N,F,hd (one copy of q, k and v).
    q, k, v = (t.permute(0, 3, 2, 1, 4).contiguous() for t in rest.unbind(3))
    flat_k, flat_v = k.view(b, h, patches * frames, hd), v.view(b, h, patches * frames, hd)

    to_cls = torch.matmul(q.view(b, h, patches * frames, hd), k_cls.unsqueeze(-1))
    logits = torch.cat([to_cls.view(b, h, patches, frames, 1), torch.matmul(q, k.transpose(-1, -2))], dim=-1)
    probs = _softmax(logits, scale, drop, v.dtype)  # B,h,N,F,1+F: the CLS key first
    from_cls = probs[..., :1] * v_cls[:, :, None, None]
    patch_out = torch.baddbmm(from_cls.view(-1, frames, hd), probs[..., 1:].reshape(-1, frames, frames),
                              v.view(-1, frames, hd))
    patch_out = patch_out.view(b, h, patches, frames, hd).permute(0, 3, 2, 1, 4).reshape(b, frames * patches, h * hd)

    q_cls = q_cls.unsqueeze(2)  # B,h,1,hd
    to_cls = torch.matmul(q_cls, k_cls.unsqueeze(-1))
    logits = torch.cat([to_cls, torch.matmul(q_cls, flat_k.transpose(-1, -2))], dim=-1)
    probs = _softmax(logits, scale, drop, v.dtype)  # B,h,1,1+N*F
    from_cls = probs[..., :1] * v_cls.unsqueeze(2)
    cls_out = torch.baddbmm(from_cls.view(b * h, 1, hd), probs[..., 1:].reshape(b * h, 1, patches * frames),
                            flat_v.reshape(b * h, patches * frames, hd))
    return cls_out.view(b, h, 1, hd).transpose(1, 2).reshape(b, 1, h * hd), patch_out


class SpaceTimeBlock(nn.Module):
    """Time attention, then space attention, then MLP; the space residual is x, not x + time."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 drop: float = 0.0, attn_drop: float = 0.0, drop_path: float = 0.0, norm_eps: float = 1e-6,
                 act_layer: str = "gelu"):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = DividedAttention(dim, num_heads, qkv_bias, attn_drop, drop)
        self.timeattn = DividedAttention(dim, num_heads, qkv_bias, attn_drop, drop)
        self.norm3 = nn.LayerNorm(dim, eps=norm_eps)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=get_act_layer(act_layer), drop=drop)

    def copy_space_to_time(self) -> None:
        """Time attention (and its norm) as copies of the space attention (and its norm)."""
        self.timeattn.load_state_dict(self.attn.state_dict())
        self.norm3.load_state_dict(self.norm1.state_dict())

    def forward(self, x: Tensor, frames: int, cls_only: bool = False) -> Tensor:
        """[B, 1 + F*N, D] -> the same, or with `cls_only` just the CLS token [B, 1, D]."""
        t = x + self.timeattn(self.norm3(x), frames, "time")
        if cls_only:
            y = x[:, :1] + self.drop_path(self.attn.forward_cls(self.norm1(t)))
        else:
            y = x + self.drop_path(self.attn(self.norm1(t), frames, "space"))
        return y + self.drop_path(self.mlp(self.norm2(y)))


class SpaceTimeTransformer(nn.Module):
    """Video ViT with divided space-time attention; returns the final-norm CLS token.

    ``num_frames`` is the clip length it takes; with ``patch_embed="conv3d"`` the temporal
    embedding holds num_frames / tubelet_size time steps.
    ``pre_norm``, ``act_layer``, ``norm_eps`` and ``patch_bias`` give CLIP's numerics (timm's names:
    ``norm_pre`` is CLIP's ``pre_layrnorm``); their defaults are the published tower's.
    """

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
        patch_embed: PatchEmbedKind = "conv2d",
        tubelet_size: int = 2,
        inflate: Inflate = "central",
        pre_norm: bool = False,
        act_layer: str = "gelu",
        norm_eps: float = 1e-6,
        patch_bias: bool = True,
    ):
        super().__init__()
        if time_init not in ("zeros", "rand", "copy"):
            raise ValueError(f"time_init must be 'zeros', 'rand' or 'copy', got {time_init!r}")
        self.num_frames = num_frames
        self.time_init = time_init
        self.embed_dim = self.num_features = embed_dim
        self.grad_checkpointing = grad_checkpointing
        self.patch_embed = VideoPatchEmbed(img_size, patch_size, embed_dim, kind=patch_embed,
                                           tubelet_size=tubelet_size, inflate=inflate, bias=patch_bias)
        if num_frames % self.patch_embed.tubelet_size:
            raise ValueError(f"num_frames {num_frames} is not a multiple of tubelet_size {tubelet_size}")
        self.patches_per_frame = self.patch_embed.num_patches
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, self.patches_per_frame + 1, embed_dim))
        self.temporal_embed = nn.Parameter(torch.zeros(1, self.time_steps(num_frames), embed_dim))
        self.pos_drop = nn.Dropout(drop_rate)
        self.norm_pre = nn.LayerNorm(embed_dim, eps=norm_eps) if pre_norm else nn.Identity()
        rates = torch.linspace(0, drop_path_rate, depth).tolist()
        self.blocks = nn.ModuleList(
            SpaceTimeBlock(embed_dim, num_heads, mlp_ratio, True, drop_rate, attn_drop_rate, r, norm_eps, act_layer)
            for r in rates
        )
        self.norm = nn.LayerNorm(embed_dim, eps=norm_eps)
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
        if time_init in ("rand", "copy"):
            # Frame order only enters through the temporal embedding: at zero every frame
            # looks alike and the model starts (and long stays) blind to motion direction.
            trunc_normal_(self.temporal_embed, std=pos_init_std)
            if time_init == "copy":  # time attention starts as the space attention (the loader copies loaded weights)
                for block in self.blocks:
                    block.copy_space_to_time()
        else:
            # Time attention starts as the identity (its output is zero) and the temporal
            # embedding at zero, so the model begins as the image ViT it was initialised from.
            for block in self.blocks:
                nn.init.zeros_(block.timeattn.qkv.weight)
                nn.init.zeros_(block.timeattn.qkv.bias)
                nn.init.ones_(block.timeattn.proj.weight)
                nn.init.zeros_(block.timeattn.proj.bias)

    def time_steps(self, frames: int) -> int:
        """Token time steps of a clip of `frames` frames (frames / tubelet_size with a Conv3d embedding)."""
        return frames // self.patch_embed.tubelet_size

    def embed(self, video: Tensor) -> Tensor:
        """Patch tokens plus CLS with spatial and temporal position embeddings."""
        if video.shape[1] > self.num_frames:
            raise ValueError(
                f"clip has {video.shape[1]} frames but the model holds temporal embeddings for {self.num_frames}: "
                "raise video.num_frames (checkpoints inflate with temporal_fix)"
            )
        x = self.patch_embed(video)
        b, _, dim = x.shape
        steps = self.time_steps(video.shape[1])
        # broadcast over frames and patches: no full-size copies of the embeddings
        x = x.view(b, steps, self.patches_per_frame, dim) + self.pos_embed[:, None, 1:]
        x = (x + self.temporal_embed[:, :steps, None]).flatten(1, 2)
        cls = (self.cls_token + self.pos_embed[:, :1]).expand(b, -1, -1)
        return self.norm_pre(self.pos_drop(torch.cat([cls, x], dim=1)))

    def _tokens(self, video: Tensor, cls_only: bool) -> Tensor:
        frames = self.time_steps(video.shape[1])
        x = self.embed(video)
        last = len(self.blocks) - 1
        for i, block in enumerate(self.blocks):
            only = cls_only and i == last
            if self.grad_checkpointing and self.training and torch.is_grad_enabled():
                x = checkpoint(block, x, frames, only, use_reentrant=False)
            else:
                x = block(x, frames, only)
        return self.norm(x)

    def forward_features(self, video: Tensor) -> Tensor:
        """All tokens after the final norm, [B, 1+F*N, D]."""
        return self._tokens(video, cls_only=False)

    def forward(self, video: Tensor) -> Tensor:
        """video [B, F, 3, H, W] (F <= num_frames) -> CLS feature [B, D].

        The last block computes only what reaches the CLS token (its time attention, then
        the CLS query's space attention and MLP): the patch tokens' space attention and MLP
        there are dead work.
        """
        return self._tokens(video, cls_only=True)[:, 0]
