"""Shared test setup: offline, deterministic, small."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(2)

from helpers import TINY_VIDEO  # noqa: E402


@pytest.fixture(scope="session")
def text_dir() -> str:
    from lightning_frozen.models import bundled_text_model_path

    return str(bundled_text_model_path())


@pytest.fixture(scope="session")
def tiny_text(text_dir) -> dict:
    """The bundled MiniLM architecture cut to 2 layers, random weights."""
    return dict(name_or_path=text_dir, pretrained=False, config_overrides={"num_hidden_layers": 2})


@pytest.fixture
def tiny_model(tiny_text):
    from lightning_frozen.models import FrozenInTime

    torch.manual_seed(0)
    return FrozenInTime(video=dict(TINY_VIDEO), text=tiny_text, projection_dim=16)


@pytest.fixture(scope="session")
def tiny_msrvtt(tmp_path_factory):
    """A small synthetic MSR-VTT-layout dataset: 12 train, 6 test clips of 32x32."""
    from lightning_frozen.data.synthetic import make_synthetic_dataset

    return make_synthetic_dataset(tmp_path_factory.mktemp("data") / "msrvtt", "msrvtt", num_train=12, num_test=6,
                                  num_frames_per_video=8, size=(32, 32), seed=3)


@pytest.fixture(scope="session")
def tiny_cc3m(tmp_path_factory):
    from lightning_frozen.data.synthetic import make_synthetic_dataset

    return make_synthetic_dataset(tmp_path_factory.mktemp("data") / "cc3m", "cc3m", num_train=12, num_test=4,
                                  size=(32, 32), seed=4)


@pytest.fixture(scope="session")
def webvid_shards(tmp_path_factory):
    """Synthetic WebVid (24 clips and 4 broken files) sharded into chunks of about 5 clips.

    Returns (source root, shard folder, ShardSummary).
    """
    from lightning_frozen.data.shard import shard_dataset
    from lightning_frozen.data.synthetic import make_synthetic_dataset

    base = tmp_path_factory.mktemp("webvid_shards")
    src = make_synthetic_dataset(base / "webvid", "webvid", num_train=24, num_test=4, num_frames_per_video=8,
                                 size=(32, 32), seed=5, broken=True)
    summary = shard_dataset(src, "webvid", str(base / "shards"), workers=1, chunk_bytes="12KB", progress=False)
    return src, base / "shards", summary


@pytest.fixture(scope="session")
def cc3m_shards(tmp_path_factory):
    """Synthetic CC3M (12 images) sharded; returns (source root, shard folder)."""
    from lightning_frozen.data.shard import shard_dataset
    from lightning_frozen.data.synthetic import make_synthetic_dataset

    base = tmp_path_factory.mktemp("cc3m_shards")
    src = make_synthetic_dataset(base / "cc3m", "cc3m", num_train=12, num_test=4, size=(32, 32), seed=6)
    shard_dataset(src, "cc3m", str(base / "shards"), workers=1, chunk_bytes="4KB", progress=False)
    return src, base / "shards"
