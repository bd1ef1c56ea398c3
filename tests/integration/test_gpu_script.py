"""benchmarks/gpu.sh as far as a CPU allows: every kind of cell at toy size, a SIGINT mid-cell, the wheels."""
import json
import os
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "gpu.sh"
TARGETED = {("tower", "train", "bf16"), ("dual", "train", "bf16"), ("dual", "infer", "bf16")}


def run_script(*args, env=None):
    env = {**os.environ, "PYTHON": sys.executable, **(env or {})}
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, env=env, timeout=600)


@pytest.mark.slow
def test_quick_run_measures_every_kind_of_cell(tmp_path):
    done = run_script("--device", "cpu", "--quick", "--skip-loader", "--out", str(tmp_path))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "torch" in (tmp_path / "environment.txt").read_text()
    assert "gpu.sh: results in" in (tmp_path / "gpu.log").read_text()
    report = json.loads((tmp_path / "model_throughput_gpu.json").read_text())
    cells = {c["name"].split(" ")[0]: c for c in report["cells"]}
    failed = {name: c["error"] for name, c in cells.items() if c["status"] != "ok"}
    assert not failed and report["not_run"] == []
    # the GPU plan's order, batches cut to 4
    assert list(cells)[:10] == ["tower.train:4:bf16:eager", "vit.train:4:bf16:eager", "dual.train:4:bf16:eager",
                                "dual.infer:4:bf16:eager", "exactness", "tower.train:4:bf16:compiled",
                                "fit:4:bf16:eager", "fit:4:bf16:compiled", "dual.infer:4:bf16:compiled", "agreement"]
    throughput = [c for c in cells.values() if c["kind"] == "throughput"]
    assert {c["what"] for c in throughput} == {"tower", "tower-ref", "vit", "dual"}
    assert {(c["mode"], c["compile"]) for c in throughput} == {("train", "eager"), ("infer", "eager"),
                                                              ("train", "compiled"), ("infer", "compiled")}
    assert {c["precision"] for c in throughput} == {"bf16", "tf32"}
    assert cells["dual.train:4:bf16:eager:ckpt"]["grad_checkpointing"]

    tower = cells["tower.train:4:bf16:eager"]
    assert tower["clips_per_s"] > 0 and tower["peak_mib"] >= 0
    # the analytic FLOP count (used for MFU) against torch's FlopCounterMode, and MFU against the measured peak
    assert tower["flops_counted"] == pytest.approx(tower["flops_analytic"], rel=0.01)
    assert tower["mfu"] == pytest.approx(tower["flops_analytic"] / tower["step_s"]["median"]
                                         / report["matmul_peak_flops_per_s"]["bf16"])
    # targets apply on CUDA only; --quick profiles the cells that have them, so the profiling path runs here
    for c in throughput:
        assert "targets" not in c
        assert ("profile" in c) == ((c["what"], c["mode"], c["precision"]) in TARGETED), c["name"]
        if "profile" in c:
            top = c["profile"]["cpu_operators"]["top"]
            assert top and top[0]["ms_per_step"] >= top[-1]["ms_per_step"] > 0

    assert cells["exactness"]["passed"] and cells["exactness"]["worst_gradient_rel"] < 1e-5
    assert min(cells["agreement"]["bf16"].values()) > 0.999

    for compile in ("eager", "compiled"):
        fit = cells[f"fit:4:bf16:{compile}"]
        assert fit["batch"] == 4 and fit["timed_steps"] == 1 and fit["steps_run"] == 3
        assert fit["clips_per_s"] == pytest.approx(4 / fit["window_s"])
        assert 0 <= fit["data_wait_s"] < fit["window_s"] and fit["trainer_precision"] == "bf16-mixed"
        assert fit["profile"]["cpu_operators"]["top"] and "gpu_kernels" not in fit["profile"]
    assert cells["fit:4:bf16:compiled"]["first_step_s"] > cells["fit:4:bf16:eager"]["first_step_s"]  # compiling
    assert cells["fit:4:bf16:eager"]["step_clips_per_s"] == cells["dual.train:4:bf16:eager"]["clips_per_s"]


@pytest.mark.slow
def test_sigint_during_the_fit_cell_keeps_the_finished_cells(tmp_path):
    """What `timeout -s INT` does at the deadline: signal the process group while fit's child trains."""
    out = tmp_path / "cells.json"
    command = [sys.executable, str(ROOT / "benchmarks" / "model_throughput.py"), "--device", "cpu", "--quick",
               "--cells", "tower.infer:4:fp32:eager", "fit:4:fp32:eager", "agreement", "--json", str(out)]
    bench = subprocess.Popen(command, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                             text=True)
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and bench.poll() is None:
            if out.exists() and any(c["kind"] == "fit" for c in json.loads(out.read_text())["cells"]):
                break
            time.sleep(0.5)
        time.sleep(3)  # the fit child has started
        os.killpg(bench.pid, signal.SIGINT)
        _, stderr = bench.communicate(timeout=120)
    finally:
        if bench.poll() is None:
            os.killpg(bench.pid, signal.SIGKILL)
    assert bench.returncode == 130, stderr[-2000:]
    report = json.loads(out.read_text())
    assert [(c["name"], c["status"]) for c in report["cells"]] == [
        ("tower.infer:4:fp32:eager depth=2", "ok"), ("fit:4:fp32:eager depth=2", "interrupted")]
    assert report["cells"][0]["clips_per_s"] > 0
    assert report["cells"][1]["error"]["type"] == "builtins.KeyboardInterrupt"
    assert report["not_run"] == ["agreement"]


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
