"""Every shipped config parses against the current code (typed, no unknown keys)."""
from pathlib import Path

import pytest

from lightning_frozen.arguments import UsageError
from lightning_frozen.cli import run_cli

CONFIGS = sorted(str(p) for p in (Path(__file__).parents[2] / "configs").glob("*.yaml"))


def test_configs_exist():
    names = {Path(c).name for c in CONFIGS}
    assert {"demo.yaml", "msrvtt_4f_finetune.yaml", "webvid2m_1f.yaml", "webvid2m_2f.yaml", "webvid2m_4f.yaml",
            "cc_webvid2m.yaml", "demo_ipu.yaml", "webvid2m_8ipu_1f.yaml", "msrvtt_8ipu_4f.yaml"} <= names


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: Path(c).name)
def test_config_parses(config, capsys):
    with pytest.raises(SystemExit) as info:
        run_cli(["fit", "--config", config, "--print_config"])
    assert info.value.code in (0, None)
    printed = capsys.readouterr().out
    assert "model:" in printed and "data:" in printed and "trainer:" in printed


def test_bad_key_in_config_is_named(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(Path(CONFIGS[0]).read_text().replace("  lr:", "  learning_rate:", 1))
    with pytest.raises(UsageError, match="'learning_rate'.*`lightning-frozen fit --help` lists the options"):
        run_cli(["fit", "--config", str(bad), "--print_config"])
