"""A callback that SIGKILLs its own training process in the middle of a chosen step (for test_resume.py).

It fires after the step's backward pass and before the optimiser step, so the step's work is
lost as it would be when the machine dies: nothing is flushed, no hook runs.
"""
import os
import signal

import pytorch_lightning as pl


class KillAtStep(pl.Callback):
    def __init__(self, step: int):
        self.step = step

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)
