"""MSR-VTT: ``videos/all/<id>.mp4``, 20 captions per video in ``annotation/MSR_VTT.json``.

Split lists live in ``high-quality/structured-symlinks/``:

========  ============================  ========================================
cut       train                         test (and val)
========  ============================  ========================================
jsfusion  ``train_list_jsfusion.txt``   ``val_list_jsfusion.txt`` (1k-A), caption
                                        chosen by ``jsfusion_val_caption_idx.pkl``
miech     ``train_list_miech.txt``      ``test_list_miech.txt``, first caption
full      ``train_list_full.txt``       ``test_list_full.txt`` (val:
                                        ``val_list_full.txt``), every caption
                                        (multi-caption items)
========  ============================  ========================================

Training draws one of a video's captions at random.

Validation that selects a checkpoint must not see the test set, and the jsfusion and miech
cuts have no validation list (``val_list_jsfusion.txt`` *is* the 1k-A test set; the paper
and the original code selected on it). ``holdout: N`` carves N videos (or a fraction) out
of the cut's train list: ``split: train`` then leaves them out and ``split: val`` reads
them (first caption each). Give both datasets the same ``holdout``. The carve depends on
the ids alone (the N with the smallest CRC-32), not on the list's order or any seed.
"""

from __future__ import annotations

import json
import numbers
import os
import zlib
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


def held_out_ids(ids: list[str], holdout: Union[int, float]) -> set[str]:
    """The `holdout` ids (a count, or a fraction of `ids`) with the smallest CRC-32: fixed by the ids alone."""
    count = holdout if isinstance(holdout, int) else max(1, round(len(ids) * holdout))
    if count >= len(ids):
        raise ValueError(f"holdout {holdout} would leave no training video out of {len(ids)}; hold out fewer")
    return set(sorted(ids, key=lambda i: (zlib.crc32(i.encode("utf-8")), i))[:count])


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
    try:
        with open(path, encoding="utf-8-sig") as handle:  # a byte-order mark (some editors write one) is skipped
            data = json.load(handle)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"'{path}' is not valid JSON ({err}); replace it with a clean copy") from None
    if not isinstance(data, dict) or not isinstance(data.get("annotations"), list):
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
        holdout: Union[int, float, None] = None,
        **kwargs,
    ):
        if cut not in CUTS:
            raise ValueError(f"MSR-VTT cut must be one of {CUTS}, got {cut!r}")
        valid_count = isinstance(holdout, int) and not isinstance(holdout, bool) and holdout >= 1
        if holdout is not None and not valid_count and not (isinstance(holdout, float) and 0 < holdout < 1):
            raise ValueError(f"holdout must be a count of videos >= 1 or a fraction in (0, 1), got {holdout!r}")
        if split == "val" and holdout is None and cut != "full":
            raise ValueError(
                f"MSR-VTT's {cut} cut has no validation list ({split_list_name(cut, 'test')} is the test set): "
                "set holdout (e.g. holdout: 1000) on both the train and the val dataset to validate on videos "
                "carved from the train list, or use split: test to evaluate without selecting on it"
            )
        self.cut = cut
        self.holdout = holdout
        self._multi = multi_caption
        super().__init__(root, split=split, **kwargs)

    def _load_metadata(self) -> pd.DataFrame:
        self.multi_caption = (
            self._multi if self._multi is not None else self.cut == "full" and self.split != "train"
        )
        self.metadata_file = self.root / ANNOTATION
        captions = read_annotations(self.metadata_file)
        carved = self.holdout is not None and self.split in ("train", "val")
        list_path = self.root / SPLIT_DIR / split_list_name(self.cut, "train" if carved else self.split)
        ids = read_id_list(list_path)
        if carved:
            held = held_out_ids(ids, self.holdout)
            ids = [i for i in ids if (i in held) == (self.split == "val")]
        unknown = [i for i in ids if i not in captions.index]
        self._reject(f"video id(s) of '{list_path}' without an annotation", unknown,
                     "Add their captions to the annotation file or remove them from the list")
        ids = [i for i in ids if i in captions.index]
        chosen = [list(captions[i]) for i in ids]
        if self.cut == "jsfusion" and self.split == "test" and not self.multi_caption:
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
