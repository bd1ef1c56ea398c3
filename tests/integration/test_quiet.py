"""A run prints what a user acts on: one result table, no library adverts, load reports or doubled tables."""
import os
import subprocess
import sys

import yaml
from helpers import tiny_config

NOISE = ("LOAD REPORT", "Loading weights", "Tip:", "LightningCLI's args", "Validate metric", "LeafSpec", "set_vital")


def test_validate_prints_one_table_and_no_library_noise(tmp_path, tiny_msrvtt, text_dir):
    config = tiny_config(tmp_path, tiny_msrvtt, text_dir)
    data = yaml.safe_load(config.read_text())
    data["model"]["text"]["pretrained"] = True  # reading 1 of MiniLM's 6 layers used to print a LOAD REPORT
    config.write_text(yaml.safe_dump(data))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-m", "lightning_frozen.cli", "validate", "--config", str(config)],
                            capture_output=True, text=True, env=env, timeout=600)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-2000:]
    assert [noise for noise in NOISE if noise in output] == []
    assert output.count("MeanR") == 1 and "scored 6 of 6 videos" in output  # one table
