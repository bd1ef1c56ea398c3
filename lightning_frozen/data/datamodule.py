"""``FrozenDataModule``: datasets -> DataLoaders -> augmented batches on the device.

Why it is shaped this way:

* Datasets are passed in as objects, so LightningCLI YAML chooses them by
  ``class_path`` and the DataModule never needs to know how a dataset reads its files.
* Joint image + video training (Frozen-in-Time) takes one batch from *every* training
  dataset at each step, each with its own batch size. With several training datasets
  ``train_dataloader()`` returns ``{name: DataLoader}``; Lightning's ``CombinedLoader``
  ("max_size_cycle") then hands ``training_step`` a ``{name: batch}`` dict. With one
  dataset it returns a plain DataLoader and ``training_step`` gets the batch itself.
* Workers only decode and tokenise; augmentation runs on the device in
  ``on_after_batch_transfer`` (kornia, ``VideoTransform``).
* Per-epoch dataset state is reset where each loader starts iterating (in the main
  process, before workers read anything): ``reset_skipped()`` on every dataset and
  ``set_epoch(epoch)`` on training datasets that have them. Skip counts are then read
  from the main process, so a dataset must keep its counter in shared memory (as
  ``TextVideoDataset`` does) for counts from worker processes to show.

YAML (LightningCLI ``data:`` section)::

    data:
      class_path: lightning_frozen.data.FrozenDataModule
      init_args:
        train_datasets:
          - class_path: lightning_frozen.data.WebVid
            init_args: {root: data/webvid, split: train, loading: lax}
          - class_path: lightning_frozen.data.ConceptualCaptions3M
            init_args: {root: data/cc3m, split: train}
        train_batch_sizes: [16, 64]      # one per training dataset, same order
        val_datasets:
          - class_path: lightning_frozen.data.MSRVTT
            init_args: {root: data/msrvtt, cut: jsfusion, split: test}
        tokenizer: distilbert-base-uncased   # HF name or a local directory
        max_length: 32
        padding: longest                     # max_length for static shapes (IPU)
        input_res: 224
        num_frames: 4
        eval_batch_size: 16
        num_workers: 8

(The dataset classes' own arguments are defined in their modules.) Training batch
names are the datasets' ``dataset_name`` (or ``name``) attribute, otherwise their
class name in lower case; repeats get a ``_2``, ``_3`` ... suffix. With
``LightningCLI(model, FrozenDataModule)`` (no subclass mode) the same arguments go
directly under ``data:`` without ``class_path`` / ``init_args``.

Note: Lightning prefers a DataModule's batch-transfer hooks over a LightningModule's,
so the augmentation here is what runs even if the model also defines them.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Dict, Iterator, List, Literal, Optional, Sequence, Tuple, Union

import pytorch_lightning as pl
import torch
from torch.utils.data import ConcatDataset, DataLoader, Dataset, Subset
from torchdata.stateful_dataloader import StatefulDataLoader

from .base import run_generator
from .collate import TextVideoCollator, is_single_batch
from .sampler import EpochShuffleSampler
from .streaming import is_streaming, streaming_loader
from .transforms import VideoTransform

__all__ = ["FrozenDataModule", "dataset_names"]

_STAGES = ("train", "val", "test", "predict")


def _leaf_datasets(ds: Dataset) -> List[Dataset]:
    """Look through ``Subset`` / ``ConcatDataset`` wrappers to the datasets that read files."""
    if isinstance(ds, Subset):
        return _leaf_datasets(ds.dataset)
    if isinstance(ds, ConcatDataset):
        return [leaf for d in ds.datasets for leaf in _leaf_datasets(d)]
    return [ds]


def dataset_names(datasets: Sequence[Dataset]) -> List[str]:
    """Unique names for a list of datasets: ``dataset_name``/``name`` attribute or class name."""
    names: List[str] = []
    for ds in datasets:
        leaves = _leaf_datasets(ds)
        named = leaves[0] if len(leaves) == 1 else ds  # a Subset is named after what it wraps
        base = getattr(named, "dataset_name", None) or getattr(named, "name", None)
        base = base if isinstance(base, str) else type(named).__name__.lower()
        name, i = base, 1
        while name in names:
            i += 1
            name = f"{base}_{i}"
        names.append(name)
    return names


def _call_each(ds: Dataset, method: str, *args: Any) -> None:
    """Call ``method(*args)`` on every leaf dataset that has it."""
    for leaf in _leaf_datasets(ds):
        fn = getattr(leaf, method, None)
        if callable(fn):
            fn(*args)


class _EpochStartDataLoader(StatefulDataLoader):
    """A resumable DataLoader that calls ``on_start()`` whenever iteration (re)starts.

    ``iter()`` runs in the main process before any worker reads an item, which makes it
    the place to reset per-epoch dataset state; ``on_start`` returns the epoch of a training
    loader (None otherwise), which goes to the sampler before it draws the epoch's order.
    ``epoch_done`` says when the epoch's last batch has passed: its state is then empty.
    torchdata's ``StatefulDataLoader`` has ``state_dict``/``load_state_dict``: Lightning
    saves its position in every checkpoint and a resumed run continues at the next batch.
    Lightning re-creates the loader with a DistributedSampler under DDP; ``on_start`` is
    carried over like any other argument.
    """

    def __init__(self, *args: Any, on_start: Optional[Callable[[], Optional[int]]] = None,
                 epoch_done: Optional[Callable[[], bool]] = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.on_start = on_start
        self.epoch_done = epoch_done

    def state_dict(self) -> Dict[str, Any]:
        # After an epoch's last batch the next iteration is a new epoch: save no position, or a
        # resume would start that epoch where this one stopped (or at its end).
        if self.epoch_done is not None and self.epoch_done():
            return {}
        return super().state_dict()

    def __iter__(self) -> Iterator[Any]:
        epoch = self.on_start() if self.on_start is not None else None
        if epoch is not None:
            # Ours, or under DDP the DistributedSampler that Lightning put into the batch sampler
            # (Lightning itself only reaches `sampler` and `batch_sampler`, and too late for a resume).
            for sampler in (self.sampler, getattr(self.batch_sampler, "sampler", None)):
                if callable(getattr(sampler, "set_epoch", None)):
                    sampler.set_epoch(epoch)
        return super().__iter__()


class FrozenDataModule(pl.LightningDataModule):
    """Text-video data for Frozen-in-Time (see the module docstring for the YAML form).

    Args:
        train_datasets: training datasets; every step takes one batch from each.
        train_batch_sizes: one batch size per training dataset (same order), or one
            int for all.
        val_datasets, test_datasets: evaluation datasets (one DataLoader each, in order;
            ``dataloader_idx`` in the model's steps follows this order).
        predict_dataset: dataset for ``trainer.predict`` (items may lack ``text``; a dataset with
            ``yields_batches = True`` yields lists of items, each list one batch).
        tokenizer: Hugging Face tokenizer name or local directory, loaded on first use with
            ``lightning_frozen.tokenizer.build_tokenizer`` (same rules as the text tower).
        max_length, padding: see ``TextVideoCollator``.
        eval_batch_size: batch size of validation, test and predict loaders.
        num_workers, persistent_workers: DataLoader workers per dataset
            (``persistent_workers`` is ignored when ``num_workers`` is 0).
        pin_memory: ``None`` pins when CUDA is available.
        input_res, crop_scale, hflip, color_jitter: see ``VideoTransform``.
        num_frames: frames per clip, set on every dataset at ``setup``; ``None`` keeps
            each dataset's own setting.
    """

    def __init__(
        self,
        train_datasets: Optional[List[Dataset]] = None,
        train_batch_sizes: Union[int, List[int]] = 16,
        val_datasets: Optional[List[Dataset]] = None,
        test_datasets: Optional[List[Dataset]] = None,
        predict_dataset: Optional[Dataset] = None,
        tokenizer: str = "distilbert-base-uncased",
        max_length: Optional[int] = None,
        padding: Literal["longest", "max_length"] = "longest",
        eval_batch_size: int = 16,
        num_workers: int = 0,
        pin_memory: Optional[bool] = None,
        persistent_workers: bool = False,
        input_res: int = 224,
        num_frames: Optional[int] = None,
        crop_scale: Tuple[float, float] = (0.5, 1.0),
        hflip: bool = True,
        color_jitter: Optional[float] = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["train_datasets", "val_datasets", "test_datasets", "predict_dataset"])
        self.datasets: Dict[str, List[Dataset]] = {
            "train": list(train_datasets or []),
            "val": list(val_datasets or []),
            "test": list(test_datasets or []),
            "predict": [predict_dataset] if predict_dataset is not None else [],
        }
        self.names: Dict[str, List[str]] = {s: dataset_names(d) for s, d in self.datasets.items()}
        n_train = len(self.datasets["train"])
        if isinstance(train_batch_sizes, int):
            train_batch_sizes = [train_batch_sizes] * n_train
        if len(train_batch_sizes) != n_train:
            raise ValueError(
                f"train_batch_sizes has {len(train_batch_sizes)} entries {list(train_batch_sizes)} but "
                f"train_datasets has {n_train} {self.names['train']}: give one batch size per training "
                f"dataset, in the same order (or a single int for all)."
            )
        sizes = {"eval_batch_size": eval_batch_size}
        sizes.update({f"train_batch_sizes[{i}]": b for i, b in enumerate(train_batch_sizes)})
        for label, value in sizes.items():
            if value < 1:
                raise ValueError(f"{label} must be a positive batch size; got {value}.")
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0; got {num_workers}.")
        if num_frames is not None and num_frames < 1:
            raise ValueError(f"num_frames must be >= 1 (or null to keep each dataset's own); got {num_frames}.")
        TextVideoCollator(None, max_length=max_length, padding=padding)  # bad combinations fail at config time
        self.train_batch_sizes = list(train_batch_sizes)
        self.eval_batch_size = eval_batch_size
        self.tokenizer_name = tokenizer
        self.max_length = max_length
        self.padding = padding
        self.num_workers = num_workers
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else pin_memory
        self.persistent_workers = persistent_workers and num_workers > 0
        self.num_frames = num_frames
        self.train_transform = VideoTransform(
            train=True, input_res=input_res, crop_scale=crop_scale, hflip=hflip, color_jitter=color_jitter
        )
        self.eval_transform = VideoTransform(train=False, input_res=input_res)
        self._tokenizer: Any = None
        # Frames per clip as a function of the epoch; the frame curriculum installs one.
        self.frame_schedule: Optional[Callable[[int], int]] = None
        self._loader_epochs: Dict[Tuple[str, int], Any] = {}

    # ----------------------------------------------------------------- setup
    @property
    def tokenizer(self) -> Any:
        """The Hugging Face tokenizer, loaded on first use."""
        if self._tokenizer is None:
            from ..tokenizer import build_tokenizer  # lazy: keeps `import lightning_frozen.data` light

            self._tokenizer = build_tokenizer(self.tokenizer_name)
        return self._tokenizer

    def setup(self, stage: Optional[str] = None) -> None:
        if self.num_frames is not None:
            self.set_num_frames(self.num_frames)
        self._loader_epochs.clear()
        for group in self.datasets.values():
            for ds in group:
                _call_each(ds, "reset_skipped")

    def set_num_frames(self, num_frames: int) -> None:
        """Set the frames per clip of every dataset that has ``num_frames`` (curriculum stages).

        Datasets without it (image-only ones) are left alone. ``TextVideoDataset`` keeps the
        count in shared memory, so the next items read see it, in running workers too.
        """
        if num_frames < 1:
            raise ValueError(f"num_frames must be >= 1; got {num_frames}.")
        self.num_frames = num_frames
        for group in self.datasets.values():
            for ds in group:
                for leaf in _leaf_datasets(ds):
                    if callable(getattr(leaf, "set_num_frames", None)):
                        leaf.set_num_frames(num_frames)
                    elif hasattr(leaf, "num_frames"):
                        leaf.num_frames = num_frames

    # ----------------------------------------------------------- dataloaders
    def _loader(self, stage: str, index: int, batch_size: int) -> DataLoader:
        train = stage == "train"
        dataset = self.datasets[stage][index]
        common: Dict[str, Any] = dict(
            # A dataset that forms its own batches (search's windows, whole videos per commit) yields
            # lists of items: the loader then collates each list as it comes.
            batch_size=None if getattr(dataset, "yields_batches", False) else batch_size,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.persistent_workers,
            collate_fn=TextVideoCollator(self.tokenizer, max_length=self.max_length, padding=self.padding),
            on_start=functools.partial(self._on_loader_start, stage, index),
        )
        if is_streaming(dataset):
            # LitData's loader for shards: it splits over ranks and workers and resumes mid-epoch
            return streaming_loader(dataset, train=train, **common)
        return _EpochStartDataLoader(
            dataset,
            # the training order: a function of (run seed, dataset seed, epoch) alone
            sampler=EpochShuffleSampler(dataset, seed=_dataset_seed(dataset), stream=index) if train else None,
            drop_last=train,
            generator=run_generator(_dataset_seed(dataset), index),  # worker seeds never draw on the global RNG
            epoch_done=self._train_epoch_done if train else None,
            **common,
        )

    def _loaders(self, stage: str, arg: str) -> List[DataLoader]:
        if not self.datasets[stage]:
            raise ValueError(f"No {stage} data: set {arg} in the data config.")
        if stage == "train":
            return [self._loader(stage, i, bs) for i, bs in enumerate(self.train_batch_sizes)]
        return [self._loader(stage, i, self.eval_batch_size) for i in range(len(self.datasets[stage]))]

    def train_dataloader(self) -> Union[DataLoader, Dict[str, DataLoader]]:
        loaders = self._loaders("train", "train_datasets")
        return loaders[0] if len(loaders) == 1 else dict(zip(self.names["train"], loaders))

    def val_dataloader(self) -> Union[DataLoader, List[DataLoader]]:
        loaders = self._loaders("val", "val_datasets")
        return loaders[0] if len(loaders) == 1 else loaders

    def test_dataloader(self) -> Union[DataLoader, List[DataLoader]]:
        loaders = self._loaders("test", "test_datasets")
        return loaders[0] if len(loaders) == 1 else loaders

    def predict_dataloader(self) -> DataLoader:
        return self._loaders("predict", "predict_dataset")[0]

    # ------------------------------------------------------ batch transforms
    def transform_batch(self, batch: Dict[str, Any], train: bool) -> Dict[str, Any]:
        """Augment (``train``) or resize/crop the ``video`` of a batch or of a ``{name: batch}`` dict."""
        transform = self.train_transform if train else self.eval_transform
        if is_single_batch(batch):
            return {**batch, "video": transform(batch["video"])}
        if isinstance(batch, dict) and batch and all(is_single_batch(b) for b in batch.values()):
            return {name: {**b, "video": transform(b["video"])} for name, b in batch.items()}
        raise TypeError(
            "FrozenDataModule expects a batch dict with a 'video' key or a {name: batch} dict of them; "
            f"got {type(batch).__name__} with keys {list(batch) if isinstance(batch, dict) else None}."
        )

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        train = self.trainer is not None and self.trainer.training
        return self.transform_batch(batch, train=train)

    # ------------------------------------------------- per-epoch dataset state
    def skipped_counts(self, stage: Optional[str] = None) -> Dict[str, int]:
        """Items skipped by lax loading in the current epoch, ``{"<stage>/<name>": count}``.

        Counts restart when a loader starts a new epoch (validation: a new validation
        run after the sanity check), so log them at epoch end. Datasets without
        ``num_skipped`` are left out.
        """
        counts: Dict[str, int] = {}
        for s in _STAGES if stage is None else (stage,):
            for name, ds in zip(self.names[s], self.datasets[s]):
                values = [getattr(leaf, "num_skipped", None) for leaf in _leaf_datasets(ds)]
                values = [int(v) for v in values if v is not None]
                if values:
                    counts[f"{s}/{name}"] = sum(values)
        return counts

    def _epoch_key(self) -> Any:
        trainer = self.trainer
        if trainer is None:
            return None
        # The epoch whose data comes next. After a resume Lightning starts the train loader
        # before current_epoch moves on: epoch_progress has moved on for a checkpoint from an
        # epoch's end; one from its last batch or its validation still counts that epoch as
        # running although all its batches are done.
        loop = trainer.fit_loop
        progress = loop.epoch_progress.current
        finished = loop.restarting and progress.started > progress.processed and self._train_epoch_done()
        return (progress.processed + int(finished), trainer.sanity_checking)

    def _train_epoch_done(self) -> bool:
        """Whether the running training epoch has had its last batch (then a loader's position is of no use)."""
        trainer = self.trainer
        return trainer is not None and bool(trainer.fit_loop.epoch_loop.batch_progress.is_last_batch)

    def _on_loader_start(self, stage: str, index: int) -> Optional[int]:
        """New epoch for this loader: reset skip counts and, for training, ``set_epoch``.

        A loader restarted within one epoch (the shorter dataset cycling under
        "max_size_cycle", or several validation runs in an epoch) keeps its counts.
        Returns the epoch of a training loader, for its sampler.
        """
        key = self._epoch_key()
        train_epoch = key[0] if stage == "train" and key is not None else None
        if key is not None and self._loader_epochs.get((stage, index)) == key:
            return train_epoch
        self._loader_epochs[(stage, index)] = key
        dataset = self.datasets[stage][index]
        _call_each(dataset, "reset_skipped")
        if self.frame_schedule is not None and key is not None:
            # Read per item (shared memory): a curriculum stage change rebuilds no loader.
            _call_each(dataset, "set_num_frames", self.frame_schedule(key[0]))
        if train_epoch is not None:
            _call_each(dataset, "set_epoch", train_epoch)
        return train_epoch


def _dataset_seed(dataset: Dataset) -> int:
    """The ``seed`` of the (first) dataset that reads files, 0 if it has none."""
    seed = getattr(_leaf_datasets(dataset)[0], "seed", 0)
    return int(seed) if isinstance(seed, int) else 0
