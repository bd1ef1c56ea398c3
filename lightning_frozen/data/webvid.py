"""WebVid-2M/10M: ``videos/<page_dir>/<videoid>.mp4`` with one caption (``name``) each.

The metadata CSV is the released ``results_<cut>_<split>.csv`` (columns ``videoid``,
``page_dir``, ``name``, others ignored), looked up in ``root/metadata/`` then ``root/``.
WebVid has no test split: "test" reads the val CSV.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import pandas as pd

from .base import TextVideoDataset, find_file, read_table
from .video import PathLike


def cut_caption(caption: str, max_words: Optional[int], max_chars: Optional[int]) -> str:
    """Shorten a caption to at most ``max_words`` words and ``max_chars`` characters."""
    caption = " ".join(caption.split())
    if max_words is not None:
        caption = " ".join(caption.split(" ")[:max_words])
    if max_chars is not None and len(caption) > max_chars:
        caption = caption[:max_chars].rstrip()
    return caption


class WebVid(TextVideoDataset):
    """WebVid text-video pairs; captions cut to ``max_caption_words``/``max_caption_chars``."""

    dataset_name = "webvid"

    def __init__(
        self,
        root: PathLike,
        metadata_csv: Optional[PathLike] = None,
        cut: str = "2M",
        split: str = "train",
        max_caption_words: Optional[int] = 64,
        max_caption_chars: Optional[int] = 512,
        **kwargs,
    ):
        self.metadata_csv = metadata_csv
        self.cut = cut
        self.max_caption_words = max_caption_words
        self.max_caption_chars = max_caption_chars
        super().__init__(root, split=split, **kwargs)

    def _metadata_path(self) -> Path:
        if self.metadata_csv is not None:
            return self.under_root(self.metadata_csv)
        split = "val" if self.split == "test" else self.split
        name = f"results_{self.cut}_{split}.csv"
        return find_file(
            [self.root / "metadata" / name, self.root / name],
            "WebVid",
            "pass metadata_csv=<path> or check cut/split",
        )

    caption_field = "name"

    def _load_metadata(self) -> pd.DataFrame:
        self.metadata_file = self._metadata_path()
        table = read_table(self.metadata_file, {"videoid", "page_dir", "name"}, "WebVid")
        captions = table["name"].map(
            lambda c: [cut_caption(c, self.max_caption_words, self.max_caption_chars)]
        )
        return pd.DataFrame(
            {
                "id": table["videoid"],
                "path": "videos/" + table["page_dir"] + "/" + table["videoid"] + ".mp4",
                "captions": captions,
            }
        )
