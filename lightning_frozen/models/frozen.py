"""FrozenInTime: the dual encoder (video tower + text tower + projections into a joint space).

The constructor only builds modules; ``lightning_frozen.create_model`` builds and loads weights.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal, Optional, Union

from torch import Tensor, nn

from ..similarity import sim_matrix
from .space_time import PRESETS, SpaceTimeTransformer, TimeInit
from .text import build_text_model, transformer_layers


@dataclass
class VideoConfig:
    """Video tower. `arch` picks a published geometry; any geometry field given overrides it.

    Attributes:
        arch: published geometry ("base_patch16_224", "base_patch32_224") or null for a custom one.
        img_size: input height and width in pixels.
        patch_size: patch side in pixels.
        embed_dim: token width.
        depth: number of space-time blocks.
        num_heads: attention heads per block.
        num_frames: frames the temporal embedding holds (clips may have fewer).
        time_init: "zeros" starts time attention as the identity (from image weights); "rand" draws it.
        pos_init_std: std of the spatial (and, with time_init "rand", temporal) position embeddings
            at init; ViT's 0.02 suits long runs, a short run from scratch learns position and
            motion far sooner with about 0.5.
        drop_rate: dropout after embeddings and in MLPs.
        attn_drop_rate: attention dropout.
        drop_path_rate: stochastic depth of the last block (linear from 0).
        grad_checkpointing: recompute each block in backward to save memory.
        pretrained: ImageNet ViT weights through timm (needs the hub or its cache), loaded by
            ``create_model`` when no other weights are given.
        pretrained_path: a local ViT state dict (timm key names), loaded likewise.
    """

    arch: Optional[str] = "base_patch16_224"
    img_size: Optional[int] = None
    patch_size: Optional[int] = None
    embed_dim: Optional[int] = None
    depth: Optional[int] = None
    num_heads: Optional[int] = None
    num_frames: int = 4
    time_init: TimeInit = "zeros"
    pos_init_std: float = 0.02
    drop_rate: float = 0.0
    attn_drop_rate: float = 0.0
    drop_path_rate: float = 0.0
    grad_checkpointing: bool = False
    pretrained: bool = False
    pretrained_path: Optional[str] = None

    def geometry(self) -> dict[str, int]:
        if self.arch is not None and self.arch not in PRESETS:
            raise ValueError(f"video.arch {self.arch!r} is unknown: use one of {sorted(PRESETS)} or null")
        preset = asdict(PRESETS[self.arch]) if self.arch else {}
        out = {}
        for name in ("img_size", "patch_size", "embed_dim", "depth", "num_heads"):
            value = getattr(self, name)
            if value is None and name not in preset:
                raise ValueError(f"video.{name} is required when video.arch is null")
            out[name] = value if value is not None else preset[name]
        return out


@dataclass
class TextConfig:
    """Text tower: any Hugging Face encoder by hub id or local directory.

    Attributes:
        name_or_path: hub id, local directory, or "bundled:all-MiniLM-L6-v2".
        pretrained: ``create_model`` loads the encoder's weights when no other weights are given
            (false: its architecture, randomly initialised).
        config_overrides: Hugging Face config fields to change, e.g. {num_hidden_layers: 3}.
        pooling: the sentence vector. "first" is the first token, as Frozen-in-Time and its
            published checkpoints use; "mean" averages the real tokens, as sentence-transformers
            models such as the bundled MiniLM were trained, so their meaning is there from step one.
    """

    name_or_path: str = "distilbert-base-uncased"
    pretrained: bool = True
    config_overrides: dict[str, Any] = field(default_factory=dict)
    pooling: Literal["first", "mean"] = "first"

    def __post_init__(self) -> None:
        if self.pooling not in ("first", "mean"):
            raise ValueError(f"text.pooling {self.pooling!r} is unknown: use 'first' (published checkpoints) or 'mean'")


def as_config(value: Union[dict, Any, None], cls: type) -> Any:
    """A config dataclass from itself, a dict of its fields (unknown keys fail by name) or None."""
    if value is None:
        return cls()
    if isinstance(value, cls):
        return value
    if isinstance(value, dict):
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(value) - known)
        if unknown:
            raise ValueError(f"unknown {cls.__name__} keys {unknown}; valid keys: {sorted(known)}")
        return cls(**value)
    raise TypeError(f"expected a dict or {cls.__name__}, got {type(value).__name__}")


class FrozenInTime(nn.Module):
    """Joint video/image and text encoder; similarity is cosine in a `projection_dim` space."""

    def __init__(self, video: Union[VideoConfig, dict, None] = None, text: Union[TextConfig, dict, None] = None,
                 projection_dim: int = 256):
        super().__init__()
        self.video_config: VideoConfig = as_config(video, VideoConfig)
        self.text_config: TextConfig = as_config(text, TextConfig)
        vc, tc = self.video_config, self.text_config
        self.video_model = SpaceTimeTransformer(
            **vc.geometry(), num_frames=vc.num_frames, time_init=vc.time_init,
            pos_init_std=vc.pos_init_std, drop_rate=vc.drop_rate,
            attn_drop_rate=vc.attn_drop_rate, drop_path_rate=vc.drop_path_rate,
            grad_checkpointing=vc.grad_checkpointing,
        )
        self.text_model = build_text_model(tc.name_or_path, tc.config_overrides)
        text_config = self.text_model.config
        text_dim = text_config.hidden_size if hasattr(text_config, "hidden_size") else text_config.dim
        self.txt_proj = nn.Sequential(nn.ReLU(), nn.Linear(text_dim, projection_dim))
        self.vid_proj = nn.Sequential(nn.Linear(self.video_model.embed_dim, projection_dim))

    @property
    def text_layers(self) -> nn.ModuleList:
        return transformer_layers(self.text_model)

    def encode_text(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """Tokens -> [B, P]: the pooled last hidden state (see `TextConfig.pooling`), projected."""
        hidden = self.text_model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        if self.text_config.pooling == "mean":
            weights = attention_mask.unsqueeze(-1).to(hidden.dtype)
            return self.txt_proj((hidden * weights).sum(1) / weights.sum(1).clamp_min(1.0))
        return self.txt_proj(hidden[:, 0])

    def encode_video(self, video: Tensor) -> Tensor:
        """Normalised float clips [B, F, 3, H, W] (images are F=1) -> [B, P]."""
        return self.vid_proj(self.video_model(video))

    def forward(self, video: Tensor, input_ids: Tensor, attention_mask: Tensor) -> tuple[Tensor, Tensor]:
        """Returns (text embeddings, video embeddings), unnormalised like the original."""
        return self.encode_text(input_ids, attention_mask), self.encode_video(video)

    @staticmethod
    def similarity(text_emb: Tensor, video_emb: Tensor) -> Tensor:
        """Cosine similarity matrix [texts, videos]."""
        return sim_matrix(text_emb, video_emb)
