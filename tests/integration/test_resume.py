"""Exact resume: a run killed with SIGKILL in each curriculum stage and resumed with `--ckpt_path last`
ends with the same weights, optimiser state and history as a run that was never interrupted."""
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from helpers import tiny_config

STAGES = [{"frames": 1, "epochs": 2}, {"frames": 2, "epochs": 2}]
STEPS_PER_EPOCH = 3  # 12 training clips, batch 4
TOTAL_STEPS = STEPS_PER_EPOCH * sum(s["epochs"] for s in STAGES)


def run_config(tmp_path: Path, data_root: Path, text_dir: str, run: str, kill_at: int = None) -> Path:
    """The test's training run, in the run folder `tmp_path/run` (its configs beside it: a fresh fit needs an
    empty run folder): every 2 steps a last.ckpt, workers on, dropout on."""
    config = yaml.safe_load(tiny_config(tmp_path, data_root, text_dir, stages=STAGES).read_text())
    trainer = config["trainer"]
    trainer.update(deterministic=True, enable_checkpointing=True, default_root_dir=str(tmp_path / run))
    trainer["callbacks"][0]["init_args"].pop("dirpath")  # stage files go into the run's checkpoints/ too
    trainer["callbacks"].append({"class_path": "lightning_frozen.callbacks.LastCheckpoint",
                                 "init_args": {"every_n_train_steps": 2}})
    if kill_at is not None:
        trainer["callbacks"].append({"class_path": "helpers.kill_switch.KillAtStep", "init_args": {"step": kill_at}})
    config["data"].update(num_workers=2, persistent_workers=True)
    path = tmp_path / f"{run}_kill_at_{kill_at}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def fit(config: Path, resume: bool) -> int:
    tests = str(Path(__file__).parents[1])  # helpers.kill_switch
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([tests, os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "lightning_frozen.cli", "fit", "--config", str(config)]
    result = subprocess.run(command + (["--ckpt_path", "last"] if resume else []), env=env, capture_output=True,
                            text=True, timeout=900)
    if result.returncode not in (0, -signal.SIGKILL):
        raise AssertionError(result.stderr[-3000:])
    return result.returncode


def final_state(run: Path) -> dict:
    return torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)


@pytest.mark.slow
def test_kill_9_in_every_stage_then_resume_equals_an_uninterrupted_run(tmp_path, tiny_msrvtt, text_dir):
    rng = random.Random()
    seed = rng.randrange(10**6)
    rng.seed(seed)
    # One kill at a random step of each stage (steps 1-5 are stage 0, 7-11 stage 1).
    kills = [rng.randrange(1, 2 * STEPS_PER_EPOCH), rng.randrange(2 * STEPS_PER_EPOCH + 1, TOTAL_STEPS)]
    if os.environ.get("KILLS"):
        kills = [int(k) for k in os.environ["KILLS"].split(",")]
    note = f"random seed {seed}, killed at steps {kills}"

    assert fit(run_config(tmp_path, tiny_msrvtt, text_dir, "plain"), resume=False) == 0
    assert fit(run_config(tmp_path, tiny_msrvtt, text_dir, "killed", kills[0]), resume=False) == -signal.SIGKILL, note
    assert fit(run_config(tmp_path, tiny_msrvtt, text_dir, "killed", kills[1]), resume=True) == -signal.SIGKILL, note
    assert fit(run_config(tmp_path, tiny_msrvtt, text_dir, "killed"), resume=True) == 0, note

    plain, resumed = final_state(tmp_path / "plain"), final_state(tmp_path / "killed")
    assert plain["global_step"] == resumed["global_step"] == TOTAL_STEPS, note
    for key, value in plain["state_dict"].items():
        assert torch.equal(value, resumed["state_dict"][key]), f"{key} differs ({note})"
    for (index, a), b in zip(plain["optimizer_states"][0]["state"].items(),
                             resumed["optimizer_states"][0]["state"].values()):
        assert all(torch.equal(a[k], b[k]) for k in a), f"optimizer state {index} differs ({note})"
    curriculum = "FrameCurriculum"
    assert plain["callbacks"][curriculum]["best_scores"] == resumed["callbacks"][curriculum]["best_scores"], note
    curves = "TrainingCurves"
    assert plain["callbacks"][curves]["history"]["loss"] == resumed["callbacks"][curves]["history"]["loss"], note
    assert (tmp_path / "killed" / "checkpoints" / "curves.png").is_file()


def test_a_resume_cleans_partial_saves_in_every_checkpoint_folder_the_curriculum_s_too(tmp_path):
    import pytorch_lightning as pl
    from pytorch_lightning.callbacks import ModelCheckpoint

    from lightning_frozen.callbacks import FrameCurriculum
    from lightning_frozen.callbacks.resume import checkpoint_folders

    last, stages = tmp_path / "checkpoints", tmp_path / "stages"
    trainer = pl.Trainer(logger=False, enable_progress_bar=False, default_root_dir=tmp_path,
                         callbacks=[ModelCheckpoint(dirpath=last),
                                    FrameCurriculum([{"frames": 1, "epochs": 1}], dirpath=str(stages))])
    assert checkpoint_folders(trainer) == [last, stages]  # the folders ExactResume cleans on a resume

