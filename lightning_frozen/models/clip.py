"""CLIP towers: the text transformer, the per-frame video designs of CLIP4Clip, and CLIP's weights.

The per-frame video tower is timm's ``VisionTransformer`` with CLIP's numerics (a LayerNorm
before the blocks, quick-GELU, LayerNorm eps 1e-5, no patch bias), so its parameters carry
timm's names, the same names the space-time tower uses: one key mapping
(``convert_clip_state_dict``) takes a Hugging Face ``CLIPModel``'s weights into either.
The text tower is Hugging Face's own CLIP text transformer. The frame embeddings are
projected by CLIP's visual projection one by one, then pooled over time: ``MeanPooling``
(CLIP4Clip meanP) or ``TemporalTransformer`` (CLIP4Clip seqTransf).
"""
from __future__ import annotations

import logging
from functools import partial
from typing import Any, Mapping, Optional

import torch
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
from timm.layers import get_act_layer, trunc_normal_
from timm.models.vision_transformer import Block, VisionTransformer
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from ..tokenizer import is_local, resolve_name_or_path
from .space_time import check_frame_size, cls_query_attention

log = logging.getLogger(__name__)

# CLIP's ViT, as options of the space-time tower (SpaceTimeTransformer keyword arguments).
CLIP_NUMERICS = {"pre_norm": True, "act_layer": "quick_gelu", "norm_eps": 1e-5, "patch_bias": False}
# Hugging Face CLIP layer names -> timm block names (q, k and v are fused into qkv).
_LAYER_NAMES = {"layer_norm1": "norm1", "layer_norm2": "norm2", "self_attn.out_proj": "attn.proj",
                "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2"}


def imagenet_to_clip_normalisation(video: Tensor) -> Tensor:
    """Frames normalised with ImageNet's statistics (the data's) as CLIP's statistics would have
    normalised them: CLIP's weights see the inputs they were trained on. [..., 3, H, W]."""
    scale = torch.tensor(IMAGENET_DEFAULT_STD) / torch.tensor(OPENAI_CLIP_STD)
    shift = (torch.tensor(IMAGENET_DEFAULT_MEAN) - torch.tensor(OPENAI_CLIP_MEAN)) / torch.tensor(OPENAI_CLIP_STD)
    return video * scale.to(video).view(3, 1, 1) + shift.to(video).view(3, 1, 1)


def clip_hub_id(arch: Optional[str]) -> str:
    """The hub id of a CLIP video arch: OpenAI's models are named as the arch."""
    if not arch or not arch.startswith("clip-"):
        raise ValueError(f"video.pretrained with the CLIP tower needs a CLIP arch (clip-vit-base-patch16 or "
                         f"clip-vit-base-patch32), got {arch!r}: or set video.pretrained_path to a CLIPModel folder")
    return f"openai/{arch}"


def clip_offline_hint(name_or_path: str) -> str:
    return (f"could not read CLIP weights from {name_or_path!r}: it is neither a local CLIPModel folder nor in the "
            "Hugging Face cache, and the hub is unreachable (or HF_HUB_OFFLINE=1). Save one where the hub is reachable "
            "(CLIPModel.from_pretrained('openai/clip-vit-base-patch16').save_pretrained('DIR'), and the tokenizer "
            "likewise) and set model.video.pretrained_path and model.text.name_or_path to DIR.")


class CLIPFrameTower(VisionTransformer):
    """CLIP's ViT applied to every frame alone: clips [B, F, 3, H, W] -> frame features [B, F, D].

    The features are the final-norm class tokens (CLIP's ``post_layernorm`` of its pooled
    output). The last block computes only the class token's row, the one the output reads.
    """

    def __init__(self, img_size: int, patch_size: int, embed_dim: int, depth: int, num_heads: int,
                 num_frames: int = 12, mlp_ratio: float = 4.0, pos_init_std: float = 0.02, drop_rate: float = 0.0,
                 attn_drop_rate: float = 0.0, drop_path_rate: float = 0.0, grad_checkpointing: bool = False):
        super().__init__(img_size=img_size, patch_size=patch_size, embed_dim=embed_dim, depth=depth,
                         num_heads=num_heads, mlp_ratio=mlp_ratio, num_classes=0, global_pool="token", pre_norm=True,
                         act_layer="quick_gelu", norm_layer=partial(nn.LayerNorm, eps=1e-5), proj_drop_rate=drop_rate,
                         pos_drop_rate=drop_rate, attn_drop_rate=attn_drop_rate, drop_path_rate=drop_path_rate)
        self.img_size = img_size
        self.num_frames = num_frames  # the clip length the data and curriculum checks hold clips to
        self.grad_checkpointing = grad_checkpointing
        # A tower trained from scratch learns where things are sooner with larger position embeddings.
        trunc_normal_(self.pos_embed, std=pos_init_std)

    def embed_frames(self, images: Tensor) -> Tensor:
        """Images [N, 3, H, W] -> tokens [N, 1 + P, D]: patches, class token, positions, pre-norm."""
        check_frame_size(images.shape[-2], images.shape[-1], self.img_size)
        x = self._pos_embed(self.patch_embed(images))
        return self.norm_pre(self.patch_drop(x))

    def forward(self, video: Tensor) -> Tensor:
        b, f = video.shape[:2]
        x = self.embed_frames(video.flatten(0, 1))
        for block in self.blocks[:-1]:
            if self.grad_checkpointing and self.training and torch.is_grad_enabled():
                x = checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
        x = class_token_block(self.blocks[-1], x)
        return self.norm(x[:, 0]).view(b, f, -1)


def class_token_block(block: Block, x: Tensor) -> Tensor:
    """A timm block's output for the class token alone [N, 1, D] (its query attends to every token)."""
    attn = block.attn
    out = cls_query_attention(attn.qkv, block.norm1(x), attn.num_heads, attn.attn_drop.p if block.training else 0.0)
    y = x[:, :1] + block.drop_path1(block.ls1(attn.proj_drop(attn.proj(attn.norm(out)))))
    return y + block.drop_path2(block.ls2(block.mlp(block.norm2(y))))


def clip_block(dim: int, num_heads: int, drop_path: float = 0.0) -> Block:
    """A residual attention block as CLIP's: pre-norm, quick-GELU MLP of 4x width, LayerNorm eps 1e-5."""
    return Block(dim, num_heads, mlp_ratio=4.0, qkv_bias=True, drop_path=drop_path,
                 act_layer=get_act_layer("quick_gelu"), norm_layer=partial(nn.LayerNorm, eps=1e-5))


class MeanPooling(nn.Module):
    """CLIP4Clip meanP: the mean of the L2-normalised frame embeddings [B, F, P] -> [B, P]."""

    def forward(self, frames: Tensor) -> Tensor:
        return F.normalize(frames, dim=-1).mean(1)


class TemporalTransformer(nn.Module):
    """CLIP4Clip seqTransf: frame position embeddings, CLIP blocks over the frames (each sees every
    other), a residual to the frame embeddings, then the mean of the L2-normalised results.

    CLIP4Clip initialises the blocks and positions from CLIP's first text layers (heads = width / 64);
    ``convert_clip_state_dict`` does the same when the widths agree.
    """

    def __init__(self, dim: int, depth: int, num_frames: int, pos_init_std: float = 0.02):
        super().__init__()
        self.frame_pos_embed = nn.Parameter(torch.zeros(1, num_frames, dim))
        self.blocks = nn.ModuleList(clip_block(dim, max(1, dim // 64)) for _ in range(depth))
        trunc_normal_(self.frame_pos_embed, std=pos_init_std)
        for module in self.blocks.modules():
            if isinstance(module, nn.Linear):
                trunc_normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)

    def forward(self, frames: Tensor) -> Tensor:
        if frames.shape[1] > self.frame_pos_embed.shape[1]:
            raise ValueError(f"clip has {frames.shape[1]} frames but the temporal transformer holds positions for "
                             f"{self.frame_pos_embed.shape[1]}: raise model.video.num_frames")
        x = frames + self.frame_pos_embed[:, :frames.shape[1]]
        for block in self.blocks:
            x = block(x)
        return F.normalize(x + frames, dim=-1).mean(1)


# -- text tower --------------------------------------------------------------------------------------
def clip_text_config(name_or_path: str, overrides: Optional[Mapping[str, Any]] = None):
    """CLIP's text config: from a CLIPModel folder or hub id, else CLIP's defaults (those of
    openai/clip-vit-base-patch16 and -patch32), then ``overrides``.

    Any other ``name_or_path`` (say the bundled MiniLM) only names the tokenizer: set
    ``vocab_size`` and ``eos_token_id`` in ``overrides`` to that tokenizer's.
    """
    import transformers

    name = resolve_name_or_path(name_or_path)
    try:
        config = transformers.AutoConfig.from_pretrained(name)
    except OSError:
        if is_local(name):
            raise
        log.info("building CLIP's text architecture from its defaults (%s not reachable)", name)
        config = transformers.CLIPTextConfig()
    if isinstance(config, transformers.CLIPConfig):
        config = config.text_config
    elif not isinstance(config, transformers.CLIPTextConfig):
        config = transformers.CLIPTextConfig()  # another model's folder: only its tokenizer is used
    for key, value in (overrides or {}).items():
        if not hasattr(config, key):
            raise ValueError(f"text.config_overrides key {key!r} is not a CLIPTextConfig field")
        setattr(config, key, value)
    return config


def build_clip_text_model(name_or_path: str, overrides: Optional[Mapping[str, Any]] = None) -> nn.Module:
    """CLIP's text transformer with fresh weights, keyed as ``CLIPModel.text_model`` (``embeddings.*``,
    ``encoder.layers.*``, ``final_layer_norm``); its ``pooler_output`` is the end-of-text state."""
    import transformers

    model = transformers.CLIPTextModel(clip_text_config(name_or_path, overrides))
    return getattr(model, "text_model", model)  # transformers 4 wraps the transformer in one more module


def check_clip_tokenizer(config: Any, tokenizer: Any, name: str) -> None:
    """The CLIP text tower pools at its end-of-text id: the tokenizer must put that id at each caption's end."""
    end = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.sep_token_id
    size = len(tokenizer)
    if size > config.vocab_size:
        raise ValueError(f"the tokenizer of {name!r} has {size} tokens but the CLIP text tower's vocab_size is "
                         f"{config.vocab_size}: set model.text.config_overrides.vocab_size: {size}")
    if config.eos_token_id == 2:  # CLIP's original configs: the end-of-text id is the largest id
        if end != size - 1:
            raise ValueError(f"the CLIP text tower pools at the largest token id (eos_token_id 2, CLIP's own "
                             f"tokenizer), but the tokenizer of {name!r} ends captions with id {end}: set "
                             f"model.text.config_overrides.eos_token_id: {end}")
    elif config.eos_token_id != end:
        raise ValueError(f"the CLIP text tower pools at token id {config.eos_token_id} but the tokenizer of "
                         f"{name!r} ends captions with id {end}: set model.text.config_overrides.eos_token_id: {end}")


# -- weights -----------------------------------------------------------------------------------------
def is_clip_state_dict(state: Mapping[str, Tensor]) -> bool:
    """Hugging Face ``CLIPModel`` key names (a folder's weights file, or its ``state_dict()``)."""
    return "vision_model.embeddings.patch_embedding.weight" in state or (
        "text_projection.weight" in state and "text_model.embeddings.token_embedding.weight" in state)


def read_clip_weights(name_or_path: str) -> dict[str, Tensor]:
    """A ``CLIPModel``'s state dict from a local folder, or a hub id (the hub or its cache)."""
    import transformers

    from .text import quiet_transformers

    name = resolve_name_or_path(name_or_path)
    try:
        config = transformers.AutoConfig.from_pretrained(name)
        if not isinstance(config, transformers.CLIPConfig):
            raise ValueError(f"{name_or_path!r} is a {type(config).__name__}, not a CLIPModel: CLIP weights come from "
                             "a CLIPModel folder or hub id (or set pretrained: false to start from scratch)")
        with quiet_transformers():
            model = transformers.CLIPModel.from_pretrained(name)
    except OSError as err:
        raise OSError(clip_offline_hint(name_or_path)) from err
    vision = model.config.vision_config
    if vision.hidden_act != "quick_gelu" or vision.layer_norm_eps != 1e-5:
        raise ValueError(f"{name_or_path}: the CLIP video tower has OpenAI CLIP's numerics (quick_gelu, LayerNorm "
                         f"eps 1e-5), this model has {vision.hidden_act}, eps {vision.layer_norm_eps}")
    return model.state_dict()


def _convert_layer(state: Mapping[str, Tensor], source: str, target: str) -> dict[str, Tensor]:
    """One Hugging Face CLIP encoder layer (``source``) as a timm block (``target``)."""
    out = {}
    for part in ("weight", "bias"):
        out[f"{target}.attn.qkv.{part}"] = torch.cat([state[f"{source}.self_attn.{p}_proj.{part}"] for p in "qkv"])
        for hf, timm_name in _LAYER_NAMES.items():
            out[f"{target}.{timm_name}.{part}"] = state[f"{source}.{hf}.{part}"]
    return out


def _layer_indices(state: Mapping[str, Tensor], prefix: str) -> list[int]:
    return sorted({int(k[len(prefix):].split(".")[0]) for k in state if k.startswith(prefix)})


def convert_clip_state_dict(state: Mapping[str, Tensor], own: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Hugging Face ``CLIPModel`` weights -> ``FrozenInTime`` keys (``own``: the model's state dict).

    The vision transformer fills ``video_model`` (either video tower), the visual and text
    projections ``vid_proj`` and ``txt_proj``, the text transformer ``text_model``. A temporal
    transformer whose width is the text width starts from the first text layers and positions,
    as CLIP4Clip's does. CLIP's ``logit_scale`` is not used (the loss has its own temperature).
    """
    out: dict[str, Tensor] = {}
    vision = "vision_model."
    if f"{vision}embeddings.class_embedding" in state:
        out["video_model.cls_token"] = state[f"{vision}embeddings.class_embedding"].view(1, 1, -1)
        out["video_model.patch_embed.proj.weight"] = state[f"{vision}embeddings.patch_embedding.weight"]
        out["video_model.pos_embed"] = state[f"{vision}embeddings.position_embedding.weight"].unsqueeze(0)
        for hf, ours in (("pre_layrnorm", "norm_pre"), ("post_layernorm", "norm")):
            for part in ("weight", "bias"):
                out[f"video_model.{ours}.{part}"] = state[f"{vision}{hf}.{part}"]
        for i in _layer_indices(state, f"{vision}encoder.layers."):
            out.update(_convert_layer(state, f"{vision}encoder.layers.{i}", f"video_model.blocks.{i}"))
    projections = {"visual_projection.weight": "vid_proj.0.weight", "text_projection.weight": "txt_proj.0.weight"}
    for hf, ours in projections.items():
        if hf in state:
            out[ours] = state[hf]
    out.update({k: v for k, v in state.items() if k.startswith("text_model.") and not k.endswith("position_ids")})
    out.update(_temporal_from_text(state, own))
    return out


def _temporal_from_text(state: Mapping[str, Tensor], own: Mapping[str, Tensor]) -> dict[str, Tensor]:
    positions = state.get("text_model.embeddings.position_embedding.weight")
    target = own.get("temporal.frame_pos_embed")
    if positions is None or target is None or positions.shape[1] != target.shape[2]:
        return {}
    out = {"temporal.frame_pos_embed": positions[:target.shape[1]].unsqueeze(0)}
    for i in _layer_indices(own, "temporal.blocks."):
        if f"text_model.encoder.layers.{i}.mlp.fc1.weight" in state:
            out.update(_convert_layer(state, f"text_model.encoder.layers.{i}", f"temporal.blocks.{i}"))
    return out
