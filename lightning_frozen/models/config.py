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
GEOMETRY = ("img_size", "patch_size", "embed_dim", "depth", "num_heads")

# The published models (Bain et al. 2021): ViT-B video towers at 224 px, DistilBERT, a 256-d joint space.
# A video `arch` names the geometry of the preset whose video section carries it.
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
class VideoConfig(DictConfig):
    """Video tower. `arch` picks a published geometry; any geometry field given overrides it.

    Attributes:
        arch: published geometry ("base_patch16_224", "base_patch32_224") or null for a custom one.
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
