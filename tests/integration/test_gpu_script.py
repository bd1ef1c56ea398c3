"""benchmarks/gpu.sh as far as a CPU allows: the plan's order, the budget, JSON per cell, wheels."""
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "gpu.sh"


def run_script(*args, env=None):
    env = {**os.environ, "PYTHON": sys.executable, **(env or {})}
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, env=env, timeout=600)


@pytest.mark.slow
def test_dry_run_measures_the_first_cell_and_lists_the_rest(tmp_path):
    done = run_script("--device", "cpu", "--quick", "--budget-s", "0", "--skip-loader", "--out", str(tmp_path))
    assert done.returncode == 0, done.stderr[-2000:]
    assert "torch" in (tmp_path / "environment.txt").read_text()
    report = json.loads((tmp_path / "model_throughput_gpu.json").read_text())
    # a budget of 0 s runs the first cell only: the tower, bf16, eager comes first, its compiled twin next
    assert [c["cell"] for c in report["cells"]] == ["tower.train:4:bf16:eager depth=2"]
    assert report["not_run"][0] == "tower.train:4:bf16:compiled depth=2"
    assert report["not_run"][1:4] == ["vit.train:4:bf16:eager depth=2", "dual.train:4:bf16:eager depth=2",
                                      "dual.infer:4:bf16:eager depth=2"]
    cell = report["cells"][0]
    assert cell["clips_per_s"] > 0 and cell["peak_mib"] >= 0
    assert report["matmul_peak_flops_per_s"]["bf16"] > 0
    # the analytic FLOP count (used for MFU) against torch's FlopCounterMode
    assert cell["flops_counted"] == pytest.approx(cell["flops_analytic"], rel=0.01)
    assert cell["mfu"] == pytest.approx(cell["flops_analytic"] / cell["step_s"]["median"]
                                        / report["matmul_peak_flops_per_s"]["bf16"])


def _wheel(folder: Path, name: str) -> Path:
    """A minimal pure-Python wheel holding one module `name`."""
    dist = f"{name}-1.0.dist-info"
    path = folder / f"{name}-1.0-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as whl:
        whl.writestr(f"{name}.py", "ANSWER = 42\n")
        whl.writestr(f"{dist}/METADATA", f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
        whl.writestr(f"{dist}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        whl.writestr(f"{dist}/RECORD", "")
    return path


def test_missing_module_is_installed_from_the_wheels_folder(tmp_path):
    wheels, site = tmp_path / "wheels", tmp_path / "site"
    wheels.mkdir()
    env = {"WHEELS": str(wheels), "SITE": str(site)}
    args = ("--deps-only", "--skip-loader", "--require", "lf_probe_module")

    missing = run_script(*args, env=env)
    assert missing.returncode == 1
    assert "lf_probe_module" in missing.stderr and "fetch-wheels" in missing.stderr

    _wheel(wheels, "lf_probe_module")
    done = run_script(*args, env=env)
    assert done.returncode == 0, done.stderr
    assert "installing 1 wheel(s)" in done.stdout
    assert (site / "lf_probe_module.py").read_text() == "ANSWER = 42\n"
