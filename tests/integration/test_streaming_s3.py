"""Object storage for real: a loopback S3-compatible server (moto), shards written to s3:// by
`shard` and training read from s3:// through LitData's own S3 clients (boto3 and obstore)."""
import socket

import boto3
import pytest
import pytorch_lightning as pl
import torch
from helpers import TINY_VIDEO
from litdata.streaming import downloader
from moto.server import ThreadedMotoServer

from lightning_frozen.data.datamodule import FrozenDataModule
from lightning_frozen.data.shard import shard_dataset
from lightning_frozen.data.streaming import StreamingVideoText
from lightning_frozen.module import FrozenModule


@pytest.fixture
def s3_server(monkeypatch):
    """A moto S3 server on a free loopback port, with the environment LitData's clients read."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": endpoint}.items():
        monkeypatch.setenv(key, value)
    # obstore (LitData's chunk transfers) refuses plain HTTP unless told; real S3 is HTTPS.
    monkeypatch.setitem(downloader._OBSTORE_CLIENT_OPTIONS, "allow_http", "true")
    yield endpoint
    server.stop()


def test_shard_to_s3_and_train_from_s3(s3_server, webvid_shards, tmp_path, text_dir):
    src, local_shards, local_summary = webvid_shards
    client = boto3.client("s3")
    client.create_bucket(Bucket="frozen")
    summary = shard_dataset(src, "webvid", "s3://frozen/webvid/train", workers=1, chunk_bytes="12KB",
                            work_dir=tmp_path / "work", progress=False)
    assert summary.samples == local_summary.samples and summary.broken == local_summary.broken
    keys = {o["Key"] for o in client.list_objects_v2(Bucket="frozen")["Contents"]}
    local = {p.name for p in local_shards.iterdir() if p.suffix == ".bin" or p.name == "index.json"}
    assert keys == {f"webvid/train/{name}" for name in local}  # same chunks as the local run, nothing else
    assert (tmp_path / "work" / "shard_report.json").is_file()

    cache = tmp_path / "cache"
    stream = StreamingVideoText("s3://frozen/webvid/train", frame_size=32, cache_dir=str(cache))
    datamodule = FrozenDataModule(train_datasets=[stream], train_batch_sizes=4, tokenizer=text_dir, num_workers=2,
                                  input_res=32, max_length=16, num_frames=2)
    torch.manual_seed(0)
    model = FrozenModule(video=dict(TINY_VIDEO, num_frames=2), projection_dim=16,
                         text=dict(name_or_path=text_dir, pretrained=False, config_overrides={"num_hidden_layers": 1}))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trainer = pl.Trainer(accelerator="cpu", max_steps=3, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                         default_root_dir=tmp_path)
    trainer.fit(model, datamodule=datamodule)
    assert trainer.global_step == 3 and torch.isfinite(trainer.callback_metrics["train/loss"])
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())
    # The chunks came over HTTP into the local cache (LitData deletes consumed ones when it can).
    assert list(cache.rglob("index.json"))
