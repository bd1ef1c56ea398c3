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
* Loaders are resumable and call ``on_start()`` where a pass starts (``RunLoader``): torchdata's
  ``StatefulDataLoader`` for files (``FileLoader``; Lightning saves its position in every
  checkpoint) and LitData's ``StreamingDataLoader`` for shards
  (``lightning_frozen.data.streaming.StreamingLoader``, imported only when shards are read).
  The training order of files is ``EpochShuffleSampler``'s, drawn from the run state.
* One ``RunState`` (the run's seed, the data epoch, the frames per clip) is handed to every
  dataset and to the training sampler, and written in one place: where a training loader
  starts a pass (in the main process, before any worker reads). The frame curriculum hands it
  a schedule. Skip counts restart there too (every pass of an evaluation loader, every new
  epoch of the training data).
* Which epoch's data comes next is ``trainer.current_epoch``, except on a resume from a
  checkpoint taken after an epoch's last batch: Lightning builds the loaders before it moves its
  epoch on, so the DataModule keeps its own count in the checkpoint (``state_dict``: the data
  epoch, and how many of its batches were trained) and reads what is larger.

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
        tokenizer: distilbert-base-uncased   # HF name or a local directory (the CLI: the text model's)
        max_length: 32
        padding: longest                     # max_length for static shapes (IPU)
        input_res: 224
        num_frames: 4                        # the CLI: model.video.num_frames
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
from typing import Any, Callable, Dict, Iterator, List, Literal, Optional, Sequence, Sized, Tuple, Union

import pytorch_lightning as pl
import torch
from torch.utils.data import ConcatDataset, DataLoader, Dataset, Sampler, Subset
from torchdata.stateful_dataloader import StatefulDataLoader

from .collate import TextVideoCollator, is_single_batch
from .core import RunState
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


class RunLoader:
    """Calls ``on_start()`` whenever iteration (re)starts; mixed into a DataLoader class."""

    on_start: Optional[Callable[[], None]] = None

    def __iter__(self) -> Iterator[Any]:
        if self.on_start is not None:
            self.on_start()
        return super().__iter__()


class FileLoader(RunLoader, StatefulDataLoader):
    """A resumable DataLoader for datasets of files.

    ``pass_complete()`` says when the running training pass has had its last batch: its position
    is then of no use (a resume starts the next pass from its beginning), so none is saved.
    Lightning re-creates the loader with a distributed sampler under DDP; both callables are
    carried over like any other argument.
    """

    def __init__(self, *args: Any, on_start: Optional[Callable[[], None]] = None,
                 pass_complete: Optional[Callable[[], bool]] = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.on_start = on_start
        self.pass_complete = pass_complete

    def state_dict(self) -> dict[str, Any]:
        if self.pass_complete is not None and self.pass_complete():
            return {}
        return super().state_dict()


class EpochShuffleSampler(Sampler[int]):
    """A fresh random order every epoch that any process can redraw.

    The order of an epoch depends only on the run's seed, ``seed``, ``stream`` and the epoch the
    run state holds when iteration starts (the DataModule writes it as the loader starts), not on
    the global random state. A resumed ``StatefulDataLoader`` skips the indices the interrupted
    loader had already yielded, so it continues the same epoch in the same order. Under DDP,
    Lightning wraps this sampler and hands each rank its share.
    """

    def __init__(self, data_source: Sized, run_state: RunState, seed: int = 0, stream: int = 0) -> None:
        self.data_source = data_source
        self.run_state = run_state
        self.seed = int(seed)
        self.stream = int(stream)  # several training datasets of one seed still get their own orders

    def __len__(self) -> int:
        return len(self.data_source)

    def __iter__(self) -> Iterator[int]:
        generator = self.run_state.generator(self.seed, self.stream, self.run_state.epoch)
        return iter(torch.randperm(len(self.data_source), generator=generator).tolist())


class FrozenDataModule(pl.LightningDataModule):
    """Text-video data for Frozen-in-Time (see the module docstring for the YAML form).

    Args:
        train_datasets: training datasets; every step takes one batch from each.
        train_batch_sizes: one batch size per training dataset (same order), or one
            int for all.
        val_datasets: validation datasets (one DataLoader each, in order; ``dataloader_idx``
            in the model's steps follows this order).
        test_datasets: test datasets, likewise.
        predict_dataset: dataset for ``trainer.predict`` (items may lack ``text``; a dataset with
            ``yields_batches = True`` yields lists of items, each list one batch).
        tokenizer: Hugging Face tokenizer name or local directory, loaded on first use with
            ``lightning_frozen.tokenizer.build_tokenizer`` (same rules as the text tower).
        max_length: captions' token limit (see ``TextVideoCollator``).
        padding: "longest" or "max_length" (static shapes; see ``TextVideoCollator``).
        eval_batch_size: batch size of validation, test and predict loaders.
        num_workers: DataLoader workers per dataset.
        persistent_workers: keep the workers between passes (ignored when ``num_workers`` is 0).
        pin_memory: ``None`` pins when CUDA is available.
        input_res: the side of the square clips the model sees (see ``VideoTransform``).
        crop_scale: area range of the training crop.
        hflip: random horizontal flips in training.
        color_jitter: colour jitter strength in training (None: off).
        test_crops: spatial crops of every test clip, 1 (centre) or 3 (along the long side; each
            crop a view the model averages over); validation and predict take the centre crop.
        num_frames: frames per clip of every dataset (a frame curriculum schedules it by epoch);
            the CLI takes it from ``model.video.num_frames``.
        seed: the run's seed, which every sample's frames and caption and every epoch's order
            derive from; the CLI takes it from ``seed_everything``.
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
        num_frames: int = 4,
        seed: int = 0,
        crop_scale: Tuple[float, float] = (0.5, 1.0),
        hflip: bool = True,
        color_jitter: Optional[float] = None,
        test_crops: Literal[1, 3] = 1,
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
        if num_frames < 1:
            raise ValueError(f"frames per clip must be >= 1 (model.video.num_frames under the CLI); got {num_frames}.")
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
        self.run_state = RunState(seed=seed, num_frames=num_frames)
        for group in self.datasets.values():
            for ds in group:
                _call_each(ds, "use_run_state", self.run_state)
        self._progress: Tuple[Optional[int], int] = (None, 0)  # (data epoch, its batches trained); None: no pass yet
        self.train_transform = VideoTransform(
            train=True, input_res=input_res, crop_scale=crop_scale, hflip=hflip, color_jitter=color_jitter
        )
        self.eval_transform = VideoTransform(train=False, input_res=input_res)
        self.test_transform = VideoTransform(train=False, input_res=input_res, crops=test_crops)
        self._tokenizer: Any = None

    # ----------------------------------------------------------------- setup
    @property
    def tokenizer(self) -> Any:
        """The Hugging Face tokenizer, loaded on first use."""
        if self._tokenizer is None:
            from ..tokenizer import build_tokenizer  # lazy: keeps `import lightning_frozen.data` light

            self._tokenizer = build_tokenizer(self.tokenizer_name)
        return self._tokenizer

    def setup(self, stage: Optional[str] = None) -> None:
        self.run_state.set_num_frames(self.num_frames)
        if stage == "fit":
            self._progress = (None, 0)  # a resume puts its own back (load_state_dict)
        self.run_state.begin_epoch(self._progress[0] or 0)  # with a frame schedule: that epoch's frame count
        for group in self.datasets.values():
            for ds in group:
                _call_each(ds, "reset_skipped")

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
        if getattr(dataset, "is_streaming", False):
            # LitData's loader for shards: it splits over ranks and workers and resumes mid-epoch
            from .streaming import streaming_loader

            return streaming_loader(dataset, train=train, **common)
        seed = _dataset_seed(dataset)
        return FileLoader(
            dataset,
            # the training order: a function of (run seed, dataset seed, epoch) alone
            sampler=EpochShuffleSampler(dataset, self.run_state, seed=seed, stream=index) if train else None,
            drop_last=train,
            generator=self.run_state.generator(seed, index),  # worker seeds never draw on the global RNG
            pass_complete=self._train_pass_complete if train else None,
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
    def transform_batch(self, batch: Dict[str, Any], train: bool, test: bool = False) -> Dict[str, Any]:
        """Augment (``train``) or resize/crop (``test``: ``test_crops``) the ``video`` of a batch or of a
        ``{name: batch}`` dict."""
        transform = self.train_transform if train else self.test_transform if test else self.eval_transform
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
        if train:
            epoch, batches = self._progress
            self._progress = (epoch, batches + 1)
        return self.transform_batch(batch, train=train, test=self.trainer is not None and self.trainer.testing)

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

    def _on_loader_start(self, stage: str, index: int) -> None:
        """A pass starts: an evaluation loader's counts restart; a training loader begins its data epoch.

        A training loader restarted within one epoch (the shorter dataset cycling under
        "max_size_cycle") keeps the epoch and its counts.
        """
        if stage != "train":
            _call_each(self.datasets[stage][index], "reset_skipped")
            return
        epoch = max(self.trainer.current_epoch if self.trainer is not None else 0, self._progress[0] or 0)
        if epoch != self._progress[0]:
            self._progress = (epoch, 0)
            for dataset in self.datasets["train"]:
                _call_each(dataset, "reset_skipped")
        self.run_state.begin_epoch(epoch)

    def _train_pass_complete(self) -> bool:
        """Whether the running training epoch has had all its batches (a loader's position is then of no use)."""
        return self.trainer is not None and self._progress[1] >= self.trainer.num_training_batches

    def state_dict(self) -> Dict[str, Any]:
        """Which data epoch a resume continues, and how many of its batches were trained.

        A checkpoint taken after an epoch's last batch continues with the next epoch: Lightning's
        own epoch count moves on only after the loaders were built (see the module docstring).
        """
        epoch, batches = self._progress
        if epoch is None:
            return {"data_epoch": 0, "batches_trained": 0}
        if self._train_pass_complete():
            epoch, batches = epoch + 1, 0
        return {"data_epoch": epoch, "batches_trained": batches}

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        self._progress = (int(state_dict["data_epoch"]), int(state_dict["batches_trained"]))


def _dataset_seed(dataset: Dataset) -> int:
    """The ``seed`` of the (first) dataset that reads files, 0 if it has none."""
    seed = getattr(_leaf_datasets(dataset)[0], "seed", 0)
    return int(seed) if isinstance(seed, int) else 0
