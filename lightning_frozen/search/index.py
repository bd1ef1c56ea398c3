"""`lightning-frozen index`: embed a folder of videos as overlapping windows into a search index.

    lightning-frozen index --ckpt runs/demo/.../stage1-4f-best.ckpt --videos my_videos --out my_index

Re-running is incremental: unchanged files are skipped, new ones added, changed ones
re-embedded, deleted ones dropped. Videos are committed in groups (one SQLite transaction
per group of about ``--batch-size`` windows, whole videos only), and groups are formed the
same way whether a run starts fresh or resumes, so killing it at any moment and re-running
gives the same rows and embeddings as one uninterrupted run. Unreadable files are recorded
with their reason, counted and listed; they never stop the run.
"""
from __future__ import annotations

import argparse
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Optional, Sequence, Union

from torch.utils.data import DataLoader

from ..data.folder import find_videos
from . import ann, store
from .encoder import Encoder, load_encoder, read_model_config
from .store import EmbeddingSettings, Manifest
from .windows import VideoWindows, split_embeddings, stack_clips

PathLike = Union[str, os.PathLike]
VIDEO_EXTENSIONS = (".mp4", ".webm", ".mkv", ".avi", ".mov", ".m4v")
THUMB_SIZE = 128


@dataclass
class IndexSummary:
    """What a run did, and what the index holds afterwards."""

    videos: int = 0            # readable videos in the index
    windows: int = 0           # windows in the index
    embedded: int = 0          # readable videos (re)embedded by this run
    unchanged: int = 0
    removed: int = 0
    clips_per_second: float = 0.0
    seconds: float = 0.0
    unreadable: list[tuple[str, str]] = field(default_factory=list)  # (path, reason), all in the index
    index_kind: str = ""

    def report(self) -> str:
        lines = [f"index: {self.videos} videos, {self.windows} windows ({self.index_kind}); this run embedded "
                 f"{self.embedded}, kept {self.unchanged} unchanged, removed {self.removed} "
                 f"({self.clips_per_second:.1f} clips/s, {self.seconds:.1f} s)"]
        if self.unreadable:
            lines.append(f"{len(self.unreadable)} unreadable file(s), skipped:")
            lines += [f"  {path}: {reason}" for path, reason in self.unreadable]
        return "\n".join(lines)


def default_settings(encoder: Encoder, window_seconds: Optional[float] = None, stride_seconds: Optional[float] = None,
                     frames: Optional[int] = None) -> EmbeddingSettings:
    """Settings fitted to the model: its frame count, one frame a second per window, half-window stride."""
    frames = frames or encoder.model.video_config.num_frames
    window = float(window_seconds if window_seconds is not None else frames)
    stride = float(stride_seconds if stride_seconds is not None else window / 2)
    if frames < 1 or window <= 0 or stride <= 0:
        raise ValueError(f"frames, window and stride must be positive, got {frames}, {window} s, {stride} s")
    return EmbeddingSettings(window_seconds=window, stride_seconds=stride, frames=int(frames),
                             input_res=encoder.input_res, decode_size=max(encoder.input_res, THUMB_SIZE),
                             thumb_size=THUMB_SIZE)


def open_index_folder(out: Path, manifest: Manifest) -> None:
    """Create the folder with its manifest, or check that an existing index was made the same way."""
    if (out / store.MANIFEST).is_file():
        Manifest.read(out).check_same(manifest, out)
        return
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"'{out}' is not empty and holds no search index; refusing to write into it "
                              "(choose a new or empty --out)")
    out.mkdir(parents=True, exist_ok=True)
    manifest.write(out)


def groups(videos: Iterable[Any], batch_size: int,
           windows_of: Callable[[Any], int] = lambda v: 0 if v.clips is None else len(v.clips)) -> Iterator[list]:
    """Whole videos, gathered until they hold ``batch_size`` windows: one commit each.

    A group depends only on the videos from where it starts, so a resumed run (which starts
    at the first uncommitted video) forms the same groups, and embeds the same batches, as
    an uninterrupted one.
    """
    group: list = []
    windows = 0
    for video in videos:
        group.append(video)
        windows += windows_of(video)
        if windows >= batch_size:
            yield group
            group, windows = [], 0
    if group:
        yield group


def build_index(videos: PathLike, out: PathLike, checkpoint: Optional[PathLike] = None,
                model_config: Optional[Union[str, dict]] = None, *, encoder: Optional[Encoder] = None,
                window_seconds: Optional[float] = None, stride_seconds: Optional[float] = None,
                frames: Optional[int] = None, batch_size: int = 16, num_workers: int = 0,
                progress: bool = True, approximate_above: int = ann.APPROXIMATE_ABOVE,
                devices: int = 1, accelerator: str = "auto") -> IndexSummary:
    """Index (or update the index of) every video under ``videos`` into the folder ``out``.

    Give ``checkpoint`` (our ``.ckpt``; a published ``.pth.tar`` with ``model_config``, a preset
    name or a dict) or an ``encoder`` already loaded. ``devices`` > 1 embeds through Lightning's
    ``Trainer.predict`` with DDP on that many devices of ``accelerator``. Returns an ``IndexSummary``.
    """
    started = time.perf_counter()
    root, out = Path(videos), Path(out)
    if not root.is_dir():
        raise NotADirectoryError(f"--videos '{root}' is not a folder")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if encoder is None:
        if checkpoint is None:
            raise ValueError("build_index needs a checkpoint or an encoder")
        config = read_model_config(model_config) if isinstance(model_config, str) else model_config
        encoder = load_encoder(checkpoint, config)
    settings = default_settings(encoder, window_seconds, stride_seconds, frames)
    manifest = Manifest(checkpoint=encoder.checkpoint, fingerprint=encoder.fingerprint, model_config=encoder.config,
                        embedding_dim=encoder.embedding_dim, settings=settings, videos_root=str(root.resolve()))
    open_index_folder(out, manifest)
    db = store.connect(out)
    try:
        summary = _update(db, root, encoder, settings, batch_size, num_workers, progress, devices, accelerator)
        index = ann.load(out, db, encoder.embedding_dim, approximate_above)
        summary.index_kind = index.kind
        summary.windows = len(index.window_ids)
        summary.videos = db.execute("SELECT COUNT(*) FROM videos WHERE error IS NULL").fetchone()[0]
        summary.unreadable = store.failures(db)
    finally:
        db.close()
    summary.seconds = time.perf_counter() - started
    return summary


def _update(db, root: Path, encoder: Encoder, settings: EmbeddingSettings, batch_size: int, num_workers: int,
            progress: bool, devices: int = 1, accelerator: str = "auto") -> IndexSummary:
    summary = IndexSummary()
    on_disk = {p: os.stat(root / p) for p in find_videos(root, VIDEO_EXTENSIONS)}
    known = store.known_files(db)
    vanished = sorted(set(known) - set(on_disk))
    pending = sorted(p for p, st in on_disk.items() if known.get(p) != (st.st_size, st.st_mtime_ns))
    summary.unchanged = len(on_disk) - len(pending)
    summary.removed = len(vanished)
    if vanished:
        store.commit_videos(db, [], drop=vanished)
    if devices > 1:
        return _update_from_devices(db, root, pending, encoder, settings, batch_size, num_workers, devices,
                                    accelerator, summary)
    loader = DataLoader(VideoWindows(root, pending, settings), batch_size=None, num_workers=num_workers)
    bar = _progress(len(pending), progress)
    embedded_clips, embed_seconds = 0, 0.0
    for group in groups(iter(loader), batch_size):
        tick = time.perf_counter()
        clips = stack_clips(group)
        split_embeddings(group, encoder.encode_clips(clips, batch_size))
        store.commit_videos(db, [v.record for v in group])
        embed_seconds += time.perf_counter() - tick
        embedded_clips += len(clips)
        summary.embedded += sum(v.clips is not None for v in group)
        if bar is not None:
            bar.update(len(group))
            bar.set_postfix(clips_per_s=f"{embedded_clips / max(bar.format_dict['elapsed'], 1e-9):.1f}")
    if bar is not None:
        bar.close()
    summary.clips_per_second = embedded_clips / max(embed_seconds, 1e-9) if embedded_clips else 0.0
    return summary


def _update_from_devices(db, root: Path, pending: list[str], encoder: Encoder, settings: EmbeddingSettings,
                         batch_size: int, num_workers: int, devices: int, accelerator: str,
                         summary: IndexSummary) -> IndexSummary:
    """Embed on ``devices`` processes (``Trainer.predict``, DDP), then commit in a single run's groups."""
    from .distributed import embed_with_trainer

    tick = time.perf_counter()
    records = embed_with_trainer(root, pending, settings, encoder, batch_size, num_workers, devices, accelerator,
                                 Path(db.execute("PRAGMA database_list").fetchone()[2]).parent / "parts")
    clips = 0
    for group in groups(records, batch_size, lambda r: len(r.spans)):
        store.commit_videos(db, group)
        clips += sum(len(r.spans) for r in group)
        summary.embedded += sum(r.error is None for r in group)
    summary.clips_per_second = clips / max(time.perf_counter() - tick, 1e-9)
    return summary


def _progress(total: int, enabled: bool):
    if not enabled or total == 0:
        return None
    from tqdm import tqdm

    return tqdm(total=total, unit="video", desc="indexing", dynamic_ncols=True)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lightning-frozen index", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", required=True, help="our .ckpt, or a published .pth.tar with --model-config")
    parser.add_argument("--model-config", help="preset name (stformer_b_16_224) or a YAML config with a model: section")
    parser.add_argument("--videos", required=True, help="folder of videos (searched recursively)")
    parser.add_argument("--out", required=True, help="index folder (new, or an index made with the same model)")
    parser.add_argument("--window-seconds", type=float, help="window length (default: one second per model frame)")
    parser.add_argument("--stride-seconds", type=float, help="window step (default: half a window)")
    parser.add_argument("--frames", type=int, help="frames per window (default: the model's)")
    parser.add_argument("--batch-size", type=int, default=16, help="windows per forward pass and per commit")
    parser.add_argument("--num-workers", type=int, default=0, help="decoding worker processes")
    parser.add_argument("--devices", type=int, default=1,
                        help="embed on this many devices through Trainer.predict with DDP (spawned processes)")
    parser.add_argument("--accelerator", default="auto", help="cpu, gpu or auto (with --devices)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    summary = build_index(args.videos, args.out, args.ckpt, args.model_config, window_seconds=args.window_seconds,
                          stride_seconds=args.stride_seconds, frames=args.frames, batch_size=args.batch_size,
                          num_workers=args.num_workers, progress=not args.no_progress, devices=args.devices,
                          accelerator=args.accelerator)
    print(summary.report())
    return 0
