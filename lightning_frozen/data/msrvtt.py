"""MSR-VTT: ``videos/all/<id>.mp4``, 20 captions per video in ``annotation/MSR_VTT.json``.

Split lists live in ``high-quality/structured-symlinks/``:

========  ============================  ========================================
cut       train                         val / test
========  ============================  ========================================
jsfusion  ``train_list_jsfusion.txt``   ``val_list_jsfusion.txt`` (1k-A), caption
                                        chosen by ``jsfusion_val_caption_idx.pkl``
miech     ``train_list_miech.txt``      ``test_list_miech.txt``, first caption
full      ``train_list_full.txt``       ``val_list_full.txt`` / ``test_list_full.txt``,
                                        every caption (multi-caption items)
========  ============================  ========================================

Training draws one of a video's captions at random.
"""

from __future__ import annotations

import json
import numbers
import os
from pathlib import Path
from typing import Optional, Union

import pandas as pd

from ..safe_load import load_pickle
from .base import TextVideoDataset

SPLIT_DIR = Path("high-quality") / "structured-symlinks"
ANNOTATION = Path("annotation") / "MSR_VTT.json"
CUTS = ("jsfusion", "miech", "full")


def split_list_name(cut: str, split: str) -> str:
    """The list file that holds the ids of ``cut``/``split``."""
    if cut == "jsfusion":
        return "train_list_jsfusion.txt" if split == "train" else "val_list_jsfusion.txt"
    if cut == "miech":
        return "train_list_miech.txt" if split == "train" else "test_list_miech.txt"
    return f"{split}_list_full.txt"


def read_id_list(path: Path) -> list[str]:
    """One video id a line; blank lines ignored."""
    if not path.is_file():
        raise FileNotFoundError(
            f"MSR-VTT split list '{path}' not found; the dataset root must contain "
            f"{SPLIT_DIR}/ with the split lists"
        )
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def load_caption_index(path: Union[str, os.PathLike]) -> dict[str, int]:
    """Read the pickled ``{video id: caption index}`` dict (restricted unpickler) and check its types."""
    value = load_pickle(path)
    if not isinstance(value, dict):
        raise ValueError(f"'{path}' should hold a dict of video id -> caption index, got {type(value).__name__}")
    result = {}
    for key, index in value.items():
        if not isinstance(key, str) or not isinstance(index, numbers.Integral) or isinstance(index, bool):
            raise ValueError(f"'{path}': entry {key!r}: {index!r} is not str -> int")
        result[key] = int(index)
    return result


def read_annotations(path: Path) -> pd.Series:
    """Captions per video id, in file order (the order the caption index refers to)."""
    if not path.is_file():
        raise FileNotFoundError(f"MSR-VTT annotation file '{path}' not found")
    with open(path) as handle:
        data = json.load(handle)
    if "annotations" not in data:
        raise ValueError(f"'{path}' has no 'annotations' list")
    table = pd.DataFrame(data["annotations"])
    missing = {"image_id", "caption"} - set(table.columns)
    if missing:
        raise ValueError(f"'{path}': annotations lack {sorted(missing)}")
    return table.groupby("image_id", sort=False)["caption"].apply(list)


class MSRVTT(TextVideoDataset):
    """MSR-VTT text-video pairs for one ``cut`` ("jsfusion", "miech", "full") and split.

    ``multi_caption`` (default: only for the full cut's val/test) makes ``text`` the list
    of every caption, padded with "" to the longest, with ``meta["caption_mask"]``.
    """

    dataset_name = "msrvtt"

    def __init__(
        self,
        root: Union[str, os.PathLike],
        cut: str = "jsfusion",
        split: str = "train",
        multi_caption: Optional[bool] = None,
        **kwargs,
    ):
        if cut not in CUTS:
            raise ValueError(f"MSR-VTT cut must be one of {CUTS}, got {cut!r}")
        self.cut = cut
        self._multi = multi_caption
        super().__init__(root, split=split, **kwargs)

    def _load_metadata(self) -> pd.DataFrame:
        self.multi_caption = (
            self._multi if self._multi is not None else self.cut == "full" and self.split != "train"
        )
        captions = read_annotations(self.root / ANNOTATION)
        list_path = self.root / SPLIT_DIR / split_list_name(self.cut, self.split)
        ids = read_id_list(list_path)
        unknown = [i for i in ids if i not in captions.index]
        if unknown:
            raise ValueError(
                f"{len(unknown)} id(s) of '{list_path}' have no captions in "
                f"'{self.root / ANNOTATION}' (first: {unknown[:3]})"
            )
        chosen = [list(captions[i]) for i in ids]
        if self.cut == "jsfusion" and self.split != "train" and not self.multi_caption:
            index_path = self.root / SPLIT_DIR / "jsfusion_val_caption_idx.pkl"
            if not index_path.is_file():
                raise FileNotFoundError(f"MSR-VTT jsfusion caption index '{index_path}' not found")
            caption_index = load_caption_index(index_path)
            for position, video_id in enumerate(ids):
                if video_id not in caption_index:
                    raise ValueError(f"'{index_path}' has no caption index for {video_id}")
                k = caption_index[video_id]
                if not 0 <= k < len(chosen[position]):
                    raise ValueError(
                        f"'{index_path}': caption index {k} for {video_id} is out of range "
                        f"({len(chosen[position])} captions)"
                    )
                chosen[position] = [chosen[position][k]]
        elif self.split != "train" and not self.multi_caption:
            chosen = [c[:1] for c in chosen]
        return pd.DataFrame(
            {"id": ids, "path": [f"videos/all/{i}.mp4" for i in ids], "captions": chosen}
        )
