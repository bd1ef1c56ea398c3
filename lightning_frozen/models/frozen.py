"""FrozenInTime: the dual encoder (video tower + text tower + projections into a joint space).

The constructor only builds modules; ``lightning_frozen.create_model`` builds and loads weights.
"""
from __future__ import annotations

from typing import Union

from torch import Tensor, nn

from ..similarity import sim_matrix
from .config import TextConfig, VideoConfig
from .space_time import SpaceTimeTransformer
from .text import build_text_model, transformer_layers


class FrozenInTime(nn.Module):
    """Joint video/image and text encoder; similarity is cosine in a `projection_dim` space."""

    def __init__(self, video: Union[VideoConfig, dict, None] = None, text: Union[TextConfig, dict, None] = None,
                 projection_dim: int = 256):
        super().__init__()
        self.video_config: VideoConfig = VideoConfig.from_dict(video)
        self.text_config: TextConfig = TextConfig.from_dict(text)
        vc, tc = self.video_config, self.text_config
        self.video_model = SpaceTimeTransformer(
            **vc.geometry(), num_frames=vc.num_frames, time_init=vc.time_init,
            pos_init_std=vc.pos_init_std, drop_rate=vc.drop_rate,
            attn_drop_rate=vc.attn_drop_rate, drop_path_rate=vc.drop_path_rate,
            grad_checkpointing=vc.grad_checkpointing, patch_embed=vc.patch_embed, tubelet_size=vc.tubelet_size,
            inflate=vc.inflate,
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
