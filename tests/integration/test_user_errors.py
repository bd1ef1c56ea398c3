"""A user's mistake ends in one message naming the file or key and the fix, exit code 2, no traceback."""
import pytest
import torch
from helpers import tiny_config

from lightning_frozen.cli import DEBUG_ENV, main


def run_main(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out + captured.err


def test_missing_dataset_root_is_one_message_with_exit_code_2(tmp_path, tiny_msrvtt, text_dir, capsys, monkeypatch):
    monkeypatch.delenv(DEBUG_ENV, raising=False)
    config = tiny_config(tmp_path, tiny_msrvtt, text_dir)
    config.write_text(config.read_text().replace(str(tiny_msrvtt), str(tmp_path / "no_such_folder")))
    code, output = run_main(["validate", "--config", str(config)], capsys)
    assert code == 2
    assert f"dataset root '{tmp_path / 'no_such_folder'}' is not a directory" in output
    assert "Traceback" not in output and "Union subtypes" not in output
    assert f"set {DEBUG_ENV}=1" in output


def test_debug_variable_shows_the_traceback(tmp_path, tiny_msrvtt, text_dir, monkeypatch):
    monkeypatch.setenv(DEBUG_ENV, "1")
    config = tiny_config(tmp_path, tiny_msrvtt, text_dir)
    config.write_text(config.read_text().replace(str(tiny_msrvtt), str(tmp_path / "no_such_folder")))
    with pytest.raises(ValueError, match="is not a directory"):
        main(["validate", "--config", str(config)])


def test_empty_video_folder_is_named(tmp_path, tiny_msrvtt, text_dir, capsys, monkeypatch):
    monkeypatch.delenv(DEBUG_ENV, raising=False)
    config = tiny_config(tmp_path, tiny_msrvtt, text_dir)
    (tmp_path / "empty").mkdir()
    code, output = run_main(["predict", "--config", str(config),
                             "--data.predict_dataset", "lightning_frozen.data.VideoFolder",
                             "--data.predict_dataset.root", str(tmp_path / "empty"),
                             "--embeddings.output", str(tmp_path / "out.pt")], capsys)
    assert code == 2 and "no files with extensions" in output and str(tmp_path / "empty") in output
    assert "Traceback" not in output and not (tmp_path / "out.pt").exists()


def test_truncated_checkpoint_is_named(tmp_path, tiny_msrvtt, text_dir, capsys, monkeypatch):
    monkeypatch.delenv(DEBUG_ENV, raising=False)
    config = tiny_config(tmp_path, tiny_msrvtt, text_dir)
    broken = tmp_path / "best.ckpt"
    torch.save({"state_dict": {"w": torch.ones(1000)}}, broken)
    broken.write_bytes(broken.read_bytes()[:300])
    code, output = run_main(["test", "--config", str(config), "--ckpt_path", str(broken)], capsys)
    assert code == 2 and f"{broken} is not a readable checkpoint" in output and "Traceback" not in output


def test_missing_config_file_is_named(tmp_path, capsys):
    code, output = run_main(["fit", "--config", str(tmp_path / "nope.yaml")], capsys)
    assert code == 2 and "nope.yaml" in output and "does not exist" in output and "Traceback" not in output


def test_unreadable_video_under_strict_loading_is_named_even_from_a_worker(tmp_path, tiny_msrvtt, text_dir,
                                                                           capsys, monkeypatch):
    monkeypatch.delenv(DEBUG_ENV, raising=False)
    root = tmp_path / "msrvtt"
    root.mkdir()
    for part in ("annotation", "high-quality"):
        (root / part).symlink_to(tiny_msrvtt / part)
    (root / "videos" / "all").mkdir(parents=True)
    for video in (tiny_msrvtt / "videos" / "all").iterdir():
        (root / "videos" / "all" / video.name).symlink_to(video)
    test_id = (tiny_msrvtt / "high-quality/structured-symlinks/val_list_jsfusion.txt").read_text().split()[0]
    target = root / "videos" / "all" / f"{test_id}.mp4"
    target.unlink()
    target.write_bytes(b"not a video")
    config = tiny_config(tmp_path, root, text_dir)
    code, output = run_main(["test", "--config", str(config), "--data.num_workers", "1"], capsys)
    assert code == 2 and f"{test_id}.mp4" in output
    assert "Traceback" not in output and "DataLoader worker" not in output
