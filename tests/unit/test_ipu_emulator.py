"""The poptorch emulator against independent computations of poptorch's documented semantics."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from lightning_frozen.ipu import emulator as poptorch


class Regressor(nn.Module):
    """Two stages; returns (prediction, loss) like a poptorch training model."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.a = nn.Linear(3, 4)
        self.b = nn.Linear(4, 1)

    def forward(self, x, y):
        h = poptorch.recomputationCheckpoint(torch.tanh(self.a(x)))
        out = self.b(h).squeeze(-1)
        return out, poptorch.identity_loss(((out - y) ** 2).mean(), reduction="none")


def options(iters=1, repl=1, accum=1, **kw):
    o = poptorch.Options().deviceIterations(iters).replicationFactor(repl)
    o.Training.gradientAccumulation(accum)
    for name, value in kw.items():
        getattr(o, name)(*value) if isinstance(value, tuple) else getattr(o, name)(value)
    return o


def reference_adamw(model, micro_batches, steps, lr=0.01):
    """Plain torch: for each step, the mean of micro-batch gradients, then torch.optim.AdamW."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    per_step = len(micro_batches) // steps
    for s in range(steps):
        opt.zero_grad()
        for x, y in micro_batches[s * per_step:(s + 1) * per_step]:
            _, loss = model(x, y)
            (loss / per_step).backward()
        opt.step()
    return model


@pytest.mark.parametrize("iters,repl,accum", [(2, 2, 3), (3, 1, 2), (1, 4, 1)])
def test_training_steps_once_per_accumulation_cycle_per_device_iteration(iters, repl, accum):
    micro = 2
    x, y = torch.randn(iters * accum * repl * micro, 3), torch.randn(iters * accum * repl * micro)
    model, expected = Regressor(), Regressor()
    executor = poptorch.trainingModel(model, options(iters, repl, accum),
                                      poptorch.optim.AdamW(model.parameters(), lr=0.01, weight_decay=0.01))
    executor(x, y)
    executor.copyWeightsToHost()
    # combined batch layout [iterations, accumulation, replicas, micro]: micro-batches are contiguous chunks
    chunks = list(zip(x.split(micro), y.split(micro)))
    reference_adamw(expected, chunks, steps=iters)
    for p, q in zip(model.parameters(), expected.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-6)


def test_output_modes_return_what_poptorch_returns():
    iters, repl, micro = 4, 2, 3
    x = torch.randn(iters * repl * micro, 3)
    model = Regressor()
    expected = model.b(torch.tanh(model.a(x))).squeeze(-1).detach()  # inference: no update
    per_step = expected.reshape(iters, repl, micro)

    def run(mode, period=None):
        o = options(iters, repl)
        if mode is not None:
            o.outputMode(mode, period)
        return poptorch.inferenceModel(lambda_model(model), o)(x)

    torch.testing.assert_close(run(None), expected)  # inference default: All
    torch.testing.assert_close(run(poptorch.OutputMode.All), expected)
    torch.testing.assert_close(run(poptorch.OutputMode.Final), per_step[-1].reshape(-1))
    torch.testing.assert_close(run(poptorch.OutputMode.Sum), per_step.sum(0).reshape(-1))
    torch.testing.assert_close(run(poptorch.OutputMode.EveryN, 2), per_step[1::2].reshape(-1))


def lambda_model(model):
    class Infer(nn.Module):
        def __init__(self):
            super().__init__()
            self.m = model

        def forward(self, x):
            return self.m.b(torch.tanh(self.m.a(x))).squeeze(-1)

    return Infer()


def test_training_default_output_is_final_loss_per_replica():
    iters, repl, accum, micro = 2, 2, 3, 1
    x, y = torch.randn(iters * accum * repl * micro, 3), torch.randn(iters * accum * repl * micro)
    model = Regressor()
    executor = poptorch.trainingModel(model, options(iters, repl, accum), poptorch.optim.AdamW(model.parameters()))
    out, loss = executor(x, y)
    assert loss.shape == (repl,) and out.shape == (repl * micro,)
    # Final = the last accumulation step of the last iteration, one value per replica
    o = options(iters, repl, accum, outputMode=(poptorch.OutputMode.All,))
    _, all_losses = poptorch.trainingModel(Regressor(), o, poptorch.optim.AdamW(Regressor().parameters()))(x, y)
    assert all_losses.shape == (iters * accum * repl,)


def test_training_and_inference_executors_share_host_weights():
    model = Regressor()
    train = poptorch.trainingModel(model, options(), poptorch.optim.AdamW(model.parameters(), lr=0.1))
    infer = poptorch.inferenceModel(lambda_model(model), options())
    x, y = torch.randn(4, 3), torch.randn(4)
    before = infer(x).clone()
    host_before = model.a.weight.detach().clone()
    train(x, y)
    assert torch.equal(model.a.weight, host_before)  # device weights changed, host not yet
    after = infer(x)  # the inference executor pulls the training weights through the host
    assert not torch.equal(model.a.weight, host_before)
    expected = lambda_model(model)(x).detach()
    torch.testing.assert_close(after, expected)
    assert not torch.allclose(after, before)


@pytest.mark.parametrize("build,match", [
    (lambda: options(2, 2, 1).deviceIterations(0), "positive integer"),
    (lambda: poptorch.Options().setAvailableMemoryProportion({"IPU0": 1.5}), r"\(0, 1\]"),
    (lambda: poptorch.Options().outputMode(poptorch.OutputMode.EveryN), "output_return_period"),
    (lambda: poptorch.optim.AdamW(Regressor().parameters(), amsgrad=True), "amsgrad"),
    (lambda: poptorch.inferenceModel(Regressor(), options(3, 1, 1, outputMode=(poptorch.OutputMode.EveryN, 2))),
     "must divide"),
])
def test_rejects_what_poptorch_rejects(build, match):
    with pytest.raises((ValueError, AssertionError, poptorch.Error), match=match):
        build()


def test_rejects_combined_batch_that_does_not_divide():
    model = Regressor()
    executor = poptorch.trainingModel(model, options(2, 2, 3), poptorch.optim.AdamW(model.parameters()))
    with pytest.raises(poptorch.Error, match=r"must be a multiple of .*= 12"):
        executor(torch.randn(10, 3), torch.randn(10))


def test_pipeline_stages_need_accumulation_and_power_of_two_ipus():
    def staged(ipus):
        model = Regressor()
        poptorch.BeginBlock(model.a, "a", ipu_id=ipus[0])
        poptorch.BeginBlock(model.b, "b", ipu_id=ipus[1])
        return model

    x, y = torch.randn(12, 3), torch.randn(12)
    model = staged((0, 1))
    with pytest.raises(poptorch.Error, match=r"number of pipeline stages \(3\)"):
        poptorch.trainingModel(model, options(1, 1, 2), poptorch.optim.AdamW(model.parameters()))(x[:2], y[:2])
    model = staged((0, 1))
    executor = poptorch.trainingModel(model, options(1, 1, 3), poptorch.optim.AdamW(model.parameters()))
    executor(x[:3], y[:3])
    assert executor.last_trace.blocks == [("a", 0), ("b", 1)] and executor.last_trace.checkpoints == [0]
    model = staged((0, 2))  # 3 IPUs per replica: not a power of two
    with pytest.raises(poptorch.Error, match="power of 2"):
        poptorch.trainingModel(model, options(1, 1, 3), poptorch.optim.AdamW(model.parameters()))(x[:3], y[:3])
    model = staged((0, 2))
    o = options(1, 1, 3).autoRoundNumIPUs(True)
    poptorch.trainingModel(model, o, poptorch.optim.AdamW(model.parameters()))(x[:3], y[:3])
    model = staged((1, 0))  # runs backwards
    with pytest.raises(poptorch.Error, match="increasing order"):
        poptorch.trainingModel(model, options(1, 1, 3), poptorch.optim.AdamW(model.parameters()))(x[:3], y[:3])


def test_attach_detach_with_a_limited_ipu_pool():
    poptorch.set_available_ipus(1)
    try:
        model = Regressor()
        train = poptorch.trainingModel(model, options(), poptorch.optim.AdamW(model.parameters()))
        infer = poptorch.inferenceModel(lambda_model(model), options())
        x, y = torch.randn(2, 3), torch.randn(2)
        train(x, y)
        with pytest.raises(poptorch.Error, match="Failed to acquire"):
            infer(x)
        train.detachFromDevice()
        infer(x)
        assert infer.isAttached() and not train.isAttached()
    finally:
        poptorch.set_available_ipus(None)


def test_dataloader_combined_batch():
    o = options(2, 2, 3)
    data = torch.utils.data.TensorDataset(torch.arange(30).float())
    loader = poptorch.DataLoader(o, data, batch_size=2)
    assert loader.combinedBatchSize == 24
    batches = [b[0] for b in loader]
    assert len(batches) == 1 and torch.equal(batches[0], torch.arange(24).float())


def test_fp16_weights_with_fp32_accumulation_and_loss_scaling():
    model = Regressor().half()
    opt = poptorch.optim.AdamW(model.parameters(), lr=0.01, loss_scaling=1024, accum_type=torch.float32,
                               first_order_momentum_accum_type=torch.float32)
    executor = poptorch.trainingModel(model, options(1, 1, 2), opt)
    x, y = torch.randn(4, 3), torch.randn(4)
    _, loss = executor(x, y)
    executor.copyWeightsToHost()
    assert loss.dtype == torch.float16 and torch.isfinite(loss).all()
    assert model.a.weight.dtype == torch.float16
    state = opt.state[model.a.weight]
    assert state["exp_avg"].dtype == torch.float32 and state["step"] == 1
