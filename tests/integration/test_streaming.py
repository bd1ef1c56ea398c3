"""Streaming datasets over LitData shards: the file datasets' items from bytes, lax replacement,
frame count in shared memory, joint training from YAML and exact mid-epoch resume in Lightning."""
import json
import textwrap

import pytest
import pytorch_lightning as pl
import torch
from helpers import TINY_VIDEO, frames
from litdata.streaming.cache import Cache

from lightning_frozen.callbacks import FrameCurriculum
from lightning_frozen.data import WebVid, read_frames, read_image
from lightning_frozen.data.collate import named_batches
from lightning_frozen.data.datamodule import FrozenDataModule
from lightning_frozen.data.streaming import StreamingImageText, StreamingLoader, StreamingVideoText
from lightning_frozen.data.video import VideoReadError, decode_frames, decode_image
from lightning_frozen.module import FrozenModule


def _items(items):
    return items  # collate_fn keeping a batch as the list of its items


def _good_paths(src):
    return [p for p in WebVid(src).records["path"] if (src / p).is_file() and (src / p).stat().st_size > 2000]


@pytest.mark.parametrize("backend", ["pyav", "decord"])
def test_bytes_decode_to_the_pixels_of_the_file(webvid_shards, cc3m_shards, backend):
    src, _, _ = webvid_shards
    for path in _good_paths(src)[:3]:
        from_file = read_frames(src / path, 3, "rand", size=24, generator=torch.Generator().manual_seed(7),
                                backend=backend)
        from_bytes = decode_frames((src / path).read_bytes(), 3, "rand", size=24, name=path,
                                   generator=torch.Generator().manual_seed(7), backend=backend)
        assert from_bytes.shape == (3, 3, 24, 24) and torch.equal(from_bytes, from_file)
    image = next((cc3m_shards[0] / "training").iterdir())
    assert torch.equal(decode_image(image.read_bytes(), 16), read_image(image, 16))
    with pytest.raises(VideoReadError, match="clip.mp4.*empty"):
        decode_frames(b"", 2, name="clip.mp4")
    with pytest.raises(VideoReadError, match="clip.mp4"):
        decode_frames(b"not a video" * 50, 2, name="clip.mp4")


def test_streamed_items_are_the_file_datasets_items(webvid_shards, tmp_path):
    src, shards, summary = webvid_shards
    stream = frames(StreamingVideoText(str(shards), frame_size=32, cache_dir=str(tmp_path), name="webvid"), 3)
    loader = StreamingLoader(stream, batch_size=4, num_workers=2, collate_fn=_items)
    items = [item for batch in loader for item in batch]
    assert sorted(i["meta"]["index"] for i in items) == list(range(summary.samples))  # each sample once
    captions = dict(zip(WebVid(src).records["path"], WebVid(src).records["captions"]))
    for item in items:
        meta = item["meta"]
        # The randomness is the item's (run seed, dataset seed, epoch, position, attempt), wherever it is read.
        generator = stream.run_state.generator(0, 0, meta["index"], 0)
        expected = read_frames(src / meta["path"], 3, "rand", size=32, generator=generator)
        assert torch.equal(item["video"], expected), meta
        assert item["text"] == captions[meta["path"]][0] and meta["dataset"] == "webvid"
        assert meta["path"].endswith(meta["id"] + ".mp4")
    # Random access draws the same.
    assert torch.equal(stream[items[0]["meta"]["index"]]["video"], items[0]["video"])


def test_frame_count_changes_in_running_workers_and_each_pass_calls_on_start(webvid_shards, tmp_path):
    _, shards, _ = webvid_shards
    stream = frames(StreamingVideoText(str(shards), frame_size=32, cache_dir=str(tmp_path)), 2)
    starts = []
    loader = StreamingLoader(stream, batch_size=1, num_workers=2, persistent_workers=True,
                             on_start=lambda: starts.append(len(starts)), collate_fn=_items)
    counts = []
    for step, (item,) in enumerate(loader):
        counts.append(item["video"].shape[0])
        if step == 5:
            stream.run_state.set_num_frames(4)  # what the curriculum does at a stage change
    assert counts[:6] == [2] * 6 and counts[-8:] == [4] * 8  # items read after the change, same workers
    assert {item["video"].shape[0] for (item,) in loader} == {4} and starts == [0, 1]  # next pass: on_start again


def test_loader_state_loads_without_unpickling_objects(webvid_shards, tmp_path):
    _, shards, _ = webvid_shards
    stream = frames(StreamingVideoText(str(shards), frame_size=16, cache_dir=str(tmp_path), subsample=0.5), 1)
    loader = StreamingLoader(stream, batch_size=2, num_workers=1, collate_fn=_items)
    next(iter(loader))
    torch.save(loader.state_dict(), tmp_path / "state.pt")
    state = torch.load(tmp_path / "state.pt", weights_only=True)  # numpy scalars would refuse to load
    assert state["num_samples_yielded"] == 2 and state["dataset"]["region_of_interest"]


def _write_shards(folder, contents: list[bytes], chunk_size: int) -> None:
    """Shards in `shard`'s sample format with chosen media bytes (damaged ones included)."""
    cache = Cache(str(folder), chunk_size=chunk_size)
    for i, media in enumerate(contents):
        cache[i] = {"id": f"c{i}", "path": f"videos/c{i}.mp4", "captions": json.dumps([f"clip {i}"]),
                    "kind": "video", "media": media}
    cache.done()
    cache.merge()


def test_an_undecodable_sample_is_replaced_from_its_chunk_and_counted(webvid_shards, tmp_path):
    src, _, _ = webvid_shards
    clips = [(src / p).read_bytes() for p in _good_paths(src)[:8]]
    clips[2] = clips[7] = b"\x00\x01garbage" * 100  # in the first chunk, and the last item of the stream
    _write_shards(tmp_path / "shards", clips, chunk_size=4)
    options = dict(frame_size=16, cache_dir=str(tmp_path / "cache"), shuffle=False)
    stream = frames(StreamingVideoText(str(tmp_path / "shards"), **options), 2)
    loader = StreamingLoader(stream, batch_size=4, collate_fn=_items)
    got = [item["meta"]["index"] for batch in loader for item in batch]
    # As many items as samples: 2 -> 3 (next in its chunk), 7 -> 4 (the chunk 4..7 wraps around).
    assert got == [0, 1, 3, 3, 4, 5, 6, 4] and stream.num_skipped == 2
    stream.reset_skipped()
    assert stream[2]["meta"]["index"] == 3 and stream.num_skipped == 1
    strict = StreamingVideoText(str(tmp_path / "shards"), loading="strict", **options)
    with pytest.raises(VideoReadError, match="videos/c2.mp4"):
        strict[2]
    with pytest.raises(ValueError, match="hold 'video' samples.*StreamingVideoText"):
        StreamingImageText(str(tmp_path / "shards"), cache_dir=str(tmp_path / "cache2"))[0]


# ------------------------------------------------------------------ Lightning
class Recording(FrozenModule):
    """Records what each training step receives: sample positions and a checksum of their frames."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.seen = []

    def on_before_batch_transfer(self, batch, dataloader_idx):
        if self.trainer.training:
            self.seen.append({name: [(i, int(v.sum()), len(v)) for i, v in zip(b["meta"]["index"], b["video"])]
                              for name, b in named_batches(batch).items()})
        return batch


def _config(tmp_path, text_dir, webvid, cc3m) -> str:
    """A LightningCLI data config: one streaming loader per source (videos and images)."""
    path = tmp_path / "stream.yaml"
    path.write_text("seed_everything: 0\n" + textwrap.dedent(f"""\
        data:
          class_path: lightning_frozen.data.FrozenDataModule
          init_args:
            train_datasets:
              - class_path: lightning_frozen.data.streaming.StreamingVideoText
                init_args: {{input_dir: {webvid}, cache_dir: {tmp_path}/cache/w, frame_size: 32, name: webvid}}
              - class_path: lightning_frozen.data.streaming.StreamingImageText
                init_args: {{input_dir: {cc3m}, cache_dir: {tmp_path}/cache/c, frame_size: 32}}
            train_batch_sizes: [2, 3]
            num_frames: 2
            tokenizer: {text_dir}
            num_workers: 2
            input_res: 32
            max_length: 16
        """))
    return str(path)


def _recording(text_dir) -> Recording:
    torch.manual_seed(0)
    return Recording(video=dict(TINY_VIDEO, num_frames=2), projection_dim=16,
                     text=dict(name_or_path=text_dir, pretrained=False, config_overrides={"num_hidden_layers": 1}))


def _fit(config, text_dir, root, callbacks=(), ckpt_path=None, **trainer) -> Recording:
    from pytorch_lightning.cli import LightningCLI
    from pytorch_lightning.demos.boring_classes import BoringModel

    # The data from YAML as LightningCLI builds it (seeding the run too); the model in code.
    cli = LightningCLI(BoringModel, pl.LightningDataModule, subclass_mode_data=True, run=False,
                       args=["--config", config, "--trainer.logger", "false"])
    model = _recording(text_dir)
    fit = pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
                     default_root_dir=root, callbacks=list(callbacks), limit_val_batches=0, **trainer)
    fit.fit(model, datamodule=cli.datamodule, ckpt_path=ckpt_path)
    return model


def test_joint_streaming_training_from_yaml_and_exact_mid_epoch_resume(webvid_shards, cc3m_shards, tmp_path,
                                                                       text_dir, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("sys.argv", ["cli"])
    config = _config(tmp_path, text_dir, webvid_shards[1], cc3m_shards[1])
    # 24 clips in batches of 2 set the epoch (12 steps); the 12 images (batches of 3) cycle 3 times in it.
    whole = _fit(config, text_dir, tmp_path / "a", max_steps=16, enable_checkpointing=False)
    assert len(whole.seen) == 16 and all(set(s) == {"webvid", "cc3m"} for s in whole.seen)
    first_epoch = [i for step in whole.seen[:12] for i, _, _ in step["webvid"]]
    assert sorted(first_epoch) == list(range(24))
    images = [i for step in whole.seen[:4] for i, _, _ in step["cc3m"]]
    assert sorted(images) == list(range(12))

    # A run checkpointed after step 5 (the images one batch into their second pass), then stopped.
    checkpoint = pl.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=5, save_top_k=-1)
    cut = _fit(config, text_dir, tmp_path / "b", callbacks=[checkpoint], max_steps=7)
    assert cut.seen[:7] == whole.seen[:7]  # the same run so far, frames included
    resumed = _fit(config, text_dir, tmp_path / "c", max_steps=16, enable_checkpointing=False,
                   ckpt_path=str(tmp_path / "ckpt" / "epoch=0-step=5.ckpt"))
    # Exactly the samples not yet seen at the checkpoint, in the same order, with the same frames,
    # through the end of the epoch and into the next one.
    assert resumed.seen == whole.seen[5:16]


class _Loaders(pl.Callback):
    """The training loader object and LitData's epoch at the end of each epoch."""

    def __init__(self):
        self.seen = []

    def on_train_epoch_end(self, trainer, pl_module):
        loader = trainer.train_dataloader
        self.seen.append((id(loader), loader.current_epoch))


def test_frame_curriculum_over_a_stream_rebuilds_no_loader(webvid_shards, tmp_path, text_dir):
    _, shards, _ = webvid_shards
    train = StreamingVideoText(str(shards), frame_size=32, cache_dir=str(tmp_path / "t"))
    val = StreamingVideoText(str(shards), split="test", frame_size=32, cache_dir=str(tmp_path / "v"), subsample=0.5)
    datamodule = FrozenDataModule(train_datasets=[train], train_batch_sizes=4, val_datasets=[val], eval_batch_size=6,
                                  tokenizer=text_dir, num_workers=2, persistent_workers=True, input_res=32,
                                  max_length=16)
    model = _recording(text_dir)
    loaders = _Loaders()
    curriculum = FrameCurriculum(stages=[{"frames": 1, "epochs": 1}, {"frames": 2, "epochs": 1}],
                                 dirpath=str(tmp_path / "stages"))
    trainer = pl.Trainer(accelerator="cpu", max_epochs=2, logger=False, enable_progress_bar=False,
                         enable_model_summary=False, num_sanity_val_steps=0, default_root_dir=tmp_path,
                         callbacks=[curriculum, loaders])
    trainer.fit(model, datamodule=datamodule)
    frames = [{n for *_, n in step["train"]} for step in model.seen]
    assert frames == [{1}] * 6 + [{2}] * 6  # 24 clips in batches of 4, 1 frame then 2
    (first, epoch_a), (second, epoch_b) = loaders.seen
    assert first == second and (epoch_a, epoch_b) == (1, 2)  # one loader; LitData's epoch moved on
    assert "val/t2v_gmean" in trainer.callback_metrics  # the streamed validation set was evaluated
