"""ParameterSummary: Lightning's model summary without its FLOPs column.

Lightning counts FLOPs by running ``example_input_array`` through the model; FrozenModule defines
none (a forward pass at the start of every fit, under FSDP or on an IPU, is not free), so the
column would read 0 for every layer and the total "0". The per-stage FLOPs of a stage map are
what ``lightning-frozen ipu-plan`` reports.
"""
from __future__ import annotations

from typing import Any

from pytorch_lightning.callbacks import ModelSummary
from pytorch_lightning.utilities.model_summary.model_summary import _format_summary_table


class ParameterSummary(ModelSummary):
    """Names, types, parameter counts and modes of the top-level layers (``max_depth``), and the totals."""

    @staticmethod
    def summarize(summary_data: list[tuple[str, list[str]]], total_parameters: int, trainable_parameters: int,
                  model_size: float, total_training_modes: dict[str, int], total_flops: int,
                  **summarize_kwargs: Any) -> None:
        from pytorch_lightning.callbacks.model_summary import log

        columns = [column for column in summary_data if column[0] != "FLOPs"]
        table = _format_summary_table(total_parameters, trainable_parameters, model_size, total_training_modes,
                                      total_flops, *columns)
        log.info("\n" + table.rsplit("\n", 1)[0])  # the last line is "Total Flops"
