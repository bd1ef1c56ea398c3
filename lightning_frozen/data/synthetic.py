"""Synthetic text-video data written in the real MSR-VTT, WebVid and CC3M layouts.

Each clip shows a coloured shape on a coloured background moving left, right, up or
down along a path centred in the frame, so no single frame tells the direction: a one-frame model can match colour and shape, only a multi-frame
model can also match the direction. Captions name colour, shape and direction in
varied wording. Files are real H.264 mp4s (and JPEGs for CC3M), so the whole reading
pipeline runs on them. Generation is deterministic given the seed.

The dataset is written into a temporary sibling folder and renamed into place, with a
``synthetic.json`` manifest: a finished root with the same parameters is reused, a root
holding anything else is refused.

``broken=True`` adds four entries referenced by the metadata of every split: a missing
file, an empty file, a truncated file and a file that is not a video (or image).
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import re
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np

from .encode import write_video

LAYOUTS = ("msrvtt", "webvid", "cc3m")
MANIFEST = "synthetic.json"
MANIFEST_VERSION = 3
MSRVTT_CAPTIONS_PER_VIDEO = 20
BROKEN_KINDS = ("missing", "empty", "truncated", "not_video")

COLOURS = {
    "red": (220, 30, 30),
    "green": (30, 180, 50),
    "blue": (30, 60, 220),
    "yellow": (240, 220, 30),
    "white": (245, 245, 245),
    "purple": (140, 40, 170),
    "orange": (250, 140, 20),
    "black": (15, 15, 15),
}
FOREGROUNDS = ("white", "yellow", "orange", "green", "red")
BACKGROUNDS = ("black", "blue", "purple")
SHAPES = {
    "circle": ("circle", "disc", "ball", "round shape", "dot"),
    "square": ("square", "box", "block", "square shape"),
    "triangle": ("triangle", "triangular shape", "wedge"),
    "diamond": ("diamond", "rhombus", "diamond shape"),
}
DIRECTIONS = {
    "left": ((0, -1), ("moving to the left", "sliding left", "travelling leftwards",
                       "drifting to the left", "heading left")),
    "right": ((0, 1), ("moving to the right", "sliding right", "travelling rightwards",
                       "drifting to the right", "heading right")),
    "up": ((-1, 0), ("moving up", "rising", "sliding upwards", "drifting up", "heading up")),
    "down": ((1, 0), ("moving down", "falling", "sliding downwards", "sinking",
                      "heading down")),
}
VIDEO_TEMPLATES = (
    "a {fg} {shape} {motion} on a {bg} background",
    "the {bg} background shows a {fg} {shape} {motion}",
    "{fg} {shape} {motion} over {bg}",
    "a video of a {fg} {shape} {motion} against a {bg} backdrop",
    "on a {bg} background a {fg} {shape} is {motion}",
    "there is a {fg} {shape} {motion} in front of {bg}",
    "a clip where a {fg} {shape} keeps {motion} across a {bg} screen",
)
IMAGE_TEMPLATES = (
    "a {fg} {shape} on a {bg} background",
    "photo of a {fg} {shape} against {bg}",
    "the {bg} background shows a {fg} {shape}",
    "a picture of a {fg} {shape} in front of a {bg} backdrop",
    "{fg} {shape} on {bg}",
)


@dataclass(frozen=True)
class ClipSpec:
    """What one synthetic clip shows (the ground truth its captions describe)."""

    foreground: str
    background: str
    shape: str
    direction: str


@dataclass(frozen=True)
class SyntheticParams:
    layout: str
    num_train: int
    num_test: int
    num_frames_per_video: int
    size: tuple[int, int]
    fps: float
    seed: int
    broken: bool
    num_colours: int = len(FOREGROUNDS)
    num_shapes: int = len(SHAPES)


def random_spec(rng: np.random.Generator, num_colours: int = len(FOREGROUNDS), num_shapes: int = len(SHAPES)) -> ClipSpec:
    """A bright shape on a dark background, so motion shows the same way in every colour pair.

    Few colours and shapes make clips that differ only in direction common: then only a
    multi-frame model can tell them apart."""
    fg = rng.choice(FOREGROUNDS[:num_colours])
    bg = rng.choice(BACKGROUNDS[:num_colours])
    shape = rng.choice(list(SHAPES)[:num_shapes])
    return ClipSpec(str(fg), str(bg), str(shape), str(rng.choice(list(DIRECTIONS))))


def caption(spec: ClipSpec, rng: np.random.Generator, moving: bool = True) -> str:
    """One caption of ``spec`` in a randomly chosen wording."""
    templates = VIDEO_TEMPLATES if moving else IMAGE_TEMPLATES
    text = str(rng.choice(templates)).format(
        fg=spec.foreground,
        bg=spec.background,
        shape=rng.choice(SHAPES[spec.shape]),
        motion=rng.choice(DIRECTIONS[spec.direction][1]),
    )
    return re.sub(r"\ba (?=[aeiou])", "an ", text)


def _shape_mask(shape: str, dy: np.ndarray, dx: np.ndarray, radius: float) -> np.ndarray:
    if shape == "circle":
        return dy**2 + dx**2 <= radius**2
    if shape == "square":
        return (np.abs(dy) <= radius * 0.85) & (np.abs(dx) <= radius * 0.85)
    if shape == "triangle":
        return (dy <= radius * 0.8) & (dy >= -radius) & (np.abs(dx) <= (dy + radius) * 0.6)
    return np.abs(dy) + np.abs(dx) <= radius


def render_clip(
    spec: ClipSpec, num_frames: int, size: tuple[int, int], rng: np.random.Generator
) -> np.ndarray:
    """RGB uint8 frames (F, H, W, 3): the shape travels 40% of the frame in its direction.

    The path is centred in the frame up to a small random offset, so the shape sits at the
    same places (in the other order) whichever way it moves: one frame cannot tell the
    direction, the order of frames can.
    """
    height, width = size
    radius = min(height, width) / 5
    (step_y, step_x) = DIRECTIONS[spec.direction][0]
    travel_y, travel_x = 0.4 * height * step_y, 0.4 * width * step_x
    slack_y = max(0.0, height - 2 * radius - abs(travel_y))
    slack_x = max(0.0, width - 2 * radius - abs(travel_x))
    # centre of the path, uniform over the positions that keep the shape inside the frame
    mid_y = height / 2 + rng.uniform(-slack_y / 2, slack_y / 2)
    mid_x = width / 2 + rng.uniform(-slack_x / 2, slack_x / 2)
    t = (np.arange(num_frames, dtype=np.float64) / max(num_frames - 1, 1) - 0.5)[:, None, None]
    ys = np.arange(height, dtype=np.float64)[None, :, None]
    xs = np.arange(width, dtype=np.float64)[None, None, :]
    mask = _shape_mask(spec.shape, ys - (mid_y + travel_y * t), xs - (mid_x + travel_x * t), radius)
    frames = np.empty((num_frames, height, width, 3), dtype=np.uint8)
    frames[:] = COLOURS[spec.background]
    frames[mask] = COLOURS[spec.foreground]
    return frames


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
            if i < count:
                spec = w.video(relative, (10 + split_key, i))
            else:
                k = i - count
                w.broken_file(relative, BROKEN_KINDS[k], (20 + split_key, k))
                spec = w.spec(w.rng(30 + split_key, k))
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

    from .cc3m import METADATA_NAMES, image_name

    p = w.params
    (w.root / "metadata").mkdir(parents=True, exist_ok=True)
    for split_key, (split, folder, count) in enumerate(
        (("train", "training", p.num_train), ("val", "validation", p.num_test))
    ):
        rows = []
        for i in range(count + (len(BROKEN_KINDS) if p.broken else 0)):
            url = f"https://example.com/synthetic/cc3m/{split}/{i}.jpg"
            relative = f"{folder}/{image_name(url)}"
            if i < count:
                spec = w.image(relative, (50 + split_key, i))
            else:
                k = i - count
                w.broken_file(relative, BROKEN_KINDS[k], (60 + split_key, k), image=True)
                spec = w.spec(w.rng(70 + split_key, k))
            rows.append({"caption": caption(spec, w.rng(80 + split_key, i), moving=False), "thumbnailUrl": url})
        table = pd.DataFrame(rows)
        table.to_csv(w.root / "metadata" / METADATA_NAMES[split], sep="\t", index=False)


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


def make_synthetic_dataset(
    root: Union[str, os.PathLike],
    layout: str = "msrvtt",
    num_train: int = 600,
    num_test: int = 100,
    num_frames_per_video: int = 20,
    size: Sequence[int] = (80, 80),
    fps: float = 10.0,
    seed: int = 0,
    broken: bool = False,
    num_colours: int = 3,
    num_shapes: int = 2,
) -> Path:
    """Write a synthetic dataset in ``layout``'s real on-disk layout; return its root.

    ``size`` is (height, width), both even. ``num_colours`` (1-5: foreground colours, and up to 3
    background colours) and ``num_shapes`` (1-4) limit the palette. Reuses a finished root made with the same parameters; refuses a
    root that holds anything else.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    height, width = (int(s) for s in size)
    if height % 2 or width % 2 or min(height, width) < 16:
        raise ValueError(f"size must be even and at least 16 px, got {tuple(size)}")
    if num_train < 1 or num_test < 1 or num_frames_per_video < 1:
        raise ValueError("num_train, num_test and num_frames_per_video must all be >= 1")
    if not (1 <= num_colours <= len(FOREGROUNDS) and 1 <= num_shapes <= len(SHAPES)):
        raise ValueError(f"num_colours must be 1-{len(FOREGROUNDS)} and num_shapes 1-{len(SHAPES)}, "
                         f"got {num_colours} and {num_shapes}")
    params = SyntheticParams(layout, num_train, num_test, num_frames_per_video,
                             (height, width), float(fps), seed, bool(broken), num_colours, num_shapes)
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
        {"msrvtt": _write_msrvtt, "webvid": _write_webvid, "cc3m": _write_cc3m}[layout](writer)
        files = sorted(
            p.relative_to(staging).as_posix() for p in staging.rglob("*") if p.is_file()
        )
        manifest = _manifest(params, files, writer.broken)
        manifest["clips"] = writer.specs
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=1))
        if root.exists():
            root.rmdir()  # empty (checked above)
        os.replace(staging, root)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return root


def build_parser() -> argparse.ArgumentParser:
    """Arguments of the synthetic-data command."""
    parser = argparse.ArgumentParser(
        prog="python -m lightning_frozen.data.synthetic",
        description="Write a synthetic text-video dataset in a real layout.",
    )
    parser.add_argument("--root", required=True, help="folder to create (new or empty)")
    parser.add_argument("--layout", choices=LAYOUTS, default="msrvtt")
    parser.add_argument("--num-train", type=int, default=600)
    parser.add_argument("--num-test", type=int, default=100)
    parser.add_argument("--num-frames", type=int, default=20, help="frames per video")
    parser.add_argument("--size", type=int, nargs=2, default=(80, 80), metavar=("H", "W"))
    parser.add_argument("--fps", type=float, default=10.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--broken", action="store_true", help="add missing/empty/truncated/non-video entries")
    parser.add_argument("--colours", type=int, default=3, help="colours per role, 1-5 (few: direction matters)")
    parser.add_argument("--shapes", type=int, default=2, help="number of shapes (1-4)")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> Path:
    args = build_parser().parse_args(argv)
    root = make_synthetic_dataset(
        args.root, args.layout, args.num_train, args.num_test, args.num_frames,
        tuple(args.size), args.fps, args.seed, args.broken, args.colours, args.shapes,
    )
    print(f"synthetic {args.layout} dataset ready at {root}")
    return root


if __name__ == "__main__":
    main()
