"""The hostile-user catalogue for `index`, `search` and `serve`: one row per careless or hostile input.

Each row runs the command and checks its exit code, the words of its one message, and that the
files it names are exactly as they were (hashed before and after). The server's URL cases
(traversal, huge numbers, blank queries) are in test_search_server.py: they need a running server.
"""
import os
import shutil
import signal
import socket
import sqlite3
import stat
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from helpers.catalogue import Case, run_case, run_command
from helpers.search import save_tiny_checkpoint, video_folder

from lightning_frozen.search.store import FolderLock


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A tiny checkpoint, three videos, their index (windows of 1 s) and a weights file that records no config."""
    root = tmp_path_factory.mktemp("catalogue")
    ckpt = save_tiny_checkpoint(root / "tiny.ckpt")
    videos = video_folder(root / "videos", count=2, frames=20)
    code, output = run_command(["index", "--ckpt", str(ckpt), "--videos", str(videos), "--out", str(root / "index"),
                                "--window-seconds", "1", "--no-progress"])
    assert code == 0, output
    published = root / "published.pth.tar"
    torch.save({"state_dict": torch.load(ckpt, weights_only=True)["state_dict"]}, published)
    return SimpleNamespace(ckpt=ckpt, videos=videos, index=root / "index", published=published)


@pytest.fixture
def workspace(base, tmp_path):
    """The shared files and a copy of the index of one's own, under tmp."""
    ws = SimpleNamespace(ckpt=str(base.ckpt), videos=str(base.videos), published=str(base.published),
                         index=tmp_path / "index", tmp=tmp_path, held=[])
    shutil.copytree(base.index, ws.index)
    yield ws
    for thing in ws.held:  # locks and sockets a case holds while it runs
        thing.close() if hasattr(thing, "close") else thing.release()
    for path in [tmp_path, *tmp_path.rglob("*")]:  # a case may leave folders read-only
        if path.is_dir() and not path.is_symlink():
            path.chmod(path.stat().st_mode | stat.S_IWUSR)


def index_args(ws, *extra, out=None, videos=None):
    return ["index", "--ckpt", ws.ckpt, "--videos", str(videos or ws.videos), "--out", str(out or ws.tmp / "new"),
            "--no-progress", *extra]


def same_index(ws, *extra):
    """The command that made the workspace's index (the same inputs)."""
    return index_args(ws, "--window-seconds", "1", *extra, out=ws.index)


def sql(ws, *statements):
    with sqlite3.connect(ws.index / "index.sqlite") as db:
        for statement in statements:
            db.execute(statement)


def hold_lock(ws):
    ws.held.append(FolderLock(ws.index).acquire())


def killed_lock_holder(ws):
    """A run that took the lock and was killed (SIGKILL): its lock file stays, its lock is gone."""
    code = (f"import os, signal; from lightning_frozen.search.store import FolderLock; "
            f"FolderLock({str(ws.index)!r}).acquire(); os.kill(os.getpid(), signal.SIGKILL)")
    assert subprocess.run([sys.executable, "-c", code]).returncode == -signal.SIGKILL
    assert (ws.index / ".lock").read_text().strip()


def busy_port(ws):
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(1)
    ws.held.append(sock)
    ws.port = sock.getsockname()[1]


def links_out(ws):
    (ws.tmp / "links").mkdir()
    os.symlink(next(Path(ws.videos).rglob("*.mp4")), ws.tmp / "links" / "elsewhere.mp4")


def read_only(ws):
    for path in [ws.index, *ws.index.rglob("*")]:
        path.chmod(0o555 if path.is_dir() else 0o444)


def older_manifest(ws):
    (ws.index / "manifest.json").write_text('{"fingerprint": "ab12", "settings": {}, "version": 1}')


def folder_with(name, *files):
    def make(ws):
        (ws.tmp / name).mkdir()
        for file in files:
            (ws.tmp / name / file).write_text("mine")
    return make


def truncate(name):
    def cut(ws):
        with open(ws.index / name, "r+b") as handle:
            handle.truncate(0 if name == "index.sqlite" else 1000)
    return cut


def index_folder(ws):
    return [ws.index]


TRACEBACK = "Traceback (most recent call last)"  # the CLI's own hint names the word "traceback"


def row(name, argv, **checks) -> Case:
    """A case whose output must hold no traceback (and no "serving" line where given)."""
    return Case(name, argv, **{"never_says": (TRACEBACK,), **checks})


CASES = [
    # -- index: values that mean nothing, refused before anything is written ---------------------------------
    row("index --frames 0", lambda ws: index_args(ws, "--frames", "0"), says=["--frames", ">= 1", "--help"],
         max_lines=1),
    row("index --frames above the model's", lambda ws: index_args(ws, "--frames", "9"),
         says=["--frames", "model's 4 frames"]),
    row("index --window-seconds 0", lambda ws: index_args(ws, "--window-seconds", "0"),
         says=["--window-seconds", "> 0"], max_lines=1),
    row("index --stride-seconds -1", lambda ws: index_args(ws, "--stride-seconds", "-1"),
         says=["--stride-seconds", "> 0"], max_lines=1),
    row("index --window-seconds nan", lambda ws: index_args(ws, "--window-seconds", "nan"),
         says=["--window-seconds", "> 0"], max_lines=1),
    row("index --batch-size 0", lambda ws: index_args(ws, "--batch-size", "0"), says=["--batch-size", ">= 1"],
         max_lines=1),
    row("index --num-workers -1", lambda ws: index_args(ws, "--num-workers", "-1"), says=["--num-workers", ">= 0"],
         max_lines=1),
    row("index --devices 0", lambda ws: index_args(ws, "--devices", "0"), says=["--devices", ">= 1"], max_lines=1),
    row("index without --ckpt", lambda ws: ["index", "--videos", ws.videos, "--out", str(ws.tmp / "new")],
         says=["--ckpt", "required", "--help"], max_lines=1),
    row("index with an unknown option", lambda ws: index_args(ws, "--follow-symlinks"),
         says=["unrecognized", "--follow-symlinks", "--help"], max_lines=1),
    row("index --videos that does not exist",
         lambda ws: ["index", "--ckpt", ws.ckpt, "--videos", str(ws.tmp / "nowhere"), "--out", str(ws.tmp / "new")],
         says=["--videos", "nowhere", "not a folder"]),
    row("index --ckpt that does not exist",
         lambda ws: ["index", "--ckpt", str(ws.tmp / "no.ckpt"), "--videos", ws.videos, "--out", str(ws.tmp / "new")],
         says=["--ckpt", "no.ckpt", "not found"]),
    row("index a weights file that records no config",
         lambda ws: ["index", "--ckpt", ws.published, "--videos", ws.videos, "--out", str(ws.tmp / "new")],
         says=["published.pth.tar", "--model-config", "stformer_b_16_224"]),
    # -- index: the output folder is owned -------------------------------------------------------------------
    row("index --out an index of another folder",
         lambda ws: index_args(ws, "--window-seconds", "1", out=ws.index, videos=ws.tmp / "other"),
         prepare=lambda ws: shutil.copytree(ws.videos, ws.tmp / "other"),
         says=["holds the videos of", "other", "would drop", "new --out"], untouched=index_folder),
    row("index --out a folder with the user's files", lambda ws: index_args(ws, out=ws.tmp / "mine"),
         prepare=folder_with("mine", "notes.txt", "thesis.tex"),
         says=["mine", "not empty", "no manifest.json", "new or empty folder"], untouched=lambda ws: [ws.tmp / "mine"]),
    row("index --out a file", lambda ws: index_args(ws, out=ws.tmp / "mine" / "notes.txt"),
         prepare=folder_with("mine", "notes.txt"), says=["notes.txt", "is a file"],
         untouched=lambda ws: [ws.tmp / "mine"]),
    row("index --out an index made with other settings", lambda ws: index_args(ws, "--window-seconds", "2",
                                                                                out=ws.index),
         says=["windows of 1 s", "windows of 2 s", "new --out"], untouched=index_folder),
    row("index --out an index made by an older version", same_index, prepare=older_manifest,
         says=["older", "new --out"], untouched=index_folder),
    row("a second index run while one writes", same_index, prepare=hold_lock,
         says=["another `lightning-frozen index` run", f"pid {os.getpid()}", "wait"], untouched=index_folder),
    row("index after a run that was killed holding the lock", same_index, prepare=killed_lock_holder, code=0,
         says=["index: 3 videos", "kept 3 unchanged"], max_lines=1),
    # -- index: nothing indexed is a failure, with the reason --------------------------------------------------
    row("index a folder of links that leave it",
         lambda ws: index_args(ws, out=ws.tmp / "idx", videos=ws.tmp / "links"), prepare=links_out, code=1,
         says=["index: 0 videos", "elsewhere.mp4", "indexed no video", "--follow-links"]),
    row("index an empty folder", lambda ws: index_args(ws, out=ws.tmp / "idx", videos=ws.tmp / "empty"),
         prepare=lambda ws: (ws.tmp / "empty").mkdir(), code=1,
         says=["found no video files", ".mp4"]),
    # -- search: values that mean nothing ---------------------------------------------------------------------
    row("search an empty query", lambda ws: ["search", str(ws.index), ""], says=["query is empty"],
         untouched=index_folder),
    row("search a blank query", lambda ws: ["search", str(ws.index), "  \t "], says=["query is empty"]),
    row("search -k 0", lambda ws: ["search", str(ws.index), "a dog", "-k", "0"], says=["-k", ">= 1", "--help"],
         max_lines=1, untouched=index_folder),
    row("search -k -3", lambda ws: ["search", str(ws.index), "a dog", "-k", "-3"], says=["-k", ">= 1"], max_lines=1),
    row("search -k ten", lambda ws: ["search", str(ws.index), "a dog", "-k", "ten"], says=["-k", "integer"],
         max_lines=1),
    row("search --per frame", lambda ws: ["search", str(ws.index), "a dog", "--per", "frame"],
         says=["--per", "invalid choice", "--help"], max_lines=1),
    row("search a QB-Norm bank that does not exist",
         lambda ws: ["search", str(ws.index), "a dog", "--qb-norm-bank", str(ws.tmp / "bank.txt")],
         says=["--qb-norm-bank", "bank.txt", "not found"]),
    # -- search: damaged, partial, foreign and read-only folders ---------------------------------------------
    row("search a folder that does not exist", lambda ws: ["search", str(ws.tmp / "nowhere"), "a dog"],
         says=["nowhere", "does not exist", "lightning-frozen index"]),
    row("search a folder that is no index", lambda ws: ["search", str(ws.tmp / "mine"), "a dog"],
         prepare=folder_with("mine", "notes.txt"), says=["mine", "not a search index"],
         untouched=lambda ws: [ws.tmp / "mine"]),
    row("search an index whose index.sqlite is empty", lambda ws: ["search", str(ws.index), "a dog"],
         prepare=truncate("index.sqlite"), says=["damaged", "0 bytes", "lightning-frozen index --ckpt", "--out"],
         untouched=index_folder),
    row("search an index whose index.sqlite is no database", lambda ws: ["search", str(ws.index), "a dog"],
         prepare=lambda ws: (ws.index / "index.sqlite").write_bytes(b"garbage" * 1000),
         says=["damaged", "cannot be read", "lightning-frozen index --ckpt"], untouched=index_folder),
    row("search an index whose text tower is cut short", lambda ws: ["search", str(ws.index), "a dog"],
         prepare=truncate("text_tower.pt"), says=["damaged", "text_tower.pt", "lightning-frozen index --ckpt"],
         untouched=index_folder),
    row("search an index made by an older version", lambda ws: ["search", str(ws.index), "a dog"],
         prepare=older_manifest, says=["older", "format 1"], untouched=index_folder),
    row("search a partial index (its run was killed)", lambda ws: ["search", str(ws.index), "a dog", "-k", "1"],
         prepare=lambda ws: sql(ws, "UPDATE meta SET value = '0' WHERE key = 'complete'",
                                "DELETE FROM videos WHERE id = (SELECT MAX(id) FROM videos)"),
         code=0, says=["partial", "2 videos were committed", "run it again", "lightning-frozen index --ckpt", ".mp4"],
         untouched=index_folder),
    row("search an index whose FAISS file is gone", lambda ws: ["search", str(ws.index), "a dog", "-k", "1"],
         prepare=lambda ws: (ws.index / "faiss.index").unlink(), code=0,
         says=["faiss index is missing", "built in memory", "lightning-frozen index --ckpt", ".mp4"],
         untouched=index_folder),
    row("search a read-only index", lambda ws: ["search", str(ws.index), "a dog", "-k", "2"], prepare=read_only,
         code=0, says=[".mp4"], untouched=index_folder),
    # -- serve ------------------------------------------------------------------------------------------------
    row("serve --port 70000", lambda ws: ["serve", str(ws.index), "--port", "70000"],
         says=["--port", "65535", "--help"], max_lines=1),
    row("serve --port -1", lambda ws: ["serve", str(ws.index), "--port", "-1"], says=["--port", "65535"],
         max_lines=1),
    row("serve --port http", lambda ws: ["serve", str(ws.index), "--port", "http"], says=["--port", "integer"],
         max_lines=1),
    row("serve on a port in use", lambda ws: ["serve", str(ws.index), "--port", str(ws.port)], prepare=busy_port,
         says=["cannot listen on 127.0.0.1", "in use", "--port"], never_says=[TRACEBACK, "serving"],
         untouched=index_folder),
    row("serve a damaged index", lambda ws: ["serve", str(ws.index)], prepare=truncate("index.sqlite"),
         says=["damaged", "lightning-frozen index --ckpt"], never_says=[TRACEBACK, "serving"],
         untouched=index_folder),
]


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.name)
def test_catalogue(case, workspace):
    run_case(case, workspace)
    assert not (workspace.tmp / "new").exists(), "a refused run created its --out folder"
