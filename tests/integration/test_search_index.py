"""`lightning-frozen index` and `Index.search`: windows, embeddings, incremental updates,
kill-and-rerun, unreadable files, refusals, and rankings against brute force."""
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from helpers.search import rows, save_tiny_checkpoint, tiny_config, video_folder

from lightning_frozen.data.transforms import VideoTransform
from lightning_frozen.data.video import read_frames
from lightning_frozen.search import DamagedIndexError, Index, IndexMismatchError, ann, build_index
from lightning_frozen.search.windows import plan_windows
from lightning_frozen.tokenizer import build_tokenizer


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return save_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.ckpt")


@pytest.fixture(scope="module")
def built(tmp_path_factory, ckpt):
    """6 + 1 readable videos of 4 s and four broken entries, windows of 1 s every 0.5 s."""
    base = tmp_path_factory.mktemp("built")
    videos = video_folder(base / "videos", count=6, frames=40, broken=True)
    summary = build_index(videos, base / "index", ckpt, window_seconds=1.0, stride_seconds=0.5, batch_size=4,
                          progress=False)
    return videos, base / "index", summary


def test_windows_cover_the_video_and_short_videos_get_one():
    assert plan_windows(40, 10.0, 1.0, 0.5) == [(s, s + 10) for s in range(0, 31, 5)]
    assert plan_windows(42, 10.0, 1.0, 0.5)[-1] == (32, 42)  # the tail gets a window ending at the end
    assert plan_windows(7, 10.0, 1.0, 0.5) == [(0, 7)]
    with pytest.raises(ValueError, match="frame rate"):
        plan_windows(10, 0.0, 1.0, 0.5)


def test_index_holds_every_window_and_lists_unreadable_files(built):
    videos, index_dir, summary = built
    assert summary.videos == 7 and summary.windows == 7 * 7 and summary.embedded == 7
    reasons = dict(summary.unreadable)
    assert len(reasons) == 6  # empty, truncated, not a video, for each split (the missing ones are not on disk)
    assert any("empty" in r for r in reasons.values())
    assert all(str(videos) not in r for r in reasons.values())  # no absolute paths in reasons
    manifest = json.loads((index_dir / "manifest.json").read_text())
    assert manifest["settings"]["window_seconds"] == 1.0 and len(manifest["fingerprint"]) == 64
    table = rows(index_dir)
    assert [r[2:4] for r in table[:7]] == [(s / 10, s / 10 + 1.0) for s in range(0, 31, 5)]
    assert all(r[5][:2] == b"\xff\xd8" for r in table)  # a JPEG per window


def test_embeddings_match_an_independent_forward_pass(built, ckpt):
    videos, index_dir, _ = built
    from lightning_frozen import create_model

    model = create_model(weights=ckpt).eval()
    path, position, start, _, blob, _ = rows(index_dir)[9]  # second video, window 2: frames 10-19
    assert (position, start) == (2, 1.0)
    every_frame = read_frames(videos / path, 40, "uniform", size=128)  # frame i of 40 is frame i
    # 4 intervals of frames 10-19: [10, 12), [12, 15), [15, 17), [17, 20); their middle frames
    clip = every_frame[[10, 13, 15, 18]]
    with torch.no_grad():
        expected = model.encode_video(VideoTransform(train=False, input_res=32)(clip[None]))[0]
    expected = torch.nn.functional.normalize(expected, dim=0).numpy()
    np.testing.assert_allclose(np.frombuffer(blob, np.float32), expected, atol=1e-5)


def brute_force_text(ckpt, query):
    from lightning_frozen import create_model

    model = create_model(weights=ckpt).eval()
    tokens = build_tokenizer(model.text_config.name_or_path)([query], return_tensors="pt")
    with torch.no_grad():
        text = torch.nn.functional.normalize(model.encode_text(tokens["input_ids"], tokens["attention_mask"]), dim=-1)
    return text[0].numpy()


def brute_force(index_dir, ckpt, query):
    table = rows(index_dir)
    vectors = np.stack([np.frombuffer(r[4], np.float32) for r in table])
    return table, vectors @ brute_force_text(ckpt, query)


def test_search_ranks_as_brute_force_per_clip_and_per_video(built, ckpt):
    _, index_dir, _ = built
    query = "a white circle moving to the left on a blue background"
    table, scores = brute_force(index_dir, ckpt, query)
    index = Index(index_dir)
    clips = index.search(query, k=5, per="clip")
    order = np.argsort(-scores, kind="stable")[:5]
    assert [(h.path, h.start) for h in clips] == [(table[i][0], table[i][2]) for i in order]
    np.testing.assert_allclose([h.score for h in clips], scores[order], atol=1e-5)
    by_video: dict = {}
    for row, score in zip(table, scores):
        by_video.setdefault(row[0], []).append(score)
    for aggregate, reduce in (("max", max), ("mean", np.mean)):
        hits = index.search(query, k=3, aggregate=aggregate)
        want = sorted(by_video, key=lambda p: -reduce(by_video[p]))[:3]
        assert [h.path for h in hits] == want
        np.testing.assert_allclose([h.score for h in hits], [reduce(by_video[p]) for p in want], atol=1e-5)
    index.close()


def test_qb_norm_matches_an_independent_inverted_softmax(built, ckpt):
    _, index_dir, _ = built
    query, bank = "a green square moving up", ["a white circle moving left", "a red square", "green", "a dot"]
    table, scores = brute_force(index_dir, ckpt, query)
    vectors = np.stack([np.frombuffer(r[4], np.float32) for r in table])
    bank_vectors = np.stack([brute_force_text(ckpt, text) for text in bank])
    bank_sims = (bank_vectors @ vectors.T).astype(np.float64)
    log_norm = np.log(np.exp(20.0 * bank_sims).sum(axis=0))
    activated = set(bank_sims.argmax(axis=1))
    expected = 20.0 * scores - log_norm if scores.argmax() in activated else scores
    index = Index(index_dir)
    index.set_query_bank(bank, beta=20.0)
    hits = index.search(query, k=7, per="clip")
    order = np.argsort(-expected, kind="stable")[:7]
    assert [(h.path, h.start) for h in hits] == [(table[i][0], table[i][2]) for i in order]
    np.testing.assert_allclose([h.score for h in hits], expected[order], atol=1e-4)
    index.close()


def test_index_cli_kill_at_any_moment_then_rerun_equals_one_run(tmp_path, ckpt):
    videos = video_folder(tmp_path / "videos", count=14, frames=60)
    command = [sys.executable, "-m", "lightning_frozen.cli", "index", "--ckpt", str(ckpt), "--videos", str(videos),
               "--window-seconds", "1", "--batch-size", "4", "--no-progress"]
    subprocess.run([*command, "--out", str(tmp_path / "whole")], check=True, capture_output=True)
    killed_at = []
    for kill_after in (1, 6):  # commits seen before the kill
        process = subprocess.Popen([*command, "--out", str(tmp_path / "killed")], stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, text=True)
        database = tmp_path / "killed" / "index.sqlite"
        while process.poll() is None:
            try:
                with sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=0.05) as db:  # creates nothing
                    done = db.execute("SELECT COUNT(*) FROM videos").fetchone()[0]
            except sqlite3.Error:
                done = 0
            if done >= kill_after:
                process.send_signal(signal.SIGKILL)
                break
            time.sleep(0.01)
        output = process.communicate()[0]
        assert process.returncode == -signal.SIGKILL, f"the run ended before it could be killed:\n{output[-2000:]}"
        with sqlite3.connect(database) as db:
            killed_at.append(db.execute("SELECT COUNT(*) FROM videos").fetchone()[0])
    assert all(0 < n < 15 for n in killed_at)
    result = subprocess.run([*command, "--out", str(tmp_path / "killed")], check=True, capture_output=True, text=True)
    assert "kept" in result.stdout
    assert rows(tmp_path / "killed") == rows(tmp_path / "whole")
    ids = np.load(tmp_path / "killed" / "window_ids.npy")
    assert len(ids) == len(rows(tmp_path / "whole"))


def test_rerun_adds_new_reembeds_changed_and_drops_deleted_files(tmp_path, ckpt):
    videos = video_folder(tmp_path / "videos", count=5, frames=30)
    spare = video_folder(tmp_path / "spare", count=2, frames=50, seed=9)
    build_index(videos, tmp_path / "index", ckpt, batch_size=3, progress=False)
    before = {r[0]: r for r in rows(tmp_path / "index")}
    files = sorted(p.relative_to(videos).as_posix() for p in videos.rglob("*.mp4"))
    spare_files = sorted(spare.rglob("*.mp4"))
    (videos / files[0]).unlink()                                     # deleted
    shutil.copy(spare_files[0], videos / files[1])                    # changed (other size)
    os.utime(videos / files[1], ns=(1, 1))
    shutil.copy(spare_files[1], videos / "added.mp4")               # added
    summary = build_index(videos, tmp_path / "index", ckpt, batch_size=3, progress=False)
    assert (summary.embedded, summary.removed, summary.unchanged) == (2, 1, len(files) - 2)
    after = rows(tmp_path / "index")
    fresh = tmp_path / "fresh"
    build_index(videos, fresh, ckpt, batch_size=3, progress=False)
    assert [r[:4] for r in after] == [r[:4] for r in rows(fresh)]
    for got, want in zip(after, rows(fresh)):
        np.testing.assert_allclose(np.frombuffer(got[4], np.float32), np.frombuffer(want[4], np.float32), atol=1e-5)
    kept = [r for r in after if r[0] in files[2:]]
    assert kept and all(before[r[0]][0] == r[0] for r in kept)
    assert not any(r[0] == files[0] for r in after)
    again = build_index(videos, tmp_path / "index", ckpt, batch_size=3, progress=False)
    assert (again.embedded, again.removed) == (0, 0)


def test_index_refuses_another_model_or_settings_naming_both(tmp_path, built, ckpt):
    videos, index_dir, _ = built
    other = save_tiny_checkpoint(tmp_path / "other.ckpt", seed=1)
    with pytest.raises(IndexMismatchError, match=r"tiny\.ckpt .*asked for model other\.ckpt"):
        build_index(videos, index_dir, other, window_seconds=1.0, stride_seconds=0.5, progress=False)
    with pytest.raises(IndexMismatchError, match="windows of 1 s every 0.5 s.*windows of 2 s"):
        build_index(videos, index_dir, ckpt, window_seconds=2.0, stride_seconds=0.5, progress=False)


def test_a_query_reads_the_index_alone_and_refuses_a_changed_text_tower(tmp_path, built, ckpt):
    _, index_dir, _ = built
    moved = tmp_path / "index"
    shutil.copytree(index_dir, moved)
    manifest = json.loads((moved / "manifest.json").read_text())
    manifest["checkpoint"] = str(tmp_path / "gone.ckpt")   # a query never opens the checkpoint
    (moved / "manifest.json").write_text(json.dumps(manifest))
    assert Index(moved).search("a red square", k=2) == Index(index_dir).search("a red square", k=2)
    with open(moved / "text_tower.pt", "r+b") as handle:  # one byte of the stored text tower changed
        handle.seek(200)
        byte = handle.read(1)
        handle.seek(200)
        handle.write(bytes([byte[0] ^ 1]))
    with pytest.raises(DamagedIndexError, match="text_tower.pt changed since the index was built.*lightning-frozen "
                                                "index --ckpt"):
        Index(moved)


def test_search_cli_prints_the_json_of_index_search(built, capsys):
    from lightning_frozen.cli import main

    _, index_dir, _ = built
    main(["search", str(index_dir), "a red square", "-k", "3", "--json"])
    printed = json.loads(capsys.readouterr().out)
    index = Index(index_dir)
    assert printed == [h.as_json() for h in index.search("a red square", 3)]
    assert set(printed[0]) == {"path", "start", "end", "score"}
    index.close()


def test_approximate_index_recall_against_exact_on_clustered_vectors(tmp_path):
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(50, 32))
    vectors = (centres[rng.integers(50, size=20_000)] + 0.3 * rng.normal(size=(20_000, 32))).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    queries = vectors[rng.choice(20_000, 50)] + 0.1 * rng.normal(size=(50, 32)).astype(np.float32)
    approx, kind = ann.make_faiss_index(vectors, approximate_above=5_000)
    exact, exact_kind = ann.make_faiss_index(vectors)
    assert (kind, exact_kind) == ("ivf", "flat")
    got, want = approx.search(queries, 10)[1], exact.search(queries, 10)[1]
    recall = np.mean([len(set(g) & set(w)) / 10 for g, w in zip(got, want)])
    assert recall >= 0.9


def test_tiny_config_matches_the_checkpoint(ckpt):
    from lightning_frozen.safe_load import safe_torch_load

    assert safe_torch_load(ckpt)["hyper_parameters"] == tiny_config()


def test_two_devices_through_trainer_predict_give_the_rows_of_one_process(tmp_path, built, ckpt):
    videos, index_dir, _ = built
    summary = build_index(videos, tmp_path / "ddp", ckpt, window_seconds=1.0, stride_seconds=0.5, batch_size=4,
                          progress=False, devices=2, accelerator="cpu")
    assert (summary.videos, summary.windows, len(summary.unreadable)) == (7, 49, 6)
    got, want = rows(tmp_path / "ddp"), rows(index_dir)
    assert [r[:4] + r[5:] for r in got] == [r[:4] + r[5:] for r in want]  # windows and thumbnails
    for a, b in zip(got, want):
        np.testing.assert_allclose(np.frombuffer(a[4], np.float32), np.frombuffer(b[4], np.float32), atol=1e-5)
    assert not (tmp_path / "ddp" / "parts").exists()


def test_a_query_imports_neither_lightning_nor_the_indexing_code(built):
    """In a fresh process: the package, the query module and a whole `search` leave Lightning, the
    indexing code and the Hugging Face model code unimported (they are what made a query slow)."""
    _, index_dir, _ = built
    code = f"""
import sys
import lightning_frozen.search, lightning_frozen.search.query
from lightning_frozen.search.query import main
main([{str(index_dir)!r}, "a red square", "-k", "2"])
heavy = ("pytorch_lightning", "lightning", "lightning_fabric", "timm", "transformers.modeling_utils",
         "lightning_frozen.search.index", "lightning_frozen.search.writer", "lightning_frozen.module",
         "lightning_frozen.models")
print(sorted(name for name in sys.modules if any(name == h or name.startswith(h + ".") for h in heavy)))
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == "[]"
    assert ".mp4" in done.stdout
