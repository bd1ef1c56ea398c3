"""The installed `lightning-frozen` command: help, dispatch, and independence from the working folder."""
import os
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


LIGHT_HELP = """
import contextlib, io, sys
from lightning_frozen.cli import main
loaded = sorted(m for m in ("torch", "pytorch_lightning", "lightning_fabric") if m in sys.modules)
print("import:", loaded)
for argv in ([], ["--help"], *([tool, "--help"] for tool in ("synthetic", "prepare", "shard", "demo", "ipu-plan"))):
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        try:
            main(argv)
        except SystemExit as exit_:
            assert exit_.code in (0, None), (argv, exit_.code)
    assert "usage:" in out.getvalue(), argv
heavy = ("torch", "pytorch_lightning", "lightning_fabric", "pandas", "av")
print("help:", sorted(m for m in heavy if m in sys.modules))
"""


def test_the_command_and_its_tools_help_load_neither_torch_nor_lightning():
    """`lightning-frozen --help` and the data tools' `--help` answer at once: nothing heavy is imported until a
    subcommand runs (a fresh interpreter, so that nothing loaded by other tests counts)."""
    result = subprocess.run([sys.executable, "-c", LIGHT_HELP], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[:2] == ["import: []", "help: []"], result.stdout


HELP_AND_IMPORTS = """
import sys
from lightning_frozen.cli import main
try:
    main(sys.argv[1:])
except SystemExit as exit_:
    assert exit_.code in (0, None), exit_.code
print("torch imported:", "torch" in sys.modules)
"""


@pytest.mark.parametrize("command", ["fit", "index"])
def test_a_slow_help_is_built_once_then_printed_without_torch(tmp_path, command):
    """`fit --help` builds LightningCLI's parser and `index --help` imports torch; the second call prints the
    kept text, the same, without importing torch (each call a fresh interpreter)."""
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache"), "COLUMNS": "100"}
    runs = [subprocess.run([sys.executable, "-c", HELP_AND_IMPORTS, command, "--help"], env=env, cwd=tmp_path,
                           capture_output=True, text=True) for _ in range(2)]
    for run in runs:
        assert run.returncode == 0, run.stderr
    first, second = (run.stdout.rsplit("torch imported: ", 1) for run in runs)
    assert first[0].startswith("usage: lightning-frozen") and first[0] == second[0]
    assert second[1].strip() == "False"
    assert [p.name.split("-")[0] for p in (tmp_path / "cache" / "lightning-frozen" / "help").iterdir()] == [command]
