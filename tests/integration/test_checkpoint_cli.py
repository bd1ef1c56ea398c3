"""`--ckpt_path` reads go through the restricted unpickler."""
import os

import pytest
import torch

from lightning_frozen.models import UnsafePickleError


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_ckpt_path_reads_go_through_the_restricted_unpickler(tmp_path, tiny_msrvtt, text_dir):
    """`--ckpt_path` (and trainer.test(ckpt_path=...)) never runs code a checkpoint pickles."""
    from helpers import tiny_config

    from lightning_frozen.cli import run_cli

    cli = run_cli(["--config", str(tiny_config(tmp_path, tiny_msrvtt, text_dir))], run=False)
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.ckpt"
    torch.save({"state_dict": cli.model.state_dict(), "payload": _Payload(marker)}, evil)
    with pytest.raises(UnsafePickleError, match="evil.ckpt.*refusing"):
        cli.trainer.test(cli.model, datamodule=cli.datamodule, ckpt_path=evil)
    assert not marker.exists()

