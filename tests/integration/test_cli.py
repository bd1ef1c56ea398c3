"""The installed `lightning-frozen` command: help, dispatch, and independence from the working folder."""
import subprocess
import sys
from pathlib import Path

import pytest

from lightning_frozen.cli import TOOL_COMMANDS, TRAINER_COMMANDS, main

COMMAND = Path(sys.executable).with_name("lightning-frozen")


@pytest.mark.skipif(not COMMAND.is_file(), reason="the console script is installed by `make install`")
def test_installed_command_lists_every_subcommand_from_another_folder(tmp_path):
    out = subprocess.run([str(COMMAND), "--help"], cwd=tmp_path, capture_output=True, text=True, check=True).stdout
    for name in [*TRAINER_COMMANDS, *TOOL_COMMANDS]:
        assert any(line.split()[:1] == [name] for line in out.splitlines()), name
    assert out.startswith("usage: lightning-frozen <command>")


@pytest.mark.skipif(not COMMAND.is_file(), reason="the console script is installed by `make install`")
def test_subcommand_usage_names_the_installed_command(tmp_path):
    for argv in (["fit", "--help"], ["synthetic", "--help"], ["prepare", "--help"]):
        out = subprocess.run([str(COMMAND), *argv], cwd=tmp_path, capture_output=True, text=True, check=True).stdout
        assert out.startswith("usage: lightning-frozen"), (argv, out[:80])
        assert "python -m" not in out


def test_package_never_imports_a_cli_module_from_the_working_folder(tmp_path):
    (tmp_path / "cli.py").write_text("raise SystemExit('the unrelated cli.py was imported')\n")
    result = subprocess.run([sys.executable, "-c", "import lightning_frozen.cli, lightning_frozen.demo; print('ok')"],
                            cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_tool_commands_dispatch_and_unknown_commands_fail_by_name(tmp_path, capsys):
    main(["synthetic", "--root", str(tmp_path / "w"), "--layout", "webvid", "--num-train", "1", "--num-test", "1",
          "--num-frames", "2", "--size", "16", "16"])
    assert (tmp_path / "w" / "metadata" / "results_2M_train.csv").is_file()
    with pytest.raises(SystemExit) as exit_info:
        main(["trian"])
    assert exit_info.value.code == 2
    assert "unknown command 'trian'" in capsys.readouterr().err
