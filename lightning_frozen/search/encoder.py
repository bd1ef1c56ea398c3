"""The model side of search: load the weights an index names, fingerprint them, embed text and clips.

Clips are normalised with the DataModule's evaluation transform (``VideoTransform``,
kornia: resize the short side, centre crop, ImageNet statistics), and every embedding is
L2-normalised (``similarity.normalize``), so inner product is cosine similarity.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import numpy as np
import torch

from ..data.transforms import VideoTransform
from ..models import FrozenInTime, ModelConfig, create_model
from ..similarity import normalize
from ..tokenizer import build_tokenizer

PathLike = Union[str, os.PathLike]
# Longest query in tokens: search queries are a sentence, not a paragraph.
TEXT_MAX_TOKENS = 64


def fingerprint(model: torch.nn.Module) -> str:
    """sha256 over every tensor of the model (name, dtype, shape, bytes): the weights' identity."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        value = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{value.dtype}:{tuple(value.shape)}".encode())
        digest.update(value.view(torch.uint8).numpy().tobytes() if value.numel() else b"")
    return digest.hexdigest()


def read_model_config(value: Optional[str]) -> Optional[dict[str, Any]]:
    """A preset name or a YAML file (a LightningCLI config's ``model:`` section, or its keys) as a dict."""
    if value is None:
        return None
    path = Path(value)
    if path.suffix in (".yaml", ".yml", ".json") or path.is_file():
        import yaml

        if not path.is_file():
            raise FileNotFoundError(f"model config '{value}' not found")
        data = yaml.safe_load(path.read_text()) or {}
        data = data.get("model", data)
        data = data.get("init_args", data)
        return ModelConfig.from_dict(data).to_dict()
    return ModelConfig.from_name(value).to_dict()


class Encoder:
    """A ``FrozenInTime`` in eval mode with its tokenizer and evaluation transform."""

    def __init__(self, model: FrozenInTime, checkpoint: str = "", config: Optional[dict] = None):
        self.model = model.eval()
        self.checkpoint = checkpoint
        self.config = config
        self.tokenizer = build_tokenizer(model.text_config.name_or_path)
        self.input_res = model.video_config.geometry()["img_size"]
        self.transform = VideoTransform(train=False, input_res=self.input_res)
        self.embedding_dim = model.vid_proj[-1].out_features
        self._fingerprint: Optional[str] = None

    @property
    def fingerprint(self) -> str:
        if self._fingerprint is None:
            self._fingerprint = fingerprint(self.model)
        return self._fingerprint

    @torch.inference_mode()
    def encode_text(self, texts: Sequence[str]) -> np.ndarray:
        """L2-normalised text embeddings [len(texts), D] (float32)."""
        tokens = self.tokenizer(list(texts), padding=True, truncation=True, max_length=TEXT_MAX_TOKENS,
                                return_tensors="pt")
        embedded = self.model.encode_text(tokens["input_ids"], tokens["attention_mask"])
        return normalize(embedded.float()).numpy()

    @torch.inference_mode()
    def encode_clips(self, clips: torch.Tensor, batch_size: int) -> np.ndarray:
        """uint8 clips [N, F, 3, H, W] -> L2-normalised embeddings [N, D], ``batch_size`` clips at a time."""
        out = [normalize(self.model.encode_video(self.transform(clips[i:i + batch_size])).float())
               for i in range(0, len(clips), batch_size)]
        return torch.cat(out).numpy() if out else np.zeros((0, self.embedding_dim), np.float32)


def load_encoder(checkpoint: PathLike, config: Optional[dict] = None) -> Encoder:
    """The model in ``checkpoint``: our ``.ckpt`` records its config; a published ``.pth.tar`` needs ``config``."""
    checkpoint = Path(checkpoint)
    if not checkpoint.is_file():
        raise FileNotFoundError(f"checkpoint '{checkpoint}' not found")
    model = create_model(config, weights=checkpoint)
    return Encoder(model, str(checkpoint.resolve()), config)
