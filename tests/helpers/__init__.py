"""Test helpers: the tiny model geometry and a tiny LightningCLI config (the demo's shape at toy size)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import yaml

TINY_VIDEO = dict(arch=None, img_size=32, patch_size=16, embed_dim=32, depth=2, num_heads=2, num_frames=4)


def tiny_config(tmp_path: Path, data_root: Path, text_dir: str, stages: Optional[list] = None,
                cc3m_root: Optional[Path] = None, **trainer) -> Path:
    """Write a config for `cli.py` and return its path."""
    dataset = {"class_path": "lightning_frozen.data.MSRVTT",
               "init_args": {"root": str(data_root), "cut": "jsfusion", "frame_size": 32}}
    train = [{**dataset, "init_args": {**dataset["init_args"], "split": "train"}}]
    sizes = [4]
    if cc3m_root is not None:
        train.append({"class_path": "lightning_frozen.data.ConceptualCaptions3M",
                      "init_args": {"root": str(cc3m_root), "split": "train", "frame_size": 32}})
        sizes.append(6)
    callbacks = []
    trainer.setdefault("max_epochs", sum(s["epochs"] for s in stages) if stages else 1)
    if stages:
        callbacks.append({"class_path": "lightning_frozen.callbacks.FrameCurriculum",
                          "init_args": {"stages": stages, "dirpath": str(tmp_path / "stages")}})
    config = {
        "seed_everything": 0,
        "trainer": {"accelerator": "cpu", "devices": 1, "logger": False,
                    "enable_checkpointing": False, "enable_progress_bar": False, "enable_model_summary": False,
                    "num_sanity_val_steps": 0, "default_root_dir": str(tmp_path), "callbacks": callbacks,
                    **trainer},
        "model": {"video": dict(TINY_VIDEO, num_frames=2),  # also the data's frames per clip
                  "text": {"name_or_path": text_dir, "pretrained": False,
                           "config_overrides": {"num_hidden_layers": 1}},
                  "projection_dim": 16, "lr": 1e-3},
        "data": {"train_datasets": train, "train_batch_sizes": sizes,
                 "val_datasets": [{**dataset, "init_args": {**dataset["init_args"], "split": "test"}}],
                 "test_datasets": [{**dataset, "init_args": {**dataset["init_args"], "split": "test"}}],
                 "eval_batch_size": 3, "input_res": 32, "max_length": 16},
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def frames(dataset, num_frames: int):
    """`dataset`, reading clips of `num_frames` frames (in its own run state, as a DataModule would set it)."""
    dataset.run_state.set_num_frames(num_frames)
    return dataset
