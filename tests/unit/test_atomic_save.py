"""Checkpoints are written whole or not at all: a failure mid-write leaves the previous file intact."""
import errno
import os

import pytest
import torch

from lightning_frozen import atomic
from lightning_frozen.checkpoint_io import SafeCheckpointIO


def _write_half_then_fail(obj, handle):
    """torch.save that runs out of disk halfway: part of the bytes reach the file, then ENOSPC."""
    handle.write(b"PK\x03\x04 half of a checkpoint")
    raise OSError(errno.ENOSPC, "No space left on device")


def test_failed_write_keeps_previous_checkpoint_and_names_path_and_free_space(tmp_path, monkeypatch):
    io = SafeCheckpointIO()
    path = tmp_path / "checkpoints" / "last.ckpt"
    io.save_checkpoint({"state_dict": {"w": torch.ones(3)}, "global_step": 1}, path)
    before = path.read_bytes()

    monkeypatch.setattr(torch, "save", _write_half_then_fail)
    with pytest.raises(OSError) as failure:
        io.save_checkpoint({"state_dict": {"w": torch.zeros(3)}, "global_step": 2}, path)
    message = str(failure.value)
    assert str(path) in message and "No space left on device" in message
    assert "free in" in message and atomic.free_space(path.parent) in message
    assert failure.value.errno == errno.ENOSPC
    monkeypatch.undo()

    assert path.read_bytes() == before  # the previous checkpoint, byte for byte
    assert io.load_checkpoint(path)["global_step"] == 1
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.ckpt"]  # no temporary file left behind


def test_save_goes_through_a_synced_temporary_file_in_the_same_folder(tmp_path, monkeypatch):
    renames, syncs = [], []
    real_replace, real_fsync = os.replace, os.fsync
    monkeypatch.setattr(atomic.os, "replace", lambda src, dst: (renames.append((src, dst)), real_replace(src, dst)))
    monkeypatch.setattr(atomic.os, "fsync", lambda fd: (syncs.append(fd), real_fsync(fd)))
    path = tmp_path / "stage0-1f-best.ckpt"
    SafeCheckpointIO().save_checkpoint({"x": torch.arange(4)}, path)
    (source, target), = renames
    assert os.path.dirname(source) == str(tmp_path) and target == path  # same folder: an atomic rename
    assert len(syncs) >= 1  # the data reached the disk before the rename
    assert torch.equal(torch.load(path, weights_only=True)["x"], torch.arange(4))
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask  # a plain file's mode, not the temporary file's 0600


def test_truncated_checkpoint_is_named_when_read(tmp_path):
    path = tmp_path / "last.ckpt"
    torch.save({"w": torch.ones(100)}, path)
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(Exception, match="last.ckpt is not a readable checkpoint"):
        SafeCheckpointIO().load_checkpoint(path)


def test_a_resumed_run_removes_what_a_killed_save_left_behind(tmp_path):
    from lightning_frozen.callbacks.resume import remove_partial_saves

    SafeCheckpointIO().save_checkpoint({"global_step": 3}, tmp_path / "last.ckpt")
    (tmp_path / ".last.ckpt.k2x9.tmp").write_bytes(b"PK half")  # what SIGKILL mid-save leaves
    (tmp_path / "notes.tmp").write_text("not ours")
    remove_partial_saves(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt", "notes.tmp"]


