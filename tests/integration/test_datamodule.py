"""TextVideoCollator and FrozenDataModule, end to end through Lightning's batch hooks."""

import pickle
import textwrap
from typing import Optional

import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import Dataset

from lightning_frozen.data import RunState
from lightning_frozen.data.collate import TextVideoCollator
from lightning_frozen.data.core import SkipCount
from lightning_frozen.data.datamodule import FrozenDataModule
from lightning_frozen.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from lightning_frozen.tokenizer import build_tokenizer, bundled_text_model_path

TOKENIZER_DIR = str(bundled_text_model_path())
MEAN = torch.tensor(IMAGENET_MEAN).view(1, 1, 3, 1, 1)
STD = torch.tensor(IMAGENET_STD).view(1, 1, 3, 1, 1)
WORDS = "a man is cooking pasta in a small kitchen while a dog watches".split()


class TinyVideoDataset(Dataset):
    """Items in the dataset contract; pixels depend only on (index, frame); frames per clip from a run state.

    ``skip_every`` > 0 pretends that every such item failed to load and was replaced
    (lax loading), counting it like the real datasets do: in shared memory, so counts
    from worker processes reach the main process.
    """

    def __init__(self, length: int = 6, size: int = 40, num_frames: int = 2, skip_every: int = 0,
                 name: Optional[str] = None) -> None:
        self.length, self.size, self.skip_every = length, size, skip_every
        self.run_state = RunState(num_frames=num_frames)
        if name is not None:
            self.name = name
        self.skips = SkipCount()

    def use_run_state(self, run_state: RunState) -> None:
        self.run_state = run_state

    @property
    def num_skipped(self) -> int:
        return self.skips.total

    def reset_skipped(self) -> None:
        self.skips.reset()

    def __len__(self) -> int:
        return self.length

    def frames(self, index: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(index)
        shape = (self.run_state.num_frames, 3, self.size, self.size)
        return torch.randint(0, 256, shape, generator=g, dtype=torch.uint8)

    def __getitem__(self, index: int) -> dict:
        if self.skip_every and index % self.skip_every == 0:
            self.skips.add()
        return {
            "video": self.frames(index),
            "text": " ".join(WORDS[: 2 + index % len(WORDS)]),
            "meta": {"id": f"v{index}", "path": f"videos/v{index}.mp4", "dataset": "tiny", "index": index},
        }


class TinyImageDataset(TinyVideoDataset):
    """One-frame clips, whatever the run state says (like an image dataset)."""

    def __init__(self, length: int = 9, size: int = 48) -> None:
        super().__init__(length=length, size=size, num_frames=1)

    def frames(self, index: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(1000 + index)
        return torch.randint(0, 256, (1, 3, self.size, self.size), generator=g, dtype=torch.uint8)


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer(TOKENIZER_DIR)


def _trainer(**kwargs) -> pl.Trainer:
    defaults = dict(accelerator="cpu", devices=1, max_epochs=1, logger=False, enable_checkpointing=False,
                    enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)
    return pl.Trainer(**{**defaults, **kwargs})


class Recorder(pl.LightningModule):
    """Records what training/validation steps receive and the DataModule's skip counts."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.train_batches, self.val_batches, self.epoch_skips, self.data_epochs = [], [], [], []

    def training_step(self, batch, batch_idx):
        self.train_batches.append(batch)
        self.data_epochs.append(self.trainer.datamodule.run_state.epoch)
        return self.w.sum()

    def validation_step(self, batch, batch_idx, dataloader_idx=0):
        self.val_batches.append((dataloader_idx, batch))

    def on_train_epoch_end(self):
        self.epoch_skips.append(self.trainer.datamodule.skipped_counts())

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)


# ----------------------------------------------------------------- collator
def test_collate_shapes_dtypes_and_tokens(tokenizer):
    ds = TinyVideoDataset()
    items = [ds[i] for i in range(4)]
    batch = TextVideoCollator(tokenizer)(items)
    assert batch["video"].dtype == torch.uint8
    assert torch.equal(batch["video"], torch.stack([it["video"] for it in items]))
    expected = tokenizer([it["text"] for it in items], padding="longest", truncation=True, return_tensors="pt")
    assert torch.equal(batch["input_ids"], expected["input_ids"])
    assert torch.equal(batch["attention_mask"], expected["attention_mask"])
    assert batch["input_ids"].shape[1] == int(expected["attention_mask"].sum(1).max())  # padded to longest
    assert batch["meta"]["id"] == ["v0", "v1", "v2", "v3"]
    assert batch["meta"]["index"] == [0, 1, 2, 3]
    assert "caption_mask" not in batch


def test_collate_max_length_padding_and_truncation(tokenizer):
    ds = TinyVideoDataset()
    items = [ds[i] for i in range(3)]
    batch = TextVideoCollator(tokenizer, max_length=16, padding="max_length")(items)
    expected = tokenizer([it["text"] for it in items], padding="max_length", max_length=16, truncation=True,
                         return_tensors="pt")
    assert batch["input_ids"].shape == (3, 16)
    assert torch.equal(batch["input_ids"], expected["input_ids"])
    long_item = {**ds[0], "text": " ".join(WORDS * 3)}
    truncated = TextVideoCollator(tokenizer, max_length=8)([long_item, ds[1]])
    assert truncated["input_ids"].shape == (2, 8)
    assert truncated["input_ids"][0, -1].item() == tokenizer.sep_token_id
    with pytest.raises(ValueError, match="max_length"):
        TextVideoCollator(tokenizer, padding="max_length")
    with pytest.raises(ValueError, match="padding"):
        TextVideoCollator(tokenizer, padding="longest_first")


def test_collate_multi_caption_flattens_video_major(tokenizer):
    ds = TinyVideoDataset()
    a = {**ds[0], "text": ["a dog runs", "a dog is running fast", "dog"]}
    a["meta"] = {**a["meta"], "caption_mask": [True, True, False]}
    b = {**ds[1], "text": ["a cat sleeps", "cat"]}  # no mask, one caption short
    batch = TextVideoCollator(tokenizer)([a, b])
    flat = ["a dog runs", "a dog is running fast", "dog", "a cat sleeps", "cat", ""]
    expected = tokenizer(flat, padding="longest", truncation=True, return_tensors="pt")
    assert torch.equal(batch["input_ids"], expected["input_ids"])
    assert torch.equal(batch["attention_mask"], expected["attention_mask"])
    assert batch["caption_mask"].dtype == torch.bool
    assert batch["caption_mask"].tolist() == [[True, True, False], [True, True, False]]
    assert "caption_mask" not in batch["meta"] and batch["meta"]["id"] == ["v0", "v1"]


def test_collate_errors_and_pickling(tokenizer):
    ds = TinyVideoDataset()
    other = TinyVideoDataset(num_frames=3)
    collator = TextVideoCollator(tokenizer, max_length=12, padding="max_length")
    with pytest.raises(ValueError, match=r"share a shape.*'v0', 'v1'"):
        collator([ds[0], other[1]])
    bad = {**ds[0], "text": ["x", "y"]}
    bad["meta"] = {**bad["meta"], "caption_mask": [True]}
    with pytest.raises(ValueError, match="caption_mask"):
        collator([bad])
    with pytest.raises(TypeError, match="mix"):
        collator([ds[0], {**ds[1], "text": ["x"]}])
    clone = pickle.loads(pickle.dumps(collator))
    items = [ds[i] for i in range(3)]
    assert torch.equal(clone(items)["input_ids"], collator(items)["input_ids"])


# --------------------------------------------------------------- datamodule
def test_batch_through_on_after_batch_transfer(tokenizer):
    ds = TinyVideoDataset(length=5, size=40, num_frames=2)
    dm = FrozenDataModule(train_datasets=[ds], train_batch_sizes=[2], val_datasets=[ds], tokenizer=TOKENIZER_DIR,
                          input_res=40, eval_batch_size=3, num_frames=2)
    dm.setup("fit")
    batch = next(iter(dm.val_dataloader()))
    out = dm.on_after_batch_transfer(batch, 0)  # no trainer attached: evaluation transform
    video = out["video"]
    assert video.shape == (3, 2, 3, 40, 40) and video.dtype == torch.float32
    raw = torch.stack([ds.frames(i) for i in range(3)]).float() / 255.0  # input_res == size: no resize
    torch.testing.assert_close(video * STD + MEAN, raw, rtol=0, atol=1e-5)
    assert out["input_ids"].dtype == torch.long and out["meta"]["id"] == ["v0", "v1", "v2"]

    train = dm.transform_batch(next(iter(dm.train_dataloader())), train=True)
    assert train["video"].shape == (2, 2, 3, 40, 40) and train["video"].dtype == torch.float32


def test_fit_joint_batches_train_and_eval_transforms():
    videos = TinyVideoDataset(length=6, size=40, num_frames=2, name="webvid")
    images = TinyImageDataset(length=9, size=48)
    val = TinyVideoDataset(length=4, size=40, num_frames=2)
    dm = FrozenDataModule(train_datasets=[videos, images], train_batch_sizes=[2, 3], val_datasets=[val],
                          tokenizer=TOKENIZER_DIR, input_res=32, eval_batch_size=4, num_frames=3)
    calls = []
    train_forward = dm.train_transform.forward
    dm.train_transform.forward = lambda v: calls.append(v.shape) or train_forward(v)
    model = Recorder()
    _trainer(limit_train_batches=2, limit_val_batches=1).fit(model, datamodule=dm)

    assert len(model.train_batches) == 2
    for batch in model.train_batches:
        assert set(batch) == {"webvid", "tinyimagedataset"}
        assert batch["webvid"]["video"].shape == (2, 3, 3, 32, 32)  # num_frames applied at setup
        assert batch["tinyimagedataset"]["video"].shape == (3, 1, 3, 32, 32)  # images keep one frame
        assert batch["webvid"]["input_ids"].shape[0] == 2 and batch["tinyimagedataset"]["input_ids"].shape[0] == 3
        assert batch["webvid"]["video"].dtype == torch.float32
    assert len(calls) == 4  # train transform: two datasets x two steps

    (idx, val_batch), = model.val_batches
    expected = dm.eval_transform(torch.stack([val.frames(i) for i in range(4)]))
    torch.testing.assert_close(val_batch["video"], expected, rtol=0, atol=0)


def test_the_run_state_sets_frames_of_later_batches_in_running_workers():
    videos, images = TinyVideoDataset(num_frames=2), TinyImageDataset()
    dm = FrozenDataModule(train_datasets=[videos, images], train_batch_sizes=2, tokenizer=TOKENIZER_DIR, num_frames=2,
                          num_workers=1, persistent_workers=True)
    dm.setup("fit")
    loaders = dm.train_dataloader()
    first = {k: next(iter(dl))["video"].shape[1] for k, dl in loaders.items()}
    dm.run_state.set_num_frames(4)
    later = {k: next(iter(dl))["video"].shape[1] for k, dl in loaders.items()}  # the same workers
    assert first == {"tinyvideodataset": 2, "tinyimagedataset": 1}
    assert later == {"tinyvideodataset": 4, "tinyimagedataset": 1}
    with pytest.raises(ValueError, match="num_frames"):
        dm.run_state.set_num_frames(0)


def test_mismatched_lengths_and_missing_data_errors():
    with pytest.raises(ValueError, match=r"train_batch_sizes has 1 entries \[4\].*train_datasets has 2"):
        FrozenDataModule(train_datasets=[TinyVideoDataset(), TinyImageDataset()], train_batch_sizes=[4],
                         tokenizer=TOKENIZER_DIR)
    with pytest.raises(ValueError, match="max_length"):
        FrozenDataModule(padding="max_length", tokenizer=TOKENIZER_DIR)
    with pytest.raises(ValueError, match=r"train_batch_sizes\[1\] must be a positive batch size; got 0"):
        FrozenDataModule(train_datasets=[TinyVideoDataset(), TinyImageDataset()], train_batch_sizes=[4, 0],
                         tokenizer=TOKENIZER_DIR)
    with pytest.raises(ValueError, match="eval_batch_size must be a positive batch size; got -1"):
        FrozenDataModule(eval_batch_size=-1, tokenizer=TOKENIZER_DIR)
    with pytest.raises(ValueError, match="frames per clip must be >= 1 .*got 0"):
        FrozenDataModule(num_frames=0, tokenizer=TOKENIZER_DIR)
    dm = FrozenDataModule(train_datasets=[TinyVideoDataset()], tokenizer=TOKENIZER_DIR)
    with pytest.raises(ValueError, match="val_datasets"):
        dm.val_dataloader()


@pytest.mark.parametrize("num_workers", [0, 2])
def test_skip_counts_and_the_data_epoch_per_epoch(num_workers):
    # 6 items, every other one "skipped": 3 skips per epoch, restarted each epoch, the same
    # with the counting done in (persistent) worker processes.
    train = TinyVideoDataset(length=6, skip_every=2)
    val = TinyVideoDataset(length=4, skip_every=4)
    dm = FrozenDataModule(train_datasets=[train], train_batch_sizes=[3], val_datasets=[val], eval_batch_size=2,
                          tokenizer=TOKENIZER_DIR, input_res=32, num_workers=num_workers, persistent_workers=True)
    model = Recorder()
    _trainer(max_epochs=2, num_sanity_val_steps=1).fit(model, datamodule=dm)
    assert model.epoch_skips == [{"train/tinyvideodataset": 3, "val/tinyvideodataset": 1}] * 2
    assert model.data_epochs == [0, 0, 1, 1]  # two steps an epoch


def test_cycling_shorter_dataset_keeps_its_epoch_counts():
    # max_size_cycle restarts the shorter loader within the epoch; its counts must add up.
    long, short = TinyVideoDataset(length=8, name="long"), TinyVideoDataset(length=2, skip_every=1, name="short")
    dm = FrozenDataModule(train_datasets=[long, short], train_batch_sizes=[2, 2], tokenizer=TOKENIZER_DIR,
                          input_res=32)
    model = Recorder()
    _trainer(max_epochs=1, limit_val_batches=0).fit(model, datamodule=dm)
    assert len(model.train_batches) == 4  # four steps: the short loader ran four times
    assert model.epoch_skips == [{"train/long": 0, "train/short": 8}]
    assert model.data_epochs == [0] * 4


def test_loader_survives_lightning_distributed_sampler_injection():
    # What Lightning does under DDP: re-create the loader with a DistributedSampler.
    from lightning_fabric.utilities.data import _replace_dunder_methods
    from pytorch_lightning.utilities.data import _update_dataloader
    from torch.utils.data import BatchSampler, DataLoader, DistributedSampler

    ds = TinyVideoDataset(length=8, skip_every=1)
    dm = FrozenDataModule(train_datasets=[ds], train_batch_sizes=[2], tokenizer=TOKENIZER_DIR, input_res=32)
    with _replace_dunder_methods(DataLoader, "dataset"), _replace_dunder_methods(BatchSampler):
        loader = dm.train_dataloader()
    sampler = DistributedSampler(ds, num_replicas=2, rank=1, shuffle=True)
    ddp_loader = _update_dataloader(loader, sampler, mode="fit")
    # A StatefulDataLoader keeps its batching in a (stateful) batch sampler around the new sampler.
    assert type(ddp_loader) is type(loader) and ddp_loader.batch_sampler.sampler is sampler
    assert ddp_loader.batch_sampler.drop_last and ddp_loader.batch_sampler.batch_size == 2
    for _ in range(5):
        ds.skips.add()
    batches = list(ddp_loader)  # on_start reset the counter, then 4 items were read
    assert len(batches) == 2 and ds.num_skipped == 4
    assert batches[0]["input_ids"].dtype == torch.long


@pytest.mark.parametrize("form", ["plain", "class_path"])
def test_yaml_config_through_lightning_cli(tmp_path, monkeypatch, form):
    from pytorch_lightning.cli import LightningCLI
    from pytorch_lightning.demos.boring_classes import BoringModel

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("sys.argv", ["cli"])
    ds_path = f"{TinyVideoDataset.__module__}.TinyVideoDataset"
    img_path = f"{TinyImageDataset.__module__}.TinyImageDataset"
    args = textwrap.dedent(f"""\
        train_datasets:
          - class_path: {ds_path}
            init_args: {{length: 4, size: 40, num_frames: 2, name: webvid}}
          - class_path: {img_path}
        train_batch_sizes: [2, 3]
        val_datasets:
          - class_path: {ds_path}
            init_args: {{length: 3}}
        tokenizer: {TOKENIZER_DIR}
        max_length: 12
        padding: max_length
        input_res: 32
        num_frames: 3
        color_jitter: 0.2
        eval_batch_size: 3
    """)
    if form == "plain":
        data = "data:\n" + textwrap.indent(args, "  ")
    else:
        data = ("data:\n  class_path: lightning_frozen.data.FrozenDataModule\n  init_args:\n"
                + textwrap.indent(args, "    "))
    config = tmp_path / "config.yaml"
    config.write_text(data + "seed_everything: 0\ntrainer:\n  logger: false\n  accelerator: cpu\n")
    if form == "plain":
        cli = LightningCLI(BoringModel, FrozenDataModule, run=False, args=["--config", str(config)])
    else:
        cli = LightningCLI(BoringModel, pl.LightningDataModule, subclass_mode_data=True, run=False,
                           args=["--config", str(config)])
    dm = cli.datamodule
    assert isinstance(dm, FrozenDataModule)
    assert dm.names["train"] == ["webvid", "tinyimagedataset"] and dm.train_batch_sizes == [2, 3]
    assert [d.length for d in dm.datasets["val"]] == [3]
    dm.setup("fit")
    batch = dm.transform_batch(dm.train_dataloader()["webvid"].__iter__().__next__(), train=True)
    assert batch["video"].shape == (2, 3, 3, 32, 32) and batch["input_ids"].shape == (2, 12)


def test_real_datasets_joint_training_and_multi_caption_eval(tmp_path_factory):
    # The dataset helper's classes on synthetic files in the real layouts, with broken
    # MSR-VTT files loaded laxly: joint video + image batches, counted skips, and the
    # full-test multi-caption batches.
    from lightning_frozen.data import MSRVTT, ConceptualCaptions3M
    from lightning_frozen.data.synthetic import make_synthetic_dataset

    small = dict(num_train=6, num_test=3, num_frames_per_video=8, size=(32, 48), fps=8)
    msrvtt = make_synthetic_dataset(tmp_path_factory.mktemp("dm") / "msrvtt", "msrvtt", broken=True, **small)
    cc3m = make_synthetic_dataset(tmp_path_factory.mktemp("dm") / "cc3m", "cc3m", **small)
    train_videos = MSRVTT(msrvtt, split="train", frame_size=32, loading="lax")
    train_images = ConceptualCaptions3M(cc3m, split="train", frame_size=32)
    full_test = MSRVTT(msrvtt, cut="full", split="test", frame_size=32, loading="lax")
    dm = FrozenDataModule(train_datasets=[train_videos, train_images], train_batch_sizes=[5, 3],
                          val_datasets=[full_test], tokenizer=TOKENIZER_DIR, input_res=32, num_frames=2,
                          eval_batch_size=3)
    model = Recorder()
    _trainer(max_epochs=1).fit(model, datamodule=dm)

    for batch in model.train_batches:
        assert batch["msrvtt"]["video"].shape == (5, 2, 3, 32, 32)
        assert batch["cc3m"]["video"].shape == (3, 1, 3, 32, 32)
    # All 10 MSR-VTT train entries (6 good, 4 broken at the end) are read once per epoch;
    # lax loading skips 4 + 3 + 2 + 1 broken files on the way (see test_datasets).
    assert model.epoch_skips[0]["train/msrvtt"] == 10, model.epoch_skips
    val = model.val_batches[0][1]
    k = full_test.max_captions
    assert val["caption_mask"].shape == (3, k) and val["input_ids"].shape[0] == 3 * k
    assert val["video"].shape == (3, 2, 3, 32, 32)


def test_module_docstring_yaml_example_instantiates(tmp_path_factory, tmp_path, monkeypatch):
    # The YAML shown in datamodule.py's docstring, with its roots pointed at synthetic data.
    from pytorch_lightning.cli import LightningCLI
    from pytorch_lightning.demos.boring_classes import BoringModel

    import lightning_frozen.data.datamodule as module
    from lightning_frozen.data import MSRVTT, ConceptualCaptions3M, WebVid
    from lightning_frozen.data.synthetic import make_synthetic_dataset

    small = dict(num_train=2, num_test=2, num_frames_per_video=4, size=(32, 32), fps=4)
    lines = module.__doc__.split("YAML (LightningCLI ``data:`` section)::\n")[1].splitlines()
    block = []
    for line in lines[1:]:
        if line and not line.startswith(" "):
            break
        block.append(line)
    yaml = textwrap.dedent("\n".join(block))
    for layout in ("webvid", "cc3m", "msrvtt"):
        root = make_synthetic_dataset(tmp_path_factory.mktemp("doc") / layout, layout, **small)
        yaml = yaml.replace(f"root: data/{layout}", f"root: {root}")
    config = tmp_path / "config.yaml"
    config.write_text(yaml + "trainer:\n  logger: false\n  accelerator: cpu\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("sys.argv", ["cli"])
    cli = LightningCLI(BoringModel, pl.LightningDataModule, subclass_mode_data=True, run=False,
                       args=["--config", str(config)])
    dm = cli.datamodule
    assert [type(d) for d in dm.datasets["train"]] == [WebVid, ConceptualCaptions3M]
    assert [type(d) for d in dm.datasets["val"]] == [MSRVTT]
    assert dm.names["train"] == ["webvid", "cc3m"] and dm.train_batch_sizes == [16, 64]
    dm.setup("fit")
    assert dm.datasets["train"][0].run_state.num_frames == 4


@pytest.mark.parametrize("save_on", ["epoch_end", "mid_epoch"])
def test_resume_continues_the_right_data_epoch(tmp_path, save_on):
    # A checkpoint from after an epoch's last batch continues with the next epoch's data (Lightning builds
    # the loaders before it moves its own epoch on); one from mid-epoch continues that epoch.
    def datamodule():
        return FrozenDataModule(train_datasets=[TinyVideoDataset(length=6)], train_batch_sizes=[2],
                                tokenizer=TOKENIZER_DIR, input_res=32, num_frames=2)

    every = dict(every_n_epochs=1) if save_on == "epoch_end" else dict(every_n_train_steps=2)
    checkpoint = pl.callbacks.ModelCheckpoint(dirpath=tmp_path, save_top_k=-1, **every)
    whole = Recorder()
    _trainer(max_epochs=2, limit_val_batches=0).fit(whole, datamodule=datamodule())
    assert whole.data_epochs == [0, 0, 0, 1, 1, 1]
    _trainer(max_epochs=1, limit_val_batches=0, enable_checkpointing=True, callbacks=[checkpoint]).fit(
        Recorder(), datamodule=datamodule())
    saved = sorted(tmp_path.glob("*.ckpt"))[0 if save_on == "epoch_end" else -1]
    resumed = Recorder()
    _trainer(max_epochs=2, limit_val_batches=0).fit(resumed, datamodule=datamodule(), ckpt_path=saved)
    seen = [b["meta"]["index"] for b in resumed.train_batches]
    if save_on == "epoch_end":
        assert resumed.data_epochs == [1, 1, 1]
        assert seen == [b["meta"]["index"] for b in whole.train_batches[3:]]  # epoch 1's order, whole
    else:  # saved after step 2 of epoch 0 (the last batch of an epoch of 3 is step 3)
        assert resumed.data_epochs == [0, 1, 1, 1] and seen == [b["meta"]["index"] for b in whole.train_batches[2:]]
