"""FrozenInTime: the dual encoder (video tower + text tower + projections into a joint space).

The towers are Frozen-in-Time's (the space-time ViT, a Hugging Face text encoder) or CLIP's
(``clip.py``); CLIP's per-frame designs project each frame and pool them over time (``temporal``).
The constructor only builds modules; ``lightning_frozen.create_model`` builds and loads weights.
"""
from __future__ import annotations

from typing import Optional, Sequence, Union

import torch
from torch import Tensor, nn

from ..similarity import sim_matrix
from .clip import (
    CLIP_NUMERICS,
    CLIPFrameTower,
    MeanPooling,
    TemporalTransformer,
    build_clip_text_model,
    imagenet_to_clip_normalisation,
)
from .config import TextConfig, VideoConfig
from .reuse import Reuse
from .space_time import SpaceTimeTransformer
from .text import build_text_model, transformer_layers

# Where each parameter comes from, for per-part learning rates: the pretrained image tower, what models time
# (new parameters for an image start: space-time attention, a temporal transformer), the text tower,
# the projections into the joint space, and a learned reuse's decisions.
PARTS = ("video", "temporal", "text", "projections", "reuse")
_TEMPORAL_NAMES = (".timeattn.", ".norm3.", "video_model.temporal_embed")


def part_of(name: str) -> str:
    """The part (one of ``PARTS``) that a ``FrozenInTime`` parameter belongs to."""
    if name.startswith("temporal.") or any(key in name for key in _TEMPORAL_NAMES):
        return "temporal"
    for prefix, part in (("video_model.", "video"), ("text_model.", "text"), ("reuse.", "reuse")):
        if name.startswith(prefix):
            return part
    return "projections"


def build_video_tower(config: VideoConfig) -> nn.Module:
    """The space-time tower (Frozen's or CLIP's numerics) or CLIP's per-frame ViT."""
    common = dict(**config.geometry(), num_frames=config.num_frames, pos_init_std=config.pos_init_std,
                  drop_rate=config.drop_rate, attn_drop_rate=config.attn_drop_rate,
                  drop_path_rate=config.drop_path_rate, grad_checkpointing=config.grad_checkpointing)
    if config.per_frame:
        return CLIPFrameTower(**common)
    numerics = CLIP_NUMERICS if config.tower == "clip" else {}
    return SpaceTimeTransformer(**common, time_init=config.time_init, patch_embed=config.patch_embed,
                                tubelet_size=config.tubelet_size, inflate=config.inflate, **numerics)


def build_temporal(config: VideoConfig, dim: int) -> Optional[nn.Module]:
    """How the per-frame designs pool projected frame embeddings over time (None: the space-time tower)."""
    if config.temporal == "mean":
        return MeanPooling()
    if config.temporal == "transformer":
        return TemporalTransformer(dim, config.temporal_layers, config.num_frames, config.pos_init_std)
    return None


class FrozenInTime(nn.Module):
    """Joint video/image and text encoder; similarity is cosine in a `projection_dim` space."""

    def __init__(self, video: Union[VideoConfig, dict, None] = None, text: Union[TextConfig, dict, None] = None,
                 projection_dim: int = 256):
        super().__init__()
        self.video_config: VideoConfig = VideoConfig.from_dict(video)
        self.text_config: TextConfig = TextConfig.from_dict(text)
        vc, tc = self.video_config, self.text_config
        self.video_model = build_video_tower(vc)
        self.temporal = build_temporal(vc, projection_dim)
        self.reuse = Reuse(vc.reuse, len(self.video_model.blocks))
        if tc.tower == "clip":
            self.text_model = build_clip_text_model(tc.name_or_path, tc.config_overrides)
            self.txt_proj = nn.Sequential(nn.Linear(self.text_model.config.hidden_size, projection_dim, bias=False))
        else:
            self.text_model = build_text_model(tc.name_or_path, tc.config_overrides)
            text_config = self.text_model.config
            text_dim = text_config.hidden_size if hasattr(text_config, "hidden_size") else text_config.dim
            self.txt_proj = nn.Sequential(nn.ReLU(), nn.Linear(text_dim, projection_dim))
        self.vid_proj = nn.Sequential(nn.Linear(self.video_model.embed_dim, projection_dim, bias=vc.tower != "clip"))

    @property
    def text_layers(self) -> nn.ModuleList:
        return transformer_layers(self.text_model)

    def encode_text(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """Tokens -> [B, P]: the pooled last hidden state (see `TextConfig.pooling`), projected."""
        out = self.text_model(input_ids=input_ids, attention_mask=attention_mask)
        if self.text_config.tower == "clip":
            return self.txt_proj(out.pooler_output)  # the end-of-text token's state
        hidden = out.last_hidden_state
        if self.text_config.pooling == "mean":
            weights = attention_mask.unsqueeze(-1).to(hidden.dtype)
            return self.txt_proj((hidden * weights).sum(1) / weights.sum(1).clamp_min(1.0))
        return self.txt_proj(hidden[:, 0])

    def _tower(self, video: Tensor, reuse: bool) -> Tensor:
        if self.video_config.tower == "clip":  # the data normalises with ImageNet's statistics, CLIP used its own
            video = imagenet_to_clip_normalisation(video)
        if reuse and self.reuse.applies(self.training):
            return self.reuse(self.video_model, video)
        return self.video_model(video)

    def encode_frames(self, video: Tensor, reuse: bool = True) -> Tensor:
        """Per-frame designs: clips [B, F, 3, H, W] -> projected frame embeddings [B, F, P]."""
        if self.temporal is None:
            raise ValueError("the space-time tower embeds whole clips, not frames (video.temporal: space_time)")
        return self.vid_proj(self._tower(video, reuse))

    def encode_video(self, video: Tensor, reuse: bool = True) -> Tensor:
        """Clips normalised with ImageNet's statistics, float [B, F, 3, H, W] (images are F=1) -> [B, P].

        ``video.reuse`` applies in eval mode (and to a learned reuse's training); ``reuse=False``
        computes exactly.
        """
        if self.temporal is None:
            return self.vid_proj(self._tower(video, reuse))
        return self.temporal(self.encode_frames(video, reuse))

    def encode_windows(self, frames: Tensor, window_frames: Union[Tensor, Sequence[Sequence[int]]],
                       batch_size: int = 32) -> Tensor:
        """Embeddings [W, P] of the windows of one video, each distinct frame encoded once.

        Args:
            frames: the video's decoded frames, normalised as clips are, [T, 3, H, W], in time order.
            window_frames: [W, F] indices into ``frames``: the frames of each window's clip.
            batch_size: frames (per-frame designs) or windows (space-time) per forward pass.

        Per-frame designs encode every frame that some window uses once, in time order, then
        pool each window's frame embeddings: the same embeddings as ``encode_video`` of each
        window's clip, without recomputing the frames that overlapping windows share (with
        ``video.reuse``, reuse runs along the video's frames). The space-time tower sees the
        frames of a clip together, so it encodes each window's clip.
        """
        index = torch.as_tensor(window_frames, dtype=torch.long, device=frames.device)
        if index.dim() != 2 or (index.numel() and (index.min() < 0 or index.max() >= len(frames))):
            raise ValueError(f"window_frames must be [windows, frames] indices into {len(frames)} frames, "
                             f"got shape {tuple(index.shape)}")
        if not len(index):
            return frames.new_zeros(0, self.vid_proj[-1].out_features)
        if self.temporal is None:
            return torch.cat([self.encode_video(frames[index[i:i + batch_size]])
                              for i in range(0, len(index), batch_size)])
        used, position = torch.unique(index, sorted=True, return_inverse=True)
        embedded = torch.cat([self.encode_frames(frames[used[i:i + batch_size]].unsqueeze(0))[0]
                              for i in range(0, len(used), batch_size)])
        return self.temporal(embedded[position])

    def forward(self, video: Tensor, input_ids: Tensor, attention_mask: Tensor) -> tuple[Tensor, Tensor]:
        """Returns (text embeddings, video embeddings), unnormalised like the original."""
        return self.encode_text(input_ids, attention_mask), self.encode_video(video)

    @staticmethod
    def similarity(text_emb: Tensor, video_emb: Tensor) -> Tensor:
        """Cosine similarity matrix [texts, videos]."""
        return sim_matrix(text_emb, video_emb)
