"""Small models, video folders and indexes for the search tests."""
from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import torch

from helpers import TINY_VIDEO
from lightning_frozen.data.synthetic import make_synthetic_dataset
from lightning_frozen.models import bundled_text_model_path, create_model

SCRIPT_NAME = "<script>alert(1)</script>.mp4"


def tiny_config() -> dict:
    text = dict(name_or_path=str(bundled_text_model_path()), pretrained=False,
                config_overrides={"num_hidden_layers": 1})
    return {"video": dict(TINY_VIDEO), "text": text, "projection_dim": 16}


def save_tiny_checkpoint(path: Path, seed: int = 0) -> Path:
    """A Lightning-style .ckpt of a tiny random model (it records its config, as ours do)."""
    torch.manual_seed(seed)
    model = create_model(tiny_config(), pretrained=False)
    torch.save({"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
                "hyper_parameters": tiny_config()}, path)
    return path


def video_folder(root: Path, count: int = 6, frames: int = 40, broken: bool = False, seed: int = 0) -> Path:
    """``count`` synthetic 32 px mp4s of ``frames`` frames at 10 fps under ``root`` (WebVid's page folders)."""
    data = make_synthetic_dataset(root.parent / f".{root.name}-data", "webvid", num_train=count, num_test=1,
                                  num_frames_per_video=frames, size=(32, 32), broken=broken, seed=seed)
    shutil.copytree(data / "videos", root)
    return root


def rows(index_dir: Path) -> list[tuple]:
    """Every window of an index as (path, position, start, end, embedding bytes, thumbnail bytes)."""
    import sqlite3

    with sqlite3.connect(index_dir / "index.sqlite") as db:
        return db.execute('SELECT v.path, w.position, w.start, w."end", w.embedding, t.jpeg FROM windows w '
                          "JOIN videos v ON v.id = w.video_id JOIN thumbnails t ON t.window_id = w.id "
                          "ORDER BY v.path, w.position").fetchall()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(index_dir: Path, port: int) -> subprocess.Popen:
    """`lightning-frozen serve` in a subprocess, returned once it answers."""
    process = subprocess.Popen([sys.executable, "-m", "lightning_frozen.cli", "serve", str(index_dir),
                                "--port", str(port)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"serve exited: {process.stdout.read()}")
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=1).read()
            return process
        except OSError:
            time.sleep(0.2)
    process.kill()
    raise RuntimeError("serve did not answer within 120 s")
