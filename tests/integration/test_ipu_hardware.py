"""The same IPU code path on real poptorch (the IPU Model when there is no IPU); skipped without poptorch.

Run on an IPU host with the Poplar SDK enabled: ``pytest -m ipu tests/test_ipu_hardware.py``.
"""
from __future__ import annotations

import copy

import pytest
import torch

poptorch = pytest.importorskip("poptorch")

from lightning_frozen.ipu import IPUOptions, IPUStrategy, build_options  # noqa: E402
from lightning_frozen.ipu.options import options_summary  # noqa: E402

pytestmark = pytest.mark.ipu


def _use_model() -> bool:
    return not poptorch.ipuHardwareIsAvailable(4)


def test_options_builder_on_real_poptorch():
    opts = IPUOptions(replication_factor=2, device_iterations=8, available_memory_proportion=[0.6, 0.3],
                      half_partials=True, stochastic_rounding=True, optimizer_state_offchip=True,
                      executable_cache_dir="/tmp/ipu_cache", random_seed=0)
    summary = options_summary(build_options(poptorch, opts, training=True, gradient_accumulation=15))
    assert summary["device_iterations"] == 8 and summary["gradient_accumulation"] == 15
    assert summary["available_memory_proportion"] == {0: 0.6, 1: 0.3}
    assert summary["partials_type"] == "half" and summary["stochastic_rounding"]
    assert not summary["optimizer_on_chip"]


def test_real_poptorch_run_matches_cpu_run():
    from test_ipu_strategy import TWO_STAGES, loader, tiny_module, trainer

    micro, repl, iters, accum = 2, 1, 2, 3
    reference = tiny_module()
    device = copy.deepcopy(reference)
    trainer(accelerator="cpu", max_steps=iters, accumulate_grad_batches=repl * accum).fit(
        reference, loader(micro * repl * iters * accum, micro))
    strategy = IPUStrategy(stage_map=TWO_STAGES, training_opts=IPUOptions(
        replication_factor=repl, device_iterations=iters, execution="pipelined", use_ipu_model=_use_model()),
        inference_opts=IPUOptions(use_ipu_model=_use_model()))
    trainer(accelerator="ipu", devices=2, strategy=strategy, max_steps=1, accumulate_grad_batches=accum).fit(
        device, loader(micro * repl * iters * accum, micro))
    for key, value in reference.state_dict().items():
        # IPU float32 arithmetic differs from the CPU's in rounding, not in semantics
        torch.testing.assert_close(device.state_dict()[key], value, rtol=1e-3, atol=1e-4)
