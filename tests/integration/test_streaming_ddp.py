"""Two gloo ranks x two workers over shards: each sample at most once per epoch (the ones LitData's
drop_last leaves out reported), and 2 ranks of batch b give the one-step gradients of 1 process of 2b."""
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from helpers import TINY_VIDEO

from lightning_frozen.data.collate import TextVideoCollator
from lightning_frozen.data.datamodule import FrozenDataModule
from lightning_frozen.data.streaming import StreamingVideoText
from lightning_frozen.module import FrozenModule

WORLD, BATCH = 2, 5


def _module(text_dir: str) -> FrozenModule:
    torch.manual_seed(0)
    text = dict(name_or_path=text_dir, pretrained=False,
                config_overrides={"num_hidden_layers": 1, "hidden_dropout_prob": 0.0,
                                  "attention_probs_dropout_prob": 0.0})
    return FrozenModule(video=dict(TINY_VIDEO, num_frames=2, time_init="rand"), text=text, projection_dim=16).eval()


def _datamodule(shards: str, cache: str, text_dir: str) -> FrozenDataModule:
    stream = StreamingVideoText(shards, frame_size=32, cache_dir=cache)
    return FrozenDataModule(train_datasets=[stream], train_batch_sizes=BATCH, tokenizer=text_dir, num_workers=2,
                            input_res=32, max_length=16, num_frames=2)


def _gradients(module: FrozenModule, datamodule: FrozenDataModule, batch: dict) -> tuple[float, dict]:
    module.zero_grad()
    loss = module.compute_loss(datamodule.transform_batch(batch, train=False))  # deterministic resize and crop
    loss.backward()
    grads = {name: p.grad.detach().clone() for name, p in module.named_parameters() if p.grad is not None}
    return float(loss.detach()), grads


def _rank(rank: int, shards: str, text_dir: str, out: str) -> None:
    # Built before the process group exists, as LightningCLI does: the loader must find its rank itself.
    datamodule = _datamodule(shards, f"{out}/cache{rank}", text_dir)
    dist.init_process_group("gloo", init_method=f"file://{out}/rendezvous", rank=rank, world_size=WORLD,
                            timeout=timedelta(seconds=120))
    try:
        loader = datamodule.train_dataloader()
        batches = list(loader)
        loss, grads = _gradients(_module(text_dir), datamodule, batches[0])
        for grad in grads.values():  # what DDP does: average over ranks
            dist.all_reduce(grad)
            grad /= WORLD
        torch.save({"seen": [i for b in batches for i in b["meta"]["index"]],
                    "first": list(batches[0]["meta"]["index"]), "batch_sizes": [len(b["video"]) for b in batches],
                    "dropped": loader.dropped_per_epoch, "loss": loss, "grads": grads}, f"{out}/rank{rank}.pt")
        dist.barrier()
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def ranks(webvid_shards, text_dir, tmp_path_factory) -> list[dict]:
    out = tmp_path_factory.mktemp("ddp_stream")
    mp.spawn(_rank, args=(str(webvid_shards[1]), text_dir, str(out)), nprocs=WORLD, join=True)
    return [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]


def test_each_sample_at_most_once_per_epoch_and_the_dropped_ones_reported(ranks, webvid_shards):
    total = webvid_shards[2].samples  # 24
    seen = [r["seen"] for r in ranks]
    assert set(seen[0]).isdisjoint(seen[1])
    assert all(len(s) == len(set(s)) for s in seen)
    # Whole batches only, as many on each rank (DDP steps stay in step): 24 // (2 x 5) x 5 per rank.
    assert ranks[0]["batch_sizes"] == ranks[1]["batch_sizes"] == [BATCH, BATCH]
    assert ranks[0]["dropped"] == ranks[1]["dropped"] == total - 2 * 2 * BATCH == 4
    assert len(set(seen[0]) | set(seen[1])) == total - ranks[0]["dropped"]
    assert set(seen[0]) | set(seen[1]) <= set(range(total))


def test_two_ranks_of_b_give_the_gradients_of_one_process_of_2b(ranks, webvid_shards, text_dir, tmp_path):
    datamodule = _datamodule(str(webvid_shards[1]), str(tmp_path / "cache"), text_dir)
    stream = datamodule.datasets["train"][0]
    # The global batch: rank 0's samples then rank 1's (the order the loss gathers them in), read by
    # random access in this one process; LitData's first epoch is 1, as in the ranks' workers.
    items = [stream[i] for r in ranks for i in r["first"]]
    batch = TextVideoCollator(datamodule.tokenizer, max_length=16)(items)
    loss, grads = _gradients(_module(text_dir), datamodule, batch)
    assert ranks[0]["loss"] == pytest.approx(loss, rel=1e-5) and ranks[1]["loss"] == pytest.approx(loss, rel=1e-5)
    scale = max(float(g.abs().max()) for g in grads.values())
    for rank in ranks:
        assert rank["grads"].keys() == grads.keys()
        for name, grad in grads.items():
            torch.testing.assert_close(rank["grads"][name], grad, atol=1e-6 * scale, rtol=1e-4,
                                       msg=lambda m, name=name: f"{name}: {m}")
    # The local-batch loss (negatives from one rank only) differs: the gather is what makes them equal.
    local = TextVideoCollator(datamodule.tokenizer, max_length=16)(items[:BATCH])
    assert _gradients(_module(text_dir), datamodule, local)[0] != pytest.approx(loss, rel=1e-3)

