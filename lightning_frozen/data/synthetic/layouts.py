"""Writing synthetic datasets in the real MSR-VTT, WebVid, CC3M and Kinetics layouts.

Files are real H.264 mp4s (and JPEGs for CC3M), so the whole reading pipeline runs on
them. Generation is deterministic given the seed. The dataset is written into a
temporary sibling folder and renamed into place, with a ``synthetic.json`` manifest: a
finished root with the same parameters is reused, a root holding anything else is refused.

``broken=True`` adds four entries referenced by the metadata of every split: a missing
file, an empty file, a truncated file and a file that is not a video (or image).

Kinetics (``root/<split>/<label>/<video>.mp4``, and ``<split>.csv`` tables of path,label) labels
each clip by what it shows apart from its colours, e.g. "circle moving left": the classes are
shapes x directions, and only a model that sees the order of frames can tell the directions.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Union

import numpy as np

from .clips import DIRECTIONS, FOREGROUNDS, SHAPES, ClipSpec, caption, random_spec, render_clip

LAYOUTS = ("msrvtt", "webvid", "cc3m", "kinetics")
MANIFEST = "synthetic.json"
MANIFEST_VERSION = 3
MSRVTT_CAPTIONS_PER_VIDEO = 20
BROKEN_KINDS = ("missing", "empty", "truncated", "not_video")


@dataclass(frozen=True)
class SyntheticParams:
    """Everything that defines a synthetic dataset; the defaults are the demo's dataset.

    ``size`` is (height, width), both even. ``num_colours`` (1-5 foreground colours, and up
    to 3 background colours) and ``num_shapes`` (1-4) limit the palette: few make clips that
    differ only in direction common.
    """

    layout: str = "msrvtt"
    num_train: int = 600
    num_test: int = 100
    num_frames_per_video: int = 20
    size: tuple[int, int] = (80, 80)
    fps: float = 10.0
    seed: int = 0
    broken: bool = False
    num_colours: int = 3
    num_shapes: int = 2

    def __post_init__(self) -> None:
        object.__setattr__(self, "size", tuple(int(s) for s in self.size))
        object.__setattr__(self, "fps", float(self.fps))
        object.__setattr__(self, "broken", bool(self.broken))
        if self.layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {LAYOUTS}, got {self.layout!r}")
        height, width = self.size
        if height % 2 or width % 2 or min(height, width) < 16:
            raise ValueError(f"size must be even and at least 16 px, got {self.size}")
        if self.num_train < 1 or self.num_test < 1 or self.num_frames_per_video < 1:
            raise ValueError("num_train, num_test and num_frames_per_video must all be >= 1")
        if not (1 <= self.num_colours <= len(FOREGROUNDS) and 1 <= self.num_shapes <= len(SHAPES)):
            raise ValueError(f"num_colours must be 1-{len(FOREGROUNDS)} and num_shapes 1-{len(SHAPES)}, "
                             f"got {self.num_colours} and {self.num_shapes}")


class _Writer:
    """Writes one layout's files under a (temporary) root and records broken entries."""

    def __init__(self, root: Path, params: SyntheticParams):
        self.root = root
        self.params = params
        self.broken: list[dict[str, str]] = []
        self.specs: dict[str, dict] = {}

    def rng(self, *key: int) -> np.random.Generator:
        return np.random.default_rng([self.params.seed, *key])

    def spec(self, rng: np.random.Generator) -> ClipSpec:
        return random_spec(rng, self.params.num_colours, self.params.num_shapes)

    def video(self, relative: str, key: tuple[int, ...]) -> ClipSpec:
        from ..encode import write_video

        rng = self.rng(*key)
        spec = self.spec(rng)
        path = self.root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        frames = render_clip(spec, self.params.num_frames_per_video, self.params.size, rng)
        # x264's lookahead/mb-tree (faster presets and up) is not bit-reproducible from run
        # to run even single-threaded; "ultrafast" is, and tiny clips stay tiny anyway.
        write_video(path, frames, fps=self.params.fps, preset="ultrafast")
        self.specs[relative] = asdict(spec)
        return spec

    def image(self, relative: str, key: tuple[int, ...]) -> ClipSpec:
        from PIL import Image

        rng = self.rng(*key)
        spec = self.spec(rng)
        path = self.root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        frame = render_clip(spec, 1, self.params.size, rng)[0]
        Image.fromarray(frame).save(path, format="JPEG", quality=90)
        self.specs[relative] = asdict(spec)
        return spec

    def entry(self, relative: str, i: int, count: int, keys: tuple[int, int, int], image: bool = False) -> ClipSpec:
        """Entry ``i`` of a split: a real file below ``count``, else broken kind ``i - count``.

        ``keys`` seed the real file, the broken file and the spec its caption still describes.
        """
        real, broken, described = keys
        if i < count:
            return (self.image if image else self.video)(relative, (real, i))
        k = i - count
        self.broken_file(relative, BROKEN_KINDS[k], (broken, k), image=image)
        return self.spec(self.rng(described, k))

    def broken_file(self, relative: str, kind: str, key: tuple[int, ...], image: bool = False) -> None:
        path = self.root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        if kind == "empty":
            path.write_bytes(b"")
        elif kind == "not_video":
            path.write_text("this is a text file, not a video or an image\n" * 20)
        elif kind == "truncated":
            (self.image if image else self.video)(relative, key)
            data = path.read_bytes()
            path.write_bytes(data[: len(data) // 2])
            self.specs.pop(relative)
        elif kind != "missing":
            raise ValueError(f"unknown broken kind {kind!r}")
        self.broken.append({"path": relative, "kind": kind})


def _write_msrvtt(w: _Writer) -> None:
    p = w.params
    ids = [f"video{i}" for i in range(p.num_train + p.num_test)]
    annotations, images, caption_index = [], [], {}
    for i, video_id in enumerate(ids):
        spec = w.video(f"videos/all/{video_id}.mp4", (0, i))
        _annotate(w, video_id, spec, (1, i), annotations, images)
    train, test = ids[: p.num_train], ids[p.num_train :]
    broken_ids = []
    if p.broken:
        for k, kind in enumerate(BROKEN_KINDS):
            video_id = f"video{len(ids) + k}"
            broken_ids.append(video_id)
            w.broken_file(f"videos/all/{video_id}.mp4", kind, (2, k))
            spec = w.spec(w.rng(3, k))
            _annotate(w, video_id, spec, (4, k), annotations, images)
    caption_rng = w.rng(5)
    for video_id in test + broken_ids:
        caption_index[video_id] = int(caption_rng.integers(MSRVTT_CAPTIONS_PER_VIDEO))
    num_val = max(1, len(train) // 10) if len(train) > 1 else 0
    lists = {
        "train_list_jsfusion.txt": train,
        "val_list_jsfusion.txt": test,
        "train_list_miech.txt": train,
        "test_list_miech.txt": test,
        "train_list_full.txt": train[: len(train) - num_val],
        "val_list_full.txt": train[len(train) - num_val :],
        "test_list_full.txt": test,
    }
    split_dir = w.root / "high-quality" / "structured-symlinks"
    split_dir.mkdir(parents=True, exist_ok=True)
    for name, listed in lists.items():
        (split_dir / name).write_text("".join(f"{i}\n" for i in listed + broken_ids))
    with open(split_dir / "jsfusion_val_caption_idx.pkl", "wb") as handle:
        pickle.dump(caption_index, handle, protocol=4)
    (w.root / "annotation").mkdir(parents=True, exist_ok=True)
    data = {
        "info": {"description": "synthetic MSR-VTT (lightning_frozen)", "version": "1.0"},
        "images": images,
        "annotations": annotations,
        "type": "caption",
    }
    (w.root / "annotation" / "MSR_VTT.json").write_text(json.dumps(data))


def _annotate(w: _Writer, video_id: str, spec: ClipSpec, key, annotations: list, images: list) -> None:
    rng = w.rng(*key)
    images.append({"id": video_id, "file_name": f"{video_id}.mp4"})
    for _ in range(MSRVTT_CAPTIONS_PER_VIDEO):
        annotations.append({"image_id": video_id, "caption": caption(spec, rng), "id": len(annotations)})


def _write_webvid(w: _Writer) -> None:
    import pandas as pd

    p = w.params
    (w.root / "metadata").mkdir(parents=True, exist_ok=True)
    for split_key, (split, count) in enumerate((("train", p.num_train), ("val", p.num_test))):
        rows = []
        offset = 0 if split == "train" else p.num_train
        for i in range(count + (len(BROKEN_KINDS) if p.broken else 0)):
            number = offset + i
            if i < count:
                videoid = str(1_000_000 + number)
            else:  # broken entries: their own id range per split
                videoid = str(9_000_000 + 1_000 * split_key + i - count)
            first = number // 50 * 50 + 1
            page_dir = f"{first:06d}_{first + 49:06d}"
            relative = f"videos/{page_dir}/{videoid}.mp4"
            spec = w.entry(relative, i, count, (10 + split_key, 20 + split_key, 30 + split_key))
            rows.append({
                "videoid": videoid,
                "contentUrl": f"https://example.com/synthetic/{videoid}.mp4",
                "duration": f"PT00H00M{p.num_frames_per_video / p.fps:02.0f}S",
                "page_dir": page_dir,
                "name": caption(spec, w.rng(40 + split_key, i)),
            })
        pd.DataFrame(rows).to_csv(w.root / "metadata" / f"results_2M_{split}.csv", index=False)


def _write_cc3m(w: _Writer) -> None:
    import pandas as pd

    from ..cc3m import METADATA_NAMES, image_name

    p = w.params
    (w.root / "metadata").mkdir(parents=True, exist_ok=True)
    for split_key, (split, folder, count) in enumerate(
        (("train", "training", p.num_train), ("val", "validation", p.num_test))
    ):
        rows = []
        for i in range(count + (len(BROKEN_KINDS) if p.broken else 0)):
            url = f"https://example.com/synthetic/cc3m/{split}/{i}.jpg"
            relative = f"{folder}/{image_name(url)}"
            spec = w.entry(relative, i, count, (50 + split_key, 60 + split_key, 70 + split_key), image=True)
            rows.append({"caption": caption(spec, w.rng(80 + split_key, i), moving=False), "thumbnailUrl": url})
        table = pd.DataFrame(rows)
        table.to_csv(w.root / "metadata" / METADATA_NAMES[split], sep="\t", index=False)


def action_label(spec: ClipSpec) -> str:
    """The class of a synthetic clip in the Kinetics layout: its shape and direction ("circle moving left")."""
    return f"{spec.shape} moving {spec.direction}"


def action_labels(num_shapes: int) -> list[str]:
    """Every class of a palette of ``num_shapes`` shapes, in a fixed order (the index order of ``labels.txt``)."""
    return [f"{shape} moving {direction}" for shape in list(SHAPES)[:num_shapes] for direction in DIRECTIONS]


def _write_kinetics(w: _Writer) -> None:
    """train, val and test folders (val and test ``num_test`` clips each), their CSVs and ``labels.txt``."""
    import pandas as pd

    p = w.params
    (w.root / "labels.txt").write_text("".join(f"{label}\n" for label in action_labels(p.num_shapes)))
    for split_key, (split, count) in enumerate((("train", p.num_train), ("val", p.num_test), ("test", p.num_test))):
        rows = []
        for i in range(count + (len(BROKEN_KINDS) if p.broken else 0)):
            # what clip i shows (``_Writer.video`` draws the same spec from this key), so its class folder
            label = action_label(w.spec(w.rng(90 + split_key, i)))
            relative = f"{split}/{label}/{split}_{i:05d}.mp4"
            w.entry(relative, i, count, (90 + split_key, 100 + split_key, 110 + split_key))
            rows.append({"path": relative, "label": label})
        pd.DataFrame(rows).to_csv(w.root / f"{split}.csv", index=False)


def _check_existing(root: Path, params: SyntheticParams) -> bool:
    """True when root already holds this exact dataset; error when it holds anything else."""
    if not root.exists():
        return False
    if not root.is_dir():
        raise FileExistsError(f"'{root}' exists and is not a directory; choose another --root")
    if not any(root.iterdir()):
        return False
    manifest = root / MANIFEST
    if manifest.is_file():
        recorded = json.loads(manifest.read_text())
        wanted = _manifest(params, [], [])
        if recorded.get("params") == wanted["params"] and recorded.get("version") == MANIFEST_VERSION:
            missing = [f for f in recorded.get("files", []) if not (root / f).is_file()]
            if not missing:
                return True
            raise FileExistsError(
                f"'{root}' holds this synthetic dataset but {len(missing)} file(s) are missing "
                f"(first: {missing[0]}); delete the folder to regenerate it"
            )
        raise FileExistsError(
            f"'{root}' holds a synthetic dataset made with other parameters "
            f"({recorded.get('params')}); delete it or choose another --root"
        )
    raise FileExistsError(
        f"'{root}' is not empty and is not a synthetic dataset; refusing to write into it "
        "(choose an empty or new --root)"
    )


def _manifest(params: SyntheticParams, files: list[str], broken: list[dict]) -> dict:
    as_dict = asdict(params)
    as_dict["size"] = list(params.size)
    return {"version": MANIFEST_VERSION, "params": as_dict, "files": files, "broken": broken}


def make_synthetic_dataset(root: Union[str, os.PathLike], layout: str = "msrvtt", **fields: Any) -> Path:
    """Write a synthetic dataset in ``layout``'s real on-disk layout; return its root.

    ``fields`` are ``SyntheticParams`` fields (their defaults make the demo's dataset). Reuses a
    finished root made with the same parameters; refuses a root that holds anything else.
    """
    params = SyntheticParams(layout=layout, **fields)
    root = Path(root)
    if _check_existing(root, params):
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    staging = root.parent / f".{root.name}.partial-{os.getpid()}"
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir()
    try:
        writer = _Writer(staging, params)
        writers = {"msrvtt": _write_msrvtt, "webvid": _write_webvid, "cc3m": _write_cc3m, "kinetics": _write_kinetics}
        writers[layout](writer)
        files = sorted(
            p.relative_to(staging).as_posix() for p in staging.rglob("*") if p.is_file()
        )
        manifest = _manifest(params, files, writer.broken)
        manifest["clips"] = writer.specs
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=1))
        if root.exists():
            root.rmdir()  # empty (checked above)
        os.replace(staging, root)
    except OSError:
        shutil.rmtree(staging, ignore_errors=True)
        if _check_existing(root, params):  # a run beside this one finished the same dataset first
            return root
        raise
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return root
