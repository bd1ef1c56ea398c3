"""The hostile-user catalogue of the commands that train, evaluate and write data: fit, validate, test, predict,
shard, prepare, synthetic and demo. Each row is a careless or hostile command line, the exit code and words it
must give, and the files it must leave byte for byte as they were (hashed before and after).

One rule holds for every command that writes: everything is checked before anything is written; output folders
carry a marker and are locked while a command writes them; a folder that is neither empty nor ours is refused,
named; a user's mistake is one message (exit code 2), Ctrl-C one line (exit code 130).
"""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
import yaml
from helpers import tiny_config
from helpers.catalogue import Case, fingerprint, run_case, run_command

from lightning_frozen.data import WebVid
from lightning_frozen.data.synthetic import make_synthetic_dataset
from lightning_frozen.folders import LOCK, MARKER, FolderLock, write_marker

ONE_LINE = ("Traceback (most recent", "usage:")  # no traceback, no page of usage
TRAINER_LINES = 6  # Lightning's "Seed set", "GPU available", "TPU available", then the message and its debug hint


@dataclass
class Workspace:
    root: Path
    data: Path  # the tiny MSR-VTT layout (read only)
    config: Path  # a tiny fit config whose run folder is `run`
    run: Path  # a finished run: a fit of one epoch
    user: Path  # a user's own folder: notes and a table
    shards: Path  # finished LitData shards of `data`
    mirror: Path  # a `prepare` mirror of `data`
    locks: list = field(default_factory=list)

    def fresh(self, name: str) -> Path:
        """An empty folder of its own for one case."""
        folder = self.root / "fresh" / name
        folder.mkdir(parents=True)
        return folder

    def fit(self, *extra: str) -> list[str]:
        return ["fit", "--config", str(self.config), *extra]

    def lock(self, folder: Path) -> None:
        """Another run holds `folder` (an flock from this process conflicts with the command's own)."""
        self.locks.append(FolderLock(folder, "fit").acquire())


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, tiny_msrvtt, text_dir) -> Workspace:
    root = tmp_path_factory.mktemp("catalogue")
    config = yaml.safe_load(tiny_config(root, tiny_msrvtt, text_dir, stages=[{"frames": 1, "epochs": 1}],
                                        limit_train_batches=2, limit_val_batches=1).read_text())
    trainer = config["trainer"]
    del trainer["logger"]  # the run folder's TensorBoard and CSV logs
    trainer["callbacks"][0]["init_args"].pop("dirpath")
    trainer["callbacks"].append({"class_path": "lightning_frozen.callbacks.LastCheckpoint",
                                 "init_args": {"every_n_train_steps": 1}})
    trainer.update(enable_checkpointing=True, default_root_dir=str(root / "run"))
    path = root / "fit.yaml"
    path.write_text(yaml.safe_dump(config))
    user = root / "user"
    user.mkdir()
    (user / "notes.txt").write_text("my notes\n")
    (user / "table.csv").write_text("a,b\n1,2\n")
    space = Workspace(root, tiny_msrvtt, path, root / "run", user, root / "shards", root / "mirror")
    code, output = run_command(space.fit())
    assert code == 0, output
    assert (space.run / "checkpoints" / "last.ckpt").is_file() and (space.run / MARKER).is_file()
    code, output = run_command(["shard", "--src", str(tiny_msrvtt), "--layout", "msrvtt", "--split", "test",
                                "--dst", str(space.shards), "--workers", "1", "--chunk-bytes", "64KB", "--quiet"])
    assert code == 0 and (space.shards / "index.json").is_file(), output
    code, output = run_command(["prepare", "--src", str(tiny_msrvtt), "--dst", str(space.mirror), "--short-side", "16",
                                "--workers", "1", "--quiet"])
    assert code == 0, output
    return space


def published_style(w: Workspace) -> Path:
    """A file laid out like a published Frozen-in-Time checkpoint (DataParallel names), not a Lightning one."""
    path = w.root / "published.pth.tar"
    if not path.exists():
        torch.save({"state_dict": {"module.video_model.cls_token": torch.zeros(1, 1, 32)}, "epoch": 1}, path)
    return path


def elsewhere(w: Workspace) -> Path:
    """A copy of the used run's last checkpoint outside its folder."""
    path = w.root / "elsewhere.ckpt"
    if not path.exists():
        shutil.copy(w.run / "checkpoints" / "last.ckpt", path)
    return path


def missing_root_config(w: Workspace) -> Path:
    path = w.root / "missing_root.yaml"
    path.write_text(w.config.read_text().replace(str(w.data), str(w.root / "no_such_data")))
    return path


def broken_clips(w: Workspace) -> Path:
    """A folder of two clips, one of them not a video."""
    folder = w.root / "clips"
    if not folder.exists():
        folder.mkdir()
        shutil.copy(w.data / "videos" / "all" / "video0.mp4", folder / "good.mp4")
        (folder / "broken.mp4").write_text("not a video\n")
    return folder


def predict_clips(w: Workspace, output: Path, *extra: str) -> list[str]:
    return ["predict", "--config", str(w.config), "--data.predict_dataset", "lightning_frozen.data.VideoFolder",
            "--data.predict_dataset.root", str(broken_clips(w)), "--data.predict_dataset.frame_size", "32",
            "--embeddings.output", str(output), *extra]


def shard_args(w: Workspace, dst: Path, *extra: str) -> list[str]:
    return ["shard", "--src", str(w.data), "--layout", "msrvtt", "--split", "test", "--dst", str(dst),
            "--workers", "1", "--chunk-bytes", "64KB", "--quiet", *extra]


def prepare_args(w: Workspace, dst: Path, *extra: str) -> list[str]:
    return ["prepare", "--src", str(w.data), "--dst", str(dst), "--workers", "1", "--quiet", *extra]


def half_made_shards(w: Workspace) -> Path:
    """A shard folder that a run with --seed 0 started and did not finish (its marker only)."""
    folder = w.root / "half_shards"
    if not folder.exists():
        folder.mkdir()
        inputs = {"src": str(w.data.resolve()), "layout": "msrvtt", "split": "test", "cut": None, "metadata": None,
                  "prepare": False, "workers": 1, "chunk_bytes": "64KB", "seed": 0}
        write_marker(folder, "lightning-frozen shard", inputs)
    return folder


def demo_config(w: Workspace, run_dir: Path) -> Path:
    config = yaml.safe_load(w.config.read_text())
    config["trainer"]["default_root_dir"] = str(run_dir)
    path = w.root / f"demo_{run_dir.name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


TRAIN = [
    # fit: a used run folder, a user's folder, settings that fail at setup, another run holding the folder
    Case("fit into a used run folder", lambda w: w.fit(), says=["holds an earlier run", "--ckpt_path last",
                                                                  "--run_dir"],
         untouched=lambda w: [w.run], max_lines=TRAINER_LINES),
    Case("fit into a user's folder", lambda w: w.fit("--run_dir", str(w.user)), says=["neither empty nor", "user"],
         untouched=lambda w: [w.user], max_lines=TRAINER_LINES),
    Case("fit into a used run folder from a checkpoint that is not one of its own",
         lambda w: w.fit("--ckpt_path", str(elsewhere(w))), says=["holds an earlier run"],
         untouched=lambda w: [w.run], max_lines=TRAINER_LINES),
    Case("fit from a used run's checkpoint into a new folder leaves that run as it was",
         lambda w: w.fit("--ckpt_path", str(w.run / "checkpoints" / "last.ckpt"), "--run_dir", str(w.root / "run2")),
         code=0, max_lines=None, untouched=lambda w: [w.run]),
    Case("fit resuming with a checkpoint of another geometry",
         lambda w: w.fit("--ckpt_path", "last", "--model.video.embed_dim", "64"),
         says=["another geometry", "model.video.embed_dim is 32 there, 64 here", "config it was trained with"],
         untouched=lambda w: [w.run], max_lines=TRAINER_LINES),
    Case("fit from a published file through --ckpt_path",
         lambda w: w.fit("--ckpt_path", str(published_style(w)), "--run_dir", str(w.fresh("published"))),
         says=["not a checkpoint of this model", "--model.init_from"],
         untouched=lambda w: [w.root / "fresh" / "published"], max_lines=TRAINER_LINES),
    Case("fit with data.max_length beyond the text model leaves its new folder empty",
         lambda w: w.fit("--data.max_length", "600", "--run_dir", str(w.fresh("max_length"))),
         says=["data.max_length is 600"], untouched=lambda w: [w.root / "fresh" / "max_length"],
         max_lines=TRAINER_LINES),
    Case("fit whose max_epochs disagrees with the curriculum leaves its new folder empty",
         lambda w: w.fit("--trainer.max_epochs", "3", "--run_dir", str(w.fresh("max_epochs"))),
         says=["max_epochs is 3", "add up to 1"], untouched=lambda w: [w.root / "fresh" / "max_epochs"],
         max_lines=TRAINER_LINES),
    Case("fit into a file", lambda w: w.fit("--run_dir", str(w.user / "notes.txt")), says=["not a folder"],
         untouched=lambda w: [w.user], max_lines=TRAINER_LINES),
    Case("fit into a folder another run is writing",
         lambda w: w.fit("--run_dir", str(w.root / "busy")), says=["in use by lightning-frozen fit"],
         prepare=lambda w: w.lock(w.root / "busy"), untouched=lambda w: [w.root / "busy"], max_lines=TRAINER_LINES),
    Case("fit --ckpt_path to a file that is not there",
         lambda w: w.fit("--ckpt_path", str(w.root / "nowhere.ckpt"), "--run_dir", str(w.fresh("nowhere"))),
         says=["nowhere.ckpt"], untouched=lambda w: [w.root / "fresh" / "nowhere"], max_lines=TRAINER_LINES),
    Case("fit with a value of the wrong type is one line", lambda w: w.fit("--model.lr", "fast"),
         says=["model.lr", "lightning-frozen fit --help"], never_says=ONE_LINE,
         untouched=lambda w: [w.run], max_lines=2),
    Case("fit with an unknown key is one line", lambda w: w.fit("--model.learning_rate", "0.1"),
         says=["learning_rate"], never_says=ONE_LINE, untouched=lambda w: [w.run], max_lines=2),
    # validate / test: they add logs to a run folder of ours, nowhere else
    Case("test with a checkpoint of another geometry",
         lambda w: ["test", "--config", str(w.config), "--ckpt_path", str(w.run / "checkpoints" / "last.ckpt"),
                    "--model.video.depth", "3"],
         says=["another geometry", "model.video.depth is 2 there, 3 here"], untouched=lambda w: [w.run],
         max_lines=TRAINER_LINES),
    Case("test logging into a user's folder",
         lambda w: ["test", "--config", str(w.config), "--run_dir", str(w.user)], says=["neither empty nor"],
         untouched=lambda w: [w.user], max_lines=TRAINER_LINES),
    Case("test with the loggers off writes nothing, not even a config.yaml, into its folder",
         lambda w: ["test", "--config", str(w.config), "--trainer.logger", "false", "--run_dir", str(w.user)],
         code=0, max_lines=None, untouched=lambda w: [w.user]),
    Case("validate into a folder another run is writing",
         lambda w: ["validate", "--config", str(w.config), "--run_dir", str(w.root / "busy_validate")],
         says=["in use by"], prepare=lambda w: w.lock(w.root / "busy_validate"),
         untouched=lambda w: [w.root / "busy_validate"], max_lines=TRAINER_LINES),
    Case("validate with a dataset root that is not there",
         lambda w: ["validate", "--config", str(missing_root_config(w))],
         says=["is not a directory"], untouched=lambda w: [w.run], max_lines=TRAINER_LINES),
    # predict: its one output file
    Case("predict onto an existing file",
         lambda w: predict_clips(w, w.user / "notes.txt"), says=["notes.txt exists", "--embeddings.output"],
         untouched=lambda w: [w.user], max_lines=TRAINER_LINES),
    Case("predict a broken file under strict loading names lax loading",
         lambda w: predict_clips(w, w.root / "strict.pt"),
         says=["broken.mp4", "--data.predict_dataset.loading lax"], never_says=[*ONE_LINE, "DataLoader worker"],
         untouched=lambda w: [w.root / "strict.pt"], max_lines=TRAINER_LINES + 1),
    Case("predict with the lax loading it suggests",
         lambda w: predict_clips(w, w.root / "lax.pt", "--data.predict_dataset.loading", "lax"), code=0,
         max_lines=None),
    Case("predict with a checkpoint of another geometry",
         lambda w: predict_clips(w, w.root / "geometry.pt", "--ckpt_path", str(w.run / "checkpoints" / "last.ckpt"),
                                 "--model.projection_dim", "8"),
         says=["another geometry", "model.projection_dim is 16 there, 8 here"],
         untouched=lambda w: [w.root / "geometry.pt"], max_lines=TRAINER_LINES),
]

DATA = [
    # shard
    Case("shard into a user's folder", lambda w: shard_args(w, w.user), says=["neither empty nor", "--dst"],
         untouched=lambda w: [w.user]),
    Case("shard over finished shards", lambda w: shard_args(w, w.shards), says=["already holds shards"],
         untouched=lambda w: [w.shards]),
    Case("shard continuing shards of other inputs", lambda w: shard_args(w, half_made_shards(w), "--seed", "1"),
         says=["other inputs", "seed: 0 -> 1"], untouched=lambda w: [half_made_shards(w)]),
    Case("shard into its own source", lambda w: shard_args(w, w.data / "shards"), says=["inside --src"],
         untouched=lambda w: [w.data]),
    Case("shard into a folder another run is writing", lambda w: shard_args(w, w.root / "busy_shards"),
         says=["in use by"], prepare=lambda w: w.lock(w.root / "busy_shards"),
         untouched=lambda w: [w.root / "busy_shards"]),
    Case("shard with a chunk size that is not one", lambda w: shard_args(w, w.root / "s1", "--chunk-bytes", "big"),
         says=["--chunk-bytes", "not a size"], untouched=lambda w: [w.root / "s1"]),
    Case("shard onto a file", lambda w: shard_args(w, w.user / "table.csv"), says=["not a folder"],
         untouched=lambda w: [w.user]),
    Case("shard with no workers", lambda w: shard_args(w, w.root / "s2", "--workers", "0"), says=["--workers"]),
    Case("shard --prepare of images", lambda w: ["shard", "--src", str(w.data), "--layout", "cc3m", "--prepare",
                                                 "--dst", str(w.root / "s3")], says=["cc3m layout holds images"]),
    Case("shard without --dst is one line", lambda w: ["shard", "--src", str(w.data), "--layout", "msrvtt"],
         says=["required: --dst", "lightning-frozen shard --help"], never_says=ONE_LINE, max_lines=1),
    # prepare
    Case("prepare into a user's folder", lambda w: prepare_args(w, w.user), says=["neither empty nor", "--dst"],
         untouched=lambda w: [w.user]),
    Case("prepare continuing a mirror made with other settings", lambda w: prepare_args(w, w.mirror),
         says=["other inputs", "short_side: 16 -> 256"], untouched=lambda w: [w.mirror]),
    Case("prepare into its own source", lambda w: prepare_args(w, w.data / "mirror"), says=["overlaps"],
         untouched=lambda w: [w.data]),
    Case("prepare with a crf out of range", lambda w: prepare_args(w, w.root / "p1", "--crf", "99"),
         says=["--crf must be 0 to 51"], untouched=lambda w: [w.root / "p1"]),
    Case("prepare with no workers", lambda w: prepare_args(w, w.root / "p4", "--workers", "0"),
         says=["--workers must be >= 1"], untouched=lambda w: [w.root / "p4"]),
    Case("prepare with an unknown preset is one line", lambda w: prepare_args(w, w.root / "p2", "--preset", "quick"),
         says=["--preset", "invalid choice"], never_says=ONE_LINE, max_lines=1),
    Case("prepare from a folder that is not there", lambda w: prepare_args(w, w.root / "p3")[:2]
         + [str(w.root / "none"), "--dst", str(w.root / "p3")], says=["is not a directory"]),
    # synthetic
    Case("synthetic into a user's folder", lambda w: ["synthetic", "--root", str(w.user), "--layout", "webvid"],
         says=["not empty", "--root"], untouched=lambda w: [w.user]),
    Case("synthetic over a dataset made with other parameters",
         lambda w: ["synthetic", "--root", str(w.data), "--layout", "msrvtt", "--num-train", "3"],
         says=["other parameters"], untouched=lambda w: [w.data]),
    Case("synthetic with an odd frame size", lambda w: ["synthetic", "--root", str(w.root / "y1"), "--size", "15",
                                                        "15"], says=["even"], untouched=lambda w: [w.root / "y1"]),
    Case("synthetic onto a file", lambda w: ["synthetic", "--root", str(w.user / "notes.txt")],
         says=["not a directory"], untouched=lambda w: [w.user]),
    # demo: checks its run folder before it makes any data
    Case("demo into a user's run folder",
         lambda w: ["demo", "--config", str(demo_config(w, w.user)), "--data", str(w.root / "demo_data")],
         says=["neither empty nor"], untouched=lambda w: [w.user, w.root / "demo_data"], max_lines=2),
    Case("demo over a dataset made with other parameters",
         lambda w: ["demo", "--config", str(demo_config(w, w.root / "demo_run")), "--data", str(w.data)],
         says=["other parameters"], untouched=lambda w: [w.data, w.root / "demo_run"], max_lines=2),
    Case("demo with no threads", lambda w: ["demo", "--threads", "0"], says=["--threads must be >= 1"]),
    # the command itself
    Case("an unknown command is one line", lambda w: ["tset"], says=["unknown command 'tset'", "did you mean 'test'"],
         never_says=ONE_LINE, max_lines=1),
]


@pytest.mark.parametrize("case", TRAIN + DATA, ids=lambda c: c.name)
def test_catalogue(case, workspace):
    """One row of the catalogue. `run_case` asserts the row: the exit code, the words the message must (and must
    not) contain, its line count, and that every watched file and folder is unchanged (hashed before and after)."""
    try:
        run_case(case, workspace)
    finally:
        while workspace.locks:
            workspace.locks.pop().release()


def test_refused_runs_leave_no_lock_and_a_used_run_is_continued(workspace):
    """A refused run removes the lock file and any folder it made; `--ckpt_path last` continues a used run folder
    and records itself in the folder's marker."""
    fresh = workspace.root / "fresh"
    assert not list(fresh.rglob(LOCK)) and all(not any(folder.iterdir()) for folder in fresh.iterdir())
    code, output = run_command(workspace.fit("--data.max_length", "600", "--run_dir", str(fresh / "new" / "run")))
    assert code == 2 and not (fresh / "new").exists(), output  # the folders it made for the run are gone again
    assert not (workspace.root / "demo_data").exists() and not (workspace.root / "demo_run").exists()
    code, output = run_command(workspace.fit("--ckpt_path", "last"))
    assert code == 0, output
    runs = json.loads((workspace.run / MARKER).read_text())["runs"]
    assert [run["command"] for run in runs][:2] == ["fit", "fit"] and runs[1]["argv"][-1] == "last"
    assert (workspace.run / "config.yaml").is_file() and not list(workspace.run.glob("config-*.yaml"))


def test_ctrl_c_during_shard_is_one_line_and_a_rerun_finishes(tmp_path):
    src = make_synthetic_dataset(tmp_path / "webvid", "webvid", num_train=150, num_test=1, num_frames_per_video=4,
                                 size=(16, 16), seed=9)
    dst = tmp_path / "shards"
    argv = ["shard", "--src", str(src), "--layout", "webvid", "--dst", str(dst), "--workers", "1",
            "--chunk-bytes", "3KB", "--quiet"]
    case = Case("Ctrl-C while LitData writes the shards", lambda w: argv, code=130, subprocess=True,
                interrupt=lambda w: len(list(dst.glob("chunk-*.bin"))) >= 2, says=["interrupted"], max_lines=None)
    output = run_case(case, None)
    assert "Traceback (most recent" not in output and not (dst / "index.json").exists()
    code, output = run_command(argv)
    assert code == 0, output
    from litdata import StreamingDataset

    shards = StreamingDataset(str(dst))
    assert sorted(str(shards[i]["id"]) for i in range(len(shards))) == sorted(WebVid(src).records["id"])


def test_the_catalogue_covers_every_command_that_writes():
    names = " ".join(case.name for case in TRAIN + DATA)
    for command in ("fit", "validate", "test", "predict", "shard", "prepare", "synthetic", "demo"):
        assert command in names, command


def test_run_dir_alone_moves_every_output(workspace):
    """`--run_dir` overrides the config's run folder for everything a fit writes; the config's folder is left
    as it was."""
    moved = workspace.root / "moved"
    before = fingerprint(workspace.run)
    code, output = run_command(workspace.fit("--run_dir", str(moved)))
    assert code == 0, output
    names = {p.relative_to(moved).as_posix() for p in moved.rglob("*") if p.is_file()}
    assert {"checkpoints/last.ckpt", "checkpoints/stage0-1f-best.ckpt", "checkpoints/stage0-1f-last.ckpt",
            "checkpoints/curves.png", "config.yaml", "csv/version_0/metrics.csv", MARKER} <= names
    assert any(name.startswith("events.out.tfevents.") for name in names)
    assert yaml.safe_load((moved / "config.yaml").read_text())["trainer"]["default_root_dir"] == str(moved)
    assert fingerprint(workspace.run) == before
