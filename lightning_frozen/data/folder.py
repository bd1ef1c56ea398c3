"""VideoFolder: any folder of videos, e.g. a user's own collection to search.

Videos are found recursively by extension. Captions come from an optional CSV with a
``caption`` column and either ``path`` (relative to root) or ``id`` (file stem); files
without a CSV row, or every file when no CSV is given, are captioned by their stem.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Sequence

import pandas as pd

from .base import TextVideoDataset, read_table
from .video import PathLike

VIDEO_EXTENSIONS = (".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".mpg", ".mpeg")


def find_videos(root: Path, extensions: Sequence[str]) -> list[str]:
    """Paths (relative, '/'-separated, sorted) of files under root with these extensions."""
    wanted = {e.lower() for e in extensions}
    found = []
    for directory, _, files in os.walk(root):
        for name in files:
            if Path(name).suffix.lower() in wanted and not name.startswith("."):
                found.append((Path(directory) / name).relative_to(root).as_posix())
    return sorted(found)


class VideoFolder(TextVideoDataset):
    """Every video under ``root``; split defaults to "test" (middle frames, no randomness)."""

    dataset_name = "folder"

    def __init__(
        self,
        root: PathLike,
        captions_csv: Optional[PathLike] = None,
        extensions: Sequence[str] = VIDEO_EXTENSIONS,
        split: str = "test",
        **kwargs,
    ):
        self.captions_csv = captions_csv
        self.extensions = tuple(extensions)
        super().__init__(root, split=split, **kwargs)

    def _load_metadata(self) -> pd.DataFrame:
        paths = find_videos(self.root, self.extensions)
        if not paths:
            raise FileNotFoundError(
                f"VideoFolder: no files with extensions {self.extensions} under '{self.root}'"
            )
        stems = [Path(p).stem for p in paths]
        captions = dict(zip(paths, stems))
        if self.captions_csv is not None:
            captions.update(self._csv_captions(paths, stems))
        return pd.DataFrame(
            {"id": [p.rsplit(".", 1)[0] for p in paths], "path": paths,
             "captions": [[captions[p]] for p in paths]}
        )

    def _csv_captions(self, paths: list[str], stems: list[str]) -> dict[str, str]:
        csv = self.under_root(self.captions_csv)
        self.metadata_file = csv
        table = read_table(csv, {"caption"}, "VideoFolder")
        if "path" in table.columns:
            known = set(paths)
            keys = table["path"].map(lambda p: Path(p).as_posix())
            unknown = [k for k in keys if k not in known]
            if unknown:
                raise ValueError(f"'{csv}' names videos not under '{self.root}': {unknown[:3]}")
            return dict(zip(keys, table["caption"]))
        if "id" in table.columns:
            by_stem: dict[str, list[str]] = {}
            for path, stem in zip(paths, stems):
                by_stem.setdefault(stem, []).append(path)
            result = {}
            for key, caption in zip(table["id"], table["caption"]):
                if key not in by_stem:
                    raise ValueError(f"'{csv}': id {key!r} matches no video under '{self.root}'")
                for path in by_stem[key]:
                    result[path] = caption
            return result
        raise ValueError(f"'{csv}' needs a 'path' or an 'id' column next to 'caption'")
