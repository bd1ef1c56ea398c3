"""Conceptual Captions 3M: images as one-frame clips, for joint image-video training.

Images are stored as the common CC3M downloader (igorbrigadir/DownloadConceptualCaptions,
used by the Frozen authors) names them: ``training/<crc32>`` or ``validation/<crc32>``,
no extension, where ``<crc32>`` is ``zlib.crc32(thumbnailUrl.encode("utf-8")) & 0xffffffff``
in decimal. The metadata is Frozen's ``cc3m_training_success_full.tsv`` /
``cc3m_validation_success_full.tsv`` (columns ``caption``, ``thumbnailUrl``; a ``.csv``
is read comma-separated) in ``root/metadata/`` or ``root/``, or ``metadata_csv``.
"""

from __future__ import annotations

import os
import zlib
from typing import Union

import pandas as pd

from .base import TextVideoDataset, find_file, read_table

METADATA_NAMES = {"train": "cc3m_training_success_full.tsv", "val": "cc3m_validation_success_full.tsv"}


def image_name(url: str) -> str:
    """File name of a CC3M image: the unsigned CRC-32 of its URL, in decimal."""
    return str(zlib.crc32(url.encode("utf-8")) & 0xFFFFFFFF)


class ConceptualCaptions3M(TextVideoDataset):
    """CC3M image-caption pairs; items carry one-frame clips ``[1, 3, H, W]``.

    There is no test split: "test" reads the validation images.
    """

    dataset_name = "cc3m"
    images = True

    def __init__(
        self,
        root: Union[str, os.PathLike],
        split: str = "train",
        metadata_csv: Union[str, os.PathLike, None] = None,
        **kwargs,
    ):
        self.metadata_csv = metadata_csv
        super().__init__(root, split=split, **kwargs)

    @property
    def image_dir(self) -> str:
        return "training" if self.split == "train" else "validation"

    def _load_metadata(self) -> pd.DataFrame:
        if self.metadata_csv is not None:
            path = self.under_root(self.metadata_csv)
        else:
            name = METADATA_NAMES["train" if self.split == "train" else "val"]
            path = find_file(
                [self.root / "metadata" / name, self.root / name], "CC3M", "pass metadata_csv=<path>"
            )
        self.metadata_file = path
        table = read_table(path, {"caption", "thumbnailUrl"}, "CC3M")
        names = table["thumbnailUrl"].map(image_name)
        return pd.DataFrame(
            {
                "id": names,
                "path": self.image_dir + "/" + names,
                "captions": table["caption"].map(lambda c: [c]),
            }
        )

