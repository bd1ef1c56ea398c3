"""benchmarks/model_throughput.py's cells in-process: isolation, interrupts, the budget, the exactness check."""
import json
from pathlib import Path

import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture
def bench(monkeypatch):
    """The benchmark module (its folder on sys.path), with the session's torch thread count restored after."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import model_throughput

    threads = torch.get_num_threads()
    yield model_throughput
    torch.set_num_threads(threads)


def run(bench, tmp_path, *cells, extra=()):
    out = tmp_path / "cells.json"
    bench.main(["--device", "cpu", "--quick", "--cells", *cells, "--json", str(out), *extra])
    return json.loads(out.read_text())


def test_a_failing_cell_is_recorded_and_the_others_keep_their_figures(bench, tmp_path, monkeypatch):
    seen = {}

    def broken_exactness(_):
        seen["json"] = json.loads((tmp_path / "cells.json").read_text())  # as a kill now would leave it
        raise RuntimeError("deliberate failure in the exactness cell")

    monkeypatch.setattr(bench, "exactness", broken_exactness)
    report = run(bench, tmp_path, "tower.infer:2:fp32:eager", "exactness", "tower.train:2:fp32:eager")

    tower, failed, after = report["cells"]
    assert [c["status"] for c in report["cells"]] == ["ok", "failed", "ok"]
    assert tower["clips_per_s"] > 0 and tower["flops_analytic"] > 0
    assert failed["error"]["type"] == "builtins.RuntimeError"
    assert failed["error"]["message"] == "deliberate failure in the exactness cell"
    assert "broken_exactness" in failed["error"]["frames"][-1]
    assert after["clips_per_s"] > 0 and after["mode"] == "train"
    assert report["not_run"] == []
    # the file on disk while the failing cell ran: the finished cell with its figures, this one running
    assert [(c["name"], c["status"]) for c in seen["json"]["cells"]] == [
        ("tower.infer:2:fp32:eager depth=2", "ok"), ("exactness", "running")]
    assert seen["json"]["cells"][0]["clips_per_s"] == tower["clips_per_s"]


def test_an_interrupt_keeps_what_was_measured_and_lists_the_rest(bench, tmp_path, monkeypatch):
    def interrupted(_):
        raise KeyboardInterrupt

    monkeypatch.setattr(bench, "exactness", interrupted)
    with pytest.raises(SystemExit) as stop:
        run(bench, tmp_path, "tower.infer:2:fp32:eager", "exactness", "agreement", "tower.train:2:fp32:eager")
    assert stop.value.code == 130
    report = json.loads((tmp_path / "cells.json").read_text())
    assert [(c["name"], c["status"]) for c in report["cells"]] == [
        ("tower.infer:2:fp32:eager depth=2", "ok"), ("exactness", "interrupted")]
    assert report["cells"][1]["error"]["type"] == "builtins.KeyboardInterrupt"
    assert report["not_run"] == ["agreement", "tower.train:2:fp32:eager depth=2"]


def test_no_cell_starts_after_the_budget(bench, tmp_path):
    report = run(bench, tmp_path, "tower.infer:2:fp32:eager", "exactness", extra=["--budget-s", "0"])
    assert [c["status"] for c in report["cells"]] == ["ok"]
    assert report["not_run"] == ["exactness"]


def test_exactness_check_passes_the_fast_path_and_fails_a_perturbed_one(bench, tmp_path, monkeypatch):
    report = run(bench, tmp_path, "exactness")
    check = report["cells"][0]
    assert check["passed"] and check["output_rel"] < 1e-5 and check["worst_gradient_rel"] < 1e-5
    assert check["tensors"] == 2 + sum(1 for _ in bench.SpaceTimeTransformer(**bench.QUICK_VIDEO, depth=2).parameters())

    from lightning_frozen.models import space_time

    softmax = space_time._softmax  # the fast path's time attention alone uses it
    monkeypatch.setattr(space_time, "_softmax", lambda *a, **k: softmax(*a, **k) * 1.01)
    check = run(bench, tmp_path, "exactness")["cells"][0]
    assert not check["passed"] and max(check["output_rel"], check["worst_gradient_rel"]) > 1e-3


def test_gpu_plan_puts_the_first_figures_first(bench):
    plan = [group[0] for group in bench.gpu_plan()]
    assert plan[:5] == ["tower.train:64:bf16:eager", "vit.train:64:bf16:eager", "dual.train:64:bf16:eager",
                        "dual.infer:64:bf16:eager", "exactness"]
    compiled = [s for s in plan if s.endswith(":compiled")]
    assert compiled[:3] == ["tower.train:64:bf16:compiled", "fit:64:bf16:compiled", "dual.train:64:bf16:compiled"]
    assert plan.index("fit:64:bf16:eager") < plan.index("fit:64:bf16:compiled") < plan.index("agreement")
    assert len(plan) == len(set(plan))
