"""The model summary at the start of a fit: parameters per layer and in total, no FLOPs column of zeros."""
import logging

import pytorch_lightning as pl
from pytorch_lightning.utilities.model_summary import summarize
from torch import nn

from lightning_frozen.callbacks import ParameterSummary


class Tiny(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.encoder = nn.Linear(4, 3)
        self.head = nn.Linear(3, 2)


def test_summary_lists_parameters_without_flops(caplog):
    summary = summarize(Tiny(), max_depth=1)
    with caplog.at_level(logging.INFO):
        ParameterSummary.summarize(summary._get_summary_data(), summary.total_parameters,
                                   summary.trainable_parameters, summary.model_size, summary.total_training_modes,
                                   summary.total_flops)
    text = caplog.text
    assert "encoder" in text and "head" in text and "23        Total params" in text  # 4*3+3 + 3*2+2
    assert "FLOPs" not in text and "Flops" not in text
