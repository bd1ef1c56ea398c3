"""Kinetics: action-classification videos, a class label per video.

Two layouts, as Kinetics copies are found on disk:

* folders: ``root/<split>/<label>/<video>.mp4`` (every video under a folder named by its class);
* a table: ``csv`` (a CSV or TSV, relative to ``root`` or absolute) with ``path`` (relative to
  ``root``) and ``label`` columns.

The class list is ``labels`` (a text file, one class name a line), which fixes the class
indices; without it, the sorted class names found in this split. Give the file whenever a split
may lack a class, or the indices of the splits disagree (``VideoClassifier`` checks it).

Items are the dataset core's: the caption is the class name (so the same files also train
retrieval) and ``meta["label"]`` the class index. Unreadable videos are replaced and counted
under ``loading: lax`` like everywhere else.
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Optional, Sequence, Union

import pandas as pd

from .base import TextVideoDataset, read_table
from .core import Record
from .folder import VIDEO_EXTENSIONS, find_videos


def read_labels(path: Path) -> list[str]:
    """Class names, one a line (blank lines ignored); each name once."""
    if not path.is_file():
        raise FileNotFoundError(f"Kinetics: labels file '{path}' not found; give a text file with one class a line")
    names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if not names or repeated:
        raise ValueError(f"Kinetics: labels file '{path}' must name each class once, one a line"
                         + (f"; repeated: {repeated[:3]}" if repeated else "; it is empty"))
    return names


class Kinetics(TextVideoDataset):
    """Videos with class labels, in the folder or the CSV layout (see the module docstring).

    Args:
        root: the dataset folder (video paths are relative to it).
        split: "train" draws clips at random; other splits read them deterministically.
        csv: a table with ``path`` and ``label`` columns; None reads the folders under ``root/<split>``.
        labels: a text file of class names, one a line, that fixes the class indices.
        extensions: video file extensions the folder layout looks for.
        **kwargs: the dataset core's arguments (frame_size, frame_interval, clips_per_video, loading, ...).
    """

    dataset_name = "kinetics"
    caption_field = "label"

    def __init__(
        self,
        root: Union[str, os.PathLike],
        split: str = "train",
        csv: Optional[Union[str, os.PathLike]] = None,
        labels: Optional[Union[str, os.PathLike]] = None,
        extensions: Sequence[str] = VIDEO_EXTENSIONS,
        **kwargs,
    ):
        self.csv = csv
        self.labels_file = labels
        self.extensions = tuple(extensions)
        self.labels: list[str] = []
        super().__init__(root, split=split, **kwargs)

    def _load_metadata(self) -> pd.DataFrame:
        table = self._csv_table() if self.csv is not None else self._folder_table()
        named = set(table["label"]) - {""}  # an empty label is a missing caption: the caption check names it
        if self.labels_file is not None:
            self.labels = read_labels(self.under_root(self.labels_file))
        else:
            self.labels = sorted(named)
        index = {name: i for i, name in enumerate(self.labels)}
        unknown = sorted(named - set(index))
        offenders = [p for p, label in zip(table["path"], table["label"]) if label in unknown]
        self._reject(f"video(s) with a class not in '{self.labels_file}' ({unknown[:3]})", offenders,
                     "Add the classes to the labels file or remove the videos")
        table = table[~table["label"].isin(unknown)].reset_index(drop=True)
        return pd.DataFrame({"id": [p.rsplit(".", 1)[0] for p in table["path"]], "path": table["path"],
                             "captions": [[label] for label in table["label"]],
                             "label": [index.get(label, -1) for label in table["label"]]})

    def _folder_table(self) -> pd.DataFrame:
        folder = self.root / self.split
        self.metadata_file = folder
        if not folder.is_dir():
            raise FileNotFoundError(f"Kinetics: no folder '{folder}' (layout root/<split>/<label>/<video>); "
                                    "or give csv: a table of path,label")
        found = find_videos(folder, self.extensions)
        loose = [p for p in found if "/" not in p]
        if loose:
            raise ValueError(f"Kinetics: videos directly under '{folder}' have no class folder (first: {loose[0]}); "
                             "put each video in a folder named by its class")
        if not found:
            raise FileNotFoundError(f"Kinetics: no files with extensions {self.extensions} under '{folder}'")
        return pd.DataFrame({"path": [f"{self.split}/{p}" for p in found], "label": [p.split("/")[0] for p in found]})

    def _csv_table(self) -> pd.DataFrame:
        path = self.under_root(self.csv)
        self.metadata_file = path
        table = read_table(path, {"path", "label"}, "Kinetics")
        table = table.assign(path=table["path"].map(lambda p: Path(p).as_posix()), label=table["label"].str.strip())
        return table[["path", "label"]]

    def record(self, position: int) -> Record:
        label = int(self.records.iloc[self._record_index(position)]["label"])
        return dataclasses.replace(super().record(position), meta={"label": label})

    @property
    def num_classes(self) -> int:
        return len(self.labels)
