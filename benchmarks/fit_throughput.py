"""The `fit` cell: `lightning-frozen fit` itself on synthetic clips, timed from inside its training loop.

This is the rate a user gets: FrozenModule's own compile, TF32 setting and fused AdamW, the
DataModule's loader workers and on-device augmentation, Lightning's loop, all as configured
(nothing here re-implements them). ``run_fit`` writes synthetic MSR-VTT-layout clips
(``make_synthetic_dataset``), a local text-model folder (the text geometry's config and a
character-level WordPiece vocabulary: no tokenizer can be downloaded on a machine without
network) and a config, then runs ``python cli.py fit --config ...`` in a child process, so a
crash or a hang there costs this cell alone. The config adds two things to the run:

* ``FitClock`` (below), a callback: clips/s over the steps after the warm-up, between two
  device synchronisations; the steps before it (compiling, for ``model.compile``) are
  reported apart; then a ``torch.profiler`` summary of a few more steps.
* Lightning's ``SimpleProfiler``, whose ``train_dataloader_next`` durations are the time the
  loop waited for the DataLoader: the data wait.

No logger, progress bar, validation or checkpoint: the figure is the training loop's. The
clips are small (cheap to decode), so the data wait is the loader's overhead, not the decoding
of real videos (``loader_throughput.py`` measures that).
"""
from __future__ import annotations

import json
import os
import string
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Optional

import pytorch_lightning as pl
import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
for folder in (ROOT, HERE):
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))

from cell_runner import profile_summary  # noqa: E402

FETCH_ACTION = "train_dataloader_next"  # Lightning's name for the loop's wait on the DataLoader
PRECISIONS = {"bf16": ("bf16-mixed", "high"), "tf32": ("32-true", "high"), "fp32": ("32-true", "highest")}


class FitClock(pl.Callback):
    """Times steps ``warmup`` to ``warmup + timed - 1`` (from the end of the step before, device
    synchronised at both ends), profiles ``profile_steps`` more, and writes its figures as JSON to
    `out` when training ends."""

    def __init__(self, out: str, warmup: int, timed: int, profile_steps: int = 0):
        if warmup < 1 or timed < 1:
            raise ValueError(f"FitClock needs warmup >= 1 and timed >= 1, got {warmup} and {timed}")
        self.out, self.warmup, self.timed, self.profile_steps = Path(out), warmup, timed, profile_steps
        self.step = 0
        self.figures: dict[str, Any] = {}
        self._marks: dict[str, float] = {}
        self._fetches = 0
        self._profiler: Optional[torch.profiler.profile] = None

    def _now(self, trainer: pl.Trainer) -> float:
        if trainer.strategy.root_device.type == "cuda":
            torch.cuda.synchronize(trainer.strategy.root_device)
        return time.perf_counter()

    @staticmethod
    def _fetch_durations(trainer: pl.Trainer) -> list[float]:
        recorded = getattr(trainer.profiler, "recorded_durations", {})
        return next((list(v) for k, v in recorded.items() if k.endswith(FETCH_ACTION)), [])

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.strategy.root_device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(trainer.strategy.root_device)
        self._marks["start"] = self._now(trainer)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if self.step == 0:
            self.figures["first_step_s"] = self._now(trainer) - self._marks["start"]
            self.figures["batch"] = len(batch["video"])
        if self.step == self.warmup - 1:  # the window starts here: the next step's wait for its batch is in it
            self._marks["timed"] = self._now(trainer)
            self._fetches = len(self._fetch_durations(trainer))
        if self.step == self.warmup + self.timed - 1:
            window = self._now(trainer) - self._marks["timed"]
            waits = self._fetch_durations(trainer)[self._fetches:]
            self.figures.update(
                timed_steps=self.timed, warmup_steps=self.warmup, window_s=window,
                clips_per_s=self.timed * self.figures["batch"] / window,
                data_wait_s=sum(waits) if waits else None, data_wait_share=sum(waits) / window if waits else None)
            if self.profile_steps:
                activities = [torch.profiler.ProfilerActivity.CPU]
                if trainer.strategy.root_device.type == "cuda":
                    activities.append(torch.profiler.ProfilerActivity.CUDA)
                self._profiler = torch.profiler.profile(activities=activities)
                self._profiler.start()
        if self._profiler is not None and self.step == self.warmup + self.timed + self.profile_steps - 1:
            self._now(trainer)
            self._profiler.stop()
            self.figures["profile"] = profile_summary(self._profiler.key_averages(),
                                                      trainer.strategy.root_device.type == "cuda", self.profile_steps)
            self._profiler = None
        self.step += 1

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        device = trainer.strategy.root_device
        if device.type == "cuda":
            self.figures["peak_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
        self.figures["steps_run"] = self.step
        self.out.write_text(json.dumps(self.figures, indent=1))


def text_model_dir(folder: Path, name_or_path: str, overrides: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """A text model the run can read offline, and the overrides still to apply: a local folder as it
    is; otherwise a folder with that model's config (built offline for the published geometries)
    and a character-level WordPiece vocabulary (captions become one token per character)."""
    from lightning_frozen.models.text import build_text_config
    from lightning_frozen.tokenizer import is_local

    if is_local(name_or_path):
        return name_or_path, overrides
    folder.mkdir(parents=True, exist_ok=True)
    build_text_config(name_or_path, overrides).save_pretrained(folder)
    symbols = string.ascii_lowercase + string.digits
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *symbols, *(f"##{s}" for s in symbols),
             *string.punctuation]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    return str(folder), {}


def fit_config(*, run_dir: Path, data: Path, text: str, text_overrides: dict[str, Any], video: dict[str, Any],
               device: str, batch: int, precision: str, compile: str, compile_backend: str, text_len: int,
               frame_size: int, workers: int, warmup: int, timed: int, profile_steps: int) -> dict[str, Any]:
    """The `lightning-frozen fit` config of one fit cell (`compile`: off, default or max-autotune)."""
    trainer_precision, matmul = PRECISIONS[precision]
    clock = {"out": str(run_dir / "clock.json"), "warmup": warmup, "timed": timed, "profile_steps": profile_steps}
    return {
        "seed_everything": 0,
        "trainer": {
            "accelerator": "gpu" if device == "cuda" else "cpu", "devices": 1, "precision": trainer_precision,
            "max_steps": warmup + timed + profile_steps, "limit_val_batches": 0, "num_sanity_val_steps": 0,
            "enable_checkpointing": False, "logger": False, "enable_progress_bar": False,
            "enable_model_summary": False, "default_root_dir": str(run_dir / "run"),
            "profiler": {"class_path": "pytorch_lightning.profilers.SimpleProfiler",
                         "init_args": {"dirpath": str(run_dir), "filename": "simple_profiler"}},
            "callbacks": [{"class_path": "fit_throughput.FitClock", "init_args": clock}],
        },
        "model": {"video": video, "text": {"name_or_path": text, "pretrained": False,
                                           "config_overrides": text_overrides},
                  "compile": compile, "compile_backend": compile_backend, "float32_matmul_precision": matmul},
        "data": {"train_datasets": [{"class_path": "lightning_frozen.data.MSRVTT",
                                     "init_args": {"root": str(data), "cut": "jsfusion", "split": "train",
                                                   "frame_size": frame_size}}],
                 "train_batch_sizes": batch, "max_length": text_len, "padding": "max_length",
                 "input_res": video["img_size"], "num_workers": workers, "persistent_workers": workers > 0},
    }


def run_fit(workdir: Path, *, device: str, batch: int, precision: str, compile: str, compile_backend: str,
            video: dict[str, Any], text: str, text_overrides: dict[str, Any], text_len: int, warmup: int,
            timed: int, profile_steps: int, frame_size: int, workers: int, timeout_s: float) -> dict[str, Any]:
    """One fit cell in `workdir` (clips and text folder are made once and reused): FitClock's figures."""
    from lightning_frozen.data.synthetic import make_synthetic_dataset

    steps = warmup + timed + profile_steps
    started = time.perf_counter()
    data = make_synthetic_dataset(workdir / f"clips-{frame_size}px-{batch * steps}", "msrvtt",
                                  num_train=batch * steps, num_test=1, num_frames_per_video=8,
                                  size=(frame_size, frame_size), seed=0)
    text_dir, overrides = text_model_dir(workdir / "text", text, text_overrides)
    data_s = time.perf_counter() - started
    run_dir = workdir / f"fit-{batch}-{precision}-{compile}"
    run_dir.mkdir(parents=True, exist_ok=True)
    config = fit_config(run_dir=run_dir, data=data, text=text_dir, text_overrides=overrides, video=video,
                        device=device, batch=batch, precision=precision, compile=compile,
                        compile_backend=compile_backend, text_len=text_len, frame_size=frame_size,
                        workers=workers, warmup=warmup, timed=timed, profile_steps=profile_steps)
    (run_dir / "config.json").write_text(json.dumps(config, indent=1))
    path = os.pathsep.join(p for p in (str(HERE), str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    started = time.perf_counter()
    done = subprocess.run([sys.executable, str(ROOT / "cli.py"), "fit", "--config", str(run_dir / "config.json")],
                          capture_output=True, text=True, timeout=timeout_s, cwd=run_dir,
                          env={**os.environ, "PYTHONPATH": path, "LIGHTNING_FROZEN_DEBUG": "1"})
    if done.returncode != 0 or not (run_dir / "clock.json").is_file():
        tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-30:])
        raise RuntimeError(f"lightning-frozen fit exited with code {done.returncode}; its output ends:\n{tail}")
    figures = json.loads((run_dir / "clock.json").read_text())
    return {**figures, "data_and_text_s": data_s, "process_s": time.perf_counter() - started,
            "workers": workers, "trainer_precision": PRECISIONS[precision][0]}
