"""An index folder's store: read-only readers, damage named with its fix, the folder lock, the marker."""
import json
import os
import sqlite3

import numpy as np
import pytest

from lightning_frozen.search import store
from lightning_frozen.search.store import (
    DamagedIndexError,
    EmbeddingSettings,
    FolderLock,
    IndexBusyError,
    Manifest,
    VideoRecord,
)


def manifest_for(folder) -> Manifest:
    return Manifest(checkpoint="/ckpts/tiny.ckpt", fingerprint="0" * 64, model_config={}, model_config_source=None,
                    embedding_dim=4, settings=EmbeddingSettings(1.0, 0.5, 4, 32, 128, 128),
                    videos_root="/videos", follow_links=False, tokenizer={"max_length": None, "padding": "longest"})


def small_index(folder) -> Manifest:
    manifest = manifest_for(folder)
    manifest.write(folder)
    db = store.connect(folder)
    record = VideoRecord("a.mp4", 10, 1, fps=10.0, frames=20, codec="h264", spans=((0.0, 1.0), (1.0, 2.0)),
                         embeddings=np.eye(2, 4, dtype=np.float32), thumbnails=(b"j0", b"j1"))
    store.commit_videos(db, [record, VideoRecord("b.mp4", 0, 1, error="file is empty (0 bytes)")])
    store.set_complete(db, True)
    store.settle(db)
    db.close()
    return manifest


def files_of(folder) -> dict:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


@pytest.mark.parametrize("writable", [True, False])
def test_a_reader_reads_without_writing(tmp_path, monkeypatch, writable):
    manifest = small_index(tmp_path)
    before = files_of(tmp_path)
    if not writable:  # what a user without write permission sees (the tests may run as root)
        monkeypatch.setattr(store.os, "access", lambda path, mode: False)
    db = store.open_readonly(tmp_path, manifest)
    assert store.count_videos(db) == 1 and store.failures(db) == [("b.mp4", "file is empty (0 bytes)")]
    assert store.is_complete(db)
    with pytest.raises(sqlite3.OperationalError, match="readonly"):
        db.execute("DELETE FROM videos")
    db.close()
    assert files_of(tmp_path) == before


def test_an_empty_or_foreign_database_is_named_damaged_with_the_command_that_rebuilds_it(tmp_path):
    manifest = small_index(tmp_path)
    (tmp_path / store.DATABASE).write_bytes(b"")
    with pytest.raises(DamagedIndexError, match=r"empty \(0 bytes\); rebuild it: lightning-frozen index --ckpt "
                                                r"/ckpts/tiny.ckpt --videos /videos --out"):
        store.open_readonly(tmp_path, manifest)
    (tmp_path / store.DATABASE).write_bytes(b"not a database at all" * 10)
    with pytest.raises(DamagedIndexError, match="cannot be read"):
        store.open_readonly(tmp_path, manifest)
    with pytest.raises(DamagedIndexError, match="delete it and run `lightning-frozen index` again"):
        store.connect(tmp_path)


def test_the_lock_keeps_a_second_writer_out_and_dies_with_its_holder(tmp_path):
    first = FolderLock(tmp_path).acquire()
    assert store.writer_running(tmp_path)
    with pytest.raises(IndexBusyError, match=f"another `lightning-frozen index` run \\(pid {os.getpid()}\\)"):
        FolderLock(tmp_path).acquire()
    first.release()  # what the kernel does when the holder dies, however it dies
    assert not store.writer_running(tmp_path)
    with FolderLock(tmp_path):
        pass


def test_the_manifest_is_the_folders_marker(tmp_path):
    (tmp_path / store.MANIFEST).write_text(json.dumps({"name": "something else"}))
    with pytest.raises(FileExistsError, match="not written by `lightning-frozen index`"):
        Manifest.read(tmp_path)
    (tmp_path / store.MANIFEST).write_text(json.dumps({"fingerprint": "ab", "settings": {}, "version": 1}))
    with pytest.raises(DamagedIndexError, match="older lightning-frozen"):
        Manifest.read(tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        Manifest.read(tmp_path / "elsewhere")
