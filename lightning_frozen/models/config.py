"""Model settings: the tower config dataclasses, the one preset table, and one conversion to and from dicts.

LitGPT's shape: ``ModelConfig.from_name("stformer_b_16_224")``, ``ModelConfig.from_dict(...)``,
``ModelConfig.from_checkpoint(...)`` and ``to_dict()``. Dicts are what YAML configs, checkpoints
(``hyper_parameters``, read with ``weights_only=True``) and search index manifests hold.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal, Mapping, Optional, Union

TimeInit = Literal["zeros", "rand", "copy"]
PatchEmbedKind = Literal["conv2d", "conv3d"]
Inflate = Literal["central", "average"]
VideoTower = Literal["frozen", "clip"]
TextTower = Literal["frozen", "clip"]
Temporal = Literal["space_time", "mean", "transformer"]
ReuseMode = Literal["off", "diff", "tome", "learned"]
GEOMETRY = ("img_size", "patch_size", "embed_dim", "depth", "num_heads")

# The published models (Bain et al. 2021): ViT-B video towers at 224 px, DistilBERT, a 256-d joint space.
# CLIP towers (OpenAI ViT-B/16 and B/32 with their text transformer, a 512-d joint space): CLIP4Clip's
# mean pooling ("meanP") and temporal transformer ("seqTransf") at 12 frames, and Frozen's divided
# space-time tower initialised from CLIP's ViT. A CLIP `arch` is the OpenAI model's name; with
# `pretrained: true` its weights come from the hub id openai/<arch>.
# A video `arch` names the geometry of the preset whose video section carries it.
_CLIP_B16 = {"tower": "clip", "arch": "clip-vit-base-patch16", "img_size": 224, "patch_size": 16, "embed_dim": 768,
             "depth": 12, "num_heads": 12, "pretrained": True}
_CLIP_B32 = {**_CLIP_B16, "arch": "clip-vit-base-patch32", "patch_size": 32}
_CLIP_TEXT_B16 = {"tower": "clip", "name_or_path": "openai/clip-vit-base-patch16", "pretrained": True}
_CLIP_TEXT_B32 = {**_CLIP_TEXT_B16, "name_or_path": "openai/clip-vit-base-patch32"}
PRESETS: dict[str, dict[str, Any]] = {
    "stformer_b_16_224": {
        "video": {"arch": "base_patch16_224", "img_size": 224, "patch_size": 16, "embed_dim": 768, "depth": 12,
                  "num_heads": 12, "num_frames": 4},
        "text": {"name_or_path": "distilbert-base-uncased"},
        "projection_dim": 256,
    },
    "stformer_b_32_224": {
        "video": {"arch": "base_patch32_224", "img_size": 224, "patch_size": 32, "embed_dim": 768, "depth": 12,
                  "num_heads": 12, "num_frames": 4},
        "text": {"name_or_path": "distilbert-base-uncased"},
        "projection_dim": 256,
    },
    "clip4clip_meanp_b16": {"video": {**_CLIP_B16, "temporal": "mean", "num_frames": 12},
                            "text": _CLIP_TEXT_B16, "projection_dim": 512},
    "clip4clip_seqtransf_b16": {"video": {**_CLIP_B16, "temporal": "transformer", "num_frames": 12},
                                "text": _CLIP_TEXT_B16, "projection_dim": 512},
    "stformer_clip_b16": {"video": {**_CLIP_B16, "temporal": "space_time", "num_frames": 4, "time_init": "zeros"},
                          "text": _CLIP_TEXT_B16, "projection_dim": 512},
    "clip4clip_meanp_b32": {"video": {**_CLIP_B32, "temporal": "mean", "num_frames": 12},
                            "text": _CLIP_TEXT_B32, "projection_dim": 512},
    "clip4clip_seqtransf_b32": {"video": {**_CLIP_B32, "temporal": "transformer", "num_frames": 12},
                                "text": _CLIP_TEXT_B32, "projection_dim": 512},
}


def arch_names() -> list[str]:
    """The video archs the preset table knows."""
    return sorted({p["video"]["arch"] for p in PRESETS.values() if p["video"].get("arch")})


def arch_geometry(arch: str) -> dict[str, int]:
    """Image size, patch size, width, depth and heads of a published video arch."""
    for preset in PRESETS.values():
        if preset["video"].get("arch") == arch:
            return {name: preset["video"][name] for name in GEOMETRY}
    raise ValueError(f"video.arch {arch!r} is unknown: use one of {arch_names()} or null")


def check_choice(key: str, value: Any, valid: tuple[str, ...]) -> None:
    """A setting with a fixed set of values: anything else fails naming the valid ones."""
    if value not in valid:
        raise ValueError(f"{key} {value!r} is unknown: use one of {list(valid)}")


@dataclass
class DictConfig:
    """``from_dict``/``to_dict`` for a config dataclass: unknown keys fail by name.

    A dataclass itself (with no fields), so that jsonargparse still sees its subclasses as plain
    dataclasses (flat YAML sections, flat dicts in checkpoints), not as classes to pick by class_path.
    """

    @classmethod
    def from_dict(cls, value: Union[Mapping[str, Any], "DictConfig", None]) -> Any:
        if value is None:
            return cls()
        if isinstance(value, cls):
            return value
        if isinstance(value, Mapping):
            if "class_path" in value:  # LightningCLI's form of a dataclass argument, as its checkpoints save it
                value = value.get("init_args") or {}
            known = {f.name for f in fields(cls)}
            unknown = sorted(set(value) - known)
            if unknown:
                raise ValueError(f"unknown {cls.__name__} keys {unknown}; valid keys: {sorted(known)}")
            return cls(**value)
        raise TypeError(f"expected a dict or {cls.__name__}, got {type(value).__name__}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class ReuseConfig(DictConfig):
    """Video embedding that skips computation (eval mode only: validate, test, predict, index).

    A token's reference is the same token in the last frame where it was computed (the
    previous frame, unless that one reused it too); every `keyframe_interval`-th frame is
    computed in full. Attention always sees every token; the class token is always computed.

    Attributes:
        mode: "off"; "diff" (Déjà Vu, training-free): a patch token whose block input lies within
            `threshold` of its reference takes the reference's qkv and MLP outputs instead of
            computing them; "tome": `tome_r` tokens merged per block in each frame (token merging,
            per-frame towers); "learned" (ReuseViT): small per-layer decision modules choose, trained
            by ``fit`` with the towers frozen to keep the embeddings close to the exact ones.
        threshold: "diff": reuse where the relative distance ||x - x_prev|| / ||x_prev|| is below it
            (0 computes everything: the exact result).
        keyframe_interval: "diff" and "learned": every K-th frame is computed in full (0: the first only).
        tome_r: "tome": tokens merged per block and frame.
        target_rate: "learned": the share of the decisions (patch tokens of frames after the first,
            per block part) that training aims to make "reuse".
    """

    mode: ReuseMode = "off"
    threshold: float = 0.0
    keyframe_interval: int = 0
    tome_r: int = 0
    target_rate: float = 0.5

    def __post_init__(self) -> None:
        check_choice("video.reuse.mode", self.mode, ("off", "diff", "tome", "learned"))
        for key in ("threshold", "keyframe_interval", "tome_r"):
            if getattr(self, key) < 0:
                raise ValueError(f"video.reuse.{key} must be >= 0, got {getattr(self, key)}")
        if not 0.0 <= self.target_rate <= 1.0:
            raise ValueError(f"video.reuse.target_rate must be in [0, 1], got {self.target_rate}")

    @property
    def active(self) -> bool:
        return self.mode != "off"


@dataclass
class VideoConfig(DictConfig):
    """Video tower. `arch` picks a published geometry; any geometry field given overrides it.

    Attributes:
        tower: "frozen" (Frozen-in-Time's ViT: GELU, LayerNorm eps 1e-6, ImageNet ViT weights) or
            "clip" (CLIP's ViT: a LayerNorm before the blocks, quick-GELU, eps 1e-5, no patch bias;
            its pooled output is projected without bias, as CLIP's visual projection).
        temporal: "space_time" (divided space-time attention, one token for the clip), or a per-frame
            design (each frame through the ViT alone; "clip" tower only): "mean" averages the
            L2-normalised frame embeddings (CLIP4Clip meanP), "transformer" runs a small transformer
            over them with a residual to its input (CLIP4Clip seqTransf).
        temporal_layers: "transformer": its depth (CLIP4Clip: 4).
        arch: published geometry ("base_patch16_224", "base_patch32_224", "clip-vit-base-patch16",
            "clip-vit-base-patch32") or null for a custom one.
        img_size: input height and width in pixels.
        patch_size: patch side in pixels.
        embed_dim: token width.
        depth: number of space-time blocks.
        num_heads: attention heads per block.
        num_frames: frames the temporal embedding holds (clips may have fewer).
        time_init: "zeros" starts time attention as the identity (from image weights); "rand" draws it;
            "copy" starts it as a copy of the space attention (of the loaded image weights, when loaded).
            "rand" and "copy" draw the temporal embedding (pos_init_std), "zeros" starts it at zero.
        patch_embed: "conv2d" embeds every frame's patches (the published model); "conv3d" embeds
            tubelets of ``tubelet_size`` frames (ViViT), F / tubelet_size time steps per clip.
        tubelet_size: frames per tubelet of the "conv3d" embedding.
        inflate: how 2D patch weights fill the tubelet kernel when loaded: "central" (the middle
            frame, zeros on the others) or "average" (spread evenly over its frames).
        pos_init_std: std of the spatial (and, with time_init "rand", temporal) position embeddings
            at init; ViT's 0.02 suits long runs, a short run from scratch learns position and
            motion far sooner with about 0.5.
        drop_rate: dropout after embeddings and in MLPs.
        attn_drop_rate: attention dropout.
        drop_path_rate: stochastic depth of the last block (linear from 0).
        grad_checkpointing: recompute each block in backward to save memory.
        pretrained: the image weights of `arch` from the hub (or its cache), loaded by ``create_model``
            when no other weights are given: ImageNet ViT through timm, or CLIP's openai/<arch>.
        pretrained_path: local image weights, loaded likewise: a ViT state dict (timm key names) or,
            for the "clip" tower, a Hugging Face CLIPModel folder (or its weights file).
        reuse: computation reuse across frames at inference (``ReuseConfig``).
    """

    tower: VideoTower = "frozen"
    temporal: Temporal = "space_time"
    temporal_layers: int = 4
    arch: Optional[str] = "base_patch16_224"
    img_size: Optional[int] = None
    patch_size: Optional[int] = None
    embed_dim: Optional[int] = None
    depth: Optional[int] = None
    num_heads: Optional[int] = None
    num_frames: int = 4
    time_init: TimeInit = "zeros"
    patch_embed: PatchEmbedKind = "conv2d"
    tubelet_size: int = 2
    inflate: Inflate = "central"
    pos_init_std: float = 0.02
    drop_rate: float = 0.0
    attn_drop_rate: float = 0.0
    drop_path_rate: float = 0.0
    grad_checkpointing: bool = False
    pretrained: bool = False
    pretrained_path: Optional[str] = None
    reuse: ReuseConfig = field(default_factory=ReuseConfig)

    def __post_init__(self) -> None:
        check_choice("video.tower", self.tower, ("frozen", "clip"))
        check_choice("video.temporal", self.temporal, ("space_time", "mean", "transformer"))
        if self.temporal != "space_time" and self.tower != "clip":
            raise ValueError(f"video.temporal {self.temporal!r} is a per-frame design of the CLIP tower: "
                             "set video.tower: clip, or video.temporal: space_time")
        if self.patch_embed != "conv2d" and self.per_frame:
            raise ValueError(f"video.patch_embed {self.patch_embed!r} embeds tubelets across frames; the per-frame "
                             f"design {self.temporal!r} sees one frame at a time: use patch_embed: conv2d")
        self.reuse = ReuseConfig.from_dict(self.reuse)
        if self.reuse.mode != "off" and self.patch_embed != "conv2d":
            raise ValueError(f"video.reuse.mode {self.reuse.mode!r} reuses work from frame to frame; tubelets "
                             "(patch_embed: conv3d) have no per-frame tokens: use reuse.mode: off")
        if self.reuse.mode in ("tome", "learned") and not self.per_frame:
            raise ValueError(f"video.reuse.mode {self.reuse.mode!r} needs a per-frame design "
                             "(video.temporal: mean or transformer); the space-time tower supports 'diff'")

    @property
    def per_frame(self) -> bool:
        """Each frame goes through the ViT alone (its embedding does not depend on the other frames)."""
        return self.temporal != "space_time"

    def geometry(self) -> dict[str, int]:
        """The five geometry fields: those given, the rest from `arch`."""
        preset = arch_geometry(self.arch) if self.arch is not None else {}
        out = {}
        for name in GEOMETRY:
            value = getattr(self, name)
            if value is None and name not in preset:
                raise ValueError(f"video.{name} is required when video.arch is null")
            out[name] = value if value is not None else preset[name]
        return out


@dataclass
class TextConfig(DictConfig):
    """Text tower: any Hugging Face encoder by hub id or local directory.

    Attributes:
        tower: "frozen": the encoder's pooled state (see `pooling`) through ReLU and a linear projection,
            as Frozen-in-Time; "clip": CLIP's text transformer (causal mask, pooled at the end-of-text
            token, projected without bias), its architecture from a CLIPModel folder or hub id, or
            from CLIP's defaults plus `config_overrides` for any other `name_or_path` (whose tokenizer
            is then used: set vocab_size and eos_token_id to that tokenizer's).
        name_or_path: hub id, local directory, or "bundled:all-MiniLM-L6-v2"; the tokenizer follows it.
        pretrained: ``create_model`` loads the encoder's weights when no other weights are given
            (false: its architecture, randomly initialised).
        config_overrides: Hugging Face config fields to change, e.g. {num_hidden_layers: 3}.
        pooling: the sentence vector. "first" is the first token, as Frozen-in-Time and its
            published checkpoints use; "mean" averages the real tokens, as sentence-transformers
            models such as the bundled MiniLM were trained, so their meaning is there from step one.
    """

    tower: TextTower = "frozen"
    name_or_path: str = "distilbert-base-uncased"
    pretrained: bool = True
    config_overrides: dict[str, Any] = field(default_factory=dict)
    pooling: Literal["first", "mean"] = "first"

    def __post_init__(self) -> None:
        check_choice("text.tower", self.tower, ("frozen", "clip"))
        if self.pooling not in ("first", "mean"):
            raise ValueError(f"text.pooling {self.pooling!r} is unknown: use 'first' (published checkpoints) or 'mean'")


@dataclass
class ModelConfig:
    """The whole dual encoder: video tower, text tower and the joint space's size."""

    video: VideoConfig = field(default_factory=VideoConfig)
    text: TextConfig = field(default_factory=TextConfig)
    projection_dim: int = 256

    def __post_init__(self) -> None:
        self.video = VideoConfig.from_dict(self.video)
        self.text = TextConfig.from_dict(self.text)
        self.projection_dim = int(self.projection_dim)
        if self.projection_dim < 1:
            raise ValueError(f"projection_dim must be >= 1, got {self.projection_dim}")

    @classmethod
    def from_name(cls, name: str) -> "ModelConfig":
        if name not in PRESETS:
            raise ValueError(f"unknown model preset {name!r}; presets: {sorted(PRESETS)}")
        return cls.from_dict(PRESETS[name])

    @classmethod
    def from_dict(cls, value: Mapping[str, Any]) -> "ModelConfig":
        """From ``video``, ``text`` and ``projection_dim``; other keys (a checkpoint's optimiser
        settings, a CLI section's ``lr``) are not the model's and are left out."""
        return cls(**{key: value[key] for key in ("video", "text", "projection_dim") if key in value})

    @classmethod
    def from_checkpoint(cls, checkpoint: Mapping[str, Any], name: str = "checkpoint") -> "ModelConfig":
        """The config one of our ``.ckpt`` files records in its ``hyper_parameters``."""
        hparams = checkpoint.get("hyper_parameters") if isinstance(checkpoint, Mapping) else None
        if not isinstance(hparams, Mapping) or "video" not in hparams:
            raise ValueError(f"{name} does not record its model config (a published or plain weights file): "
                             f"pass one, e.g. create_model('stformer_b_16_224', weights='{name}')")
        return cls.from_dict(hparams)

    @classmethod
    def of(cls, value: Union[str, Mapping[str, Any], "ModelConfig", None]) -> "ModelConfig":
        """A preset name, a mapping or a ModelConfig (None: the defaults)."""
        if isinstance(value, ModelConfig):
            return value
        if isinstance(value, str):
            return cls.from_name(value)
        return cls.from_dict(value or {})

    def to_dict(self) -> dict[str, Any]:
        return {"video": self.video.to_dict(), "text": self.text.to_dict(), "projection_dim": self.projection_dim}
