"""Keep a run's output to what a user can act on: the progress bar, one result table, real warnings.

Libraries print things a user of this command can do nothing about: Lightning's adverts
("Tip: ... try installing litlogger"), its warning that LightningCLI got both ``args`` and a
command line (the ``lightning-frozen`` command passes its own), and deprecation notes from
Lightning's and torchdata's internals about torch APIs. They are filtered here, by their exact text.
"""
from __future__ import annotations

import logging
import re
import warnings

_WARNINGS = (
    "LightningCLI's args parameter is intended to run from within Python",
    "`isinstance(treespec, LeafSpec)` is deprecated",
    "'set_vital' is deprecated",  # torchdata's StatefulDataLoader on recent torch
)
_INFO_PREFIXES = ("💡 Tip:",)
_LIGHTNING_INFO_LOGGER = "pytorch_lightning.utilities.rank_zero"


class _DropAdverts(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(_INFO_PREFIXES)


def quiet_library_output() -> None:
    """Install the filters (idempotent)."""
    for text in _WARNINGS:
        warnings.filterwarnings("ignore", message=re.escape(text))
    logger = logging.getLogger(_LIGHTNING_INFO_LOGGER)
    if not any(isinstance(f, _DropAdverts) for f in logger.filters):
        logger.addFilter(_DropAdverts())
