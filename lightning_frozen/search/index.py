"""`lightning-frozen index`: embed a folder of videos as overlapping windows into a search index.

    lightning-frozen index --ckpt runs/demo/.../stage1-4f-best.ckpt --videos my_videos --out my_index

Embedding is ``predict``'s own path: ``Trainer.predict(FrozenModule, FrozenDataModule)`` over
the windows (``WindowBatches``), the DataModule's evaluation transform on the device, and a
prediction writer that commits whole videos (on one device or several, DDP). Re-running is
incremental: unchanged files are skipped, new ones added, changed ones re-embedded, deleted
ones dropped. Videos are committed in groups (one SQLite transaction per group of about
``--batch-size`` windows) formed the same way whether a run starts fresh or resumes, so killing
it at any moment and re-running gives the same rows and embeddings as one uninterrupted run.
Unreadable files are recorded with their reason, counted and listed; they never stop the run.

The folder ``--out`` is the run's own: its manifest says what made it from which inputs, a
lock keeps a second run out while one writes, and everything is checked before anything is
written. Links that leave the folder are refused unless ``--follow-links``.
"""
from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence, Union

from ..data.folder import VIDEO_EXTENSIONS
from . import ann, store
from .arguments import Parser, non_negative_int, positive_float, positive_int
from .store import EmbeddingSettings, FolderLock, Manifest, VideoRecord
from .windows import WindowBatches, decode_video

PathLike = Union[str, os.PathLike]
THUMB_SIZE = 128
LINK_OUTSIDE = "a link to a file outside the indexed folder (index --follow-links follows it)"
FOLDER_LINK_OUTSIDE = "a link to a folder outside the indexed folder (index --follow-links follows it)"
BROKEN_LINK = "a broken link (its target does not exist)"


@dataclass
class IndexSummary:
    """What a run did, and what the index holds afterwards."""

    videos: int = 0            # readable videos in the index
    windows: int = 0           # windows in the index
    embedded: int = 0          # readable videos (re)embedded by this run
    unchanged: int = 0
    removed: int = 0
    found: int = 0             # video files (and links) under the folder
    clips_per_second: float = 0.0
    seconds: float = 0.0
    unreadable: list[tuple[str, str]] = field(default_factory=list)  # (path, reason), all in the index
    index_kind: str = ""

    def report(self) -> str:
        lines = [f"index: {self.videos} videos, {self.windows} windows ({self.index_kind}); this run embedded "
                 f"{self.embedded}, kept {self.unchanged} unchanged, removed {self.removed} "
                 f"({self.clips_per_second:.1f} clips/s, {self.seconds:.1f} s)"]
        if self.unreadable:
            lines.append(f"{len(self.unreadable)} file(s) could not be indexed:")
            lines += [f"  {path}: {reason}" for path, reason in self.unreadable]
        return "\n".join(lines)

    def why_empty(self, root: PathLike) -> str:
        """Why an index holds no video (for the run's exit message)."""
        if not self.found:
            return f"found no video files under '{root}' (looked for {', '.join(VIDEO_EXTENSIONS)})"
        links = sum("--follow-links" in reason for _, reason in self.unreadable)
        hint = (f"; {links} of them lead out of '{root}' through links: run again with --follow-links to index them"
                if links else "")
        return f"indexed no video: none of the {self.found} file(s) found could be indexed (listed above){hint}"


# -- what to index ------------------------------------------------------------------------------

def scan_folder(root: Path, follow_links: bool) -> tuple[dict[str, tuple[int, int]], dict[str, tuple[tuple, str]]]:
    """(videos: relative path -> (size, mtime_ns), refused: relative path -> ((-1, mtime_ns), reason)).

    Files are found by extension (``data.folder.VIDEO_EXTENSIONS``) and named by their path
    under ``root`` as given, links included. Without ``follow_links`` a link to a file or
    folder outside ``root`` is refused (named, with the option); with it, links are followed
    and every folder is walked once (a link back up the tree does not loop). A refused
    entry's size is -1, so turning the option on or off re-examines it on the next run.
    """
    wanted = {e.lower() for e in VIDEO_EXTENSIONS}
    real_root = root.resolve()
    found: dict[str, tuple[int, int]] = {}
    refused: dict[str, tuple[tuple, str]] = {}
    walked: set[tuple[int, int]] = set()

    def refuse(path: Path, reason: str, suffix: str = "") -> None:
        refused[path.relative_to(root).as_posix() + suffix] = ((-1, os.lstat(path).st_mtime_ns), reason)

    for directory, folders, files in os.walk(root, followlinks=follow_links):
        here = Path(directory)
        folders.sort()  # walked in name order: a folder reached twice is always indexed under the same path
        if follow_links:
            stat = os.stat(here)
            if (stat.st_dev, stat.st_ino) in walked:
                folders[:] = []
                continue
            walked.add((stat.st_dev, stat.st_ino))
        else:
            for name in folders:
                if (here / name).is_symlink() and not (here / name).resolve().is_relative_to(real_root):
                    refuse(here / name, FOLDER_LINK_OUTSIDE, "/")
        for name in files:
            path = here / name
            if name.startswith(".") or path.suffix.lower() not in wanted:
                continue
            if path.is_symlink() and not path.exists():
                refuse(path, BROKEN_LINK)
            elif path.is_symlink() and not follow_links and not path.resolve().is_relative_to(real_root):
                refuse(path, LINK_OUTSIDE)
            else:
                stat = os.stat(path)
                found[path.relative_to(root).as_posix()] = (stat.st_size, stat.st_mtime_ns)
    return found, refused


# -- the model -----------------------------------------------------------------------------------

def read_model_config(value: Optional[str]) -> Optional[dict[str, Any]]:
    """A preset name or a YAML file (a LightningCLI config's ``model:`` section, or its keys) as a dict."""
    from ..models import ModelConfig

    if value is None:
        return None
    path = Path(value)
    if path.suffix in (".yaml", ".yml", ".json") or path.is_file():
        import yaml

        if not path.is_file():
            raise FileNotFoundError(f"--model-config '{value}' not found")
        data = yaml.safe_load(path.read_text()) or {}
        data = data.get("model", data)
        data = data.get("init_args", data)
        return ModelConfig.from_dict(data).to_dict()
    return ModelConfig.from_name(value).to_dict()


def load_module(checkpoint: PathLike, model_config: Optional[str] = None) -> tuple[Any, dict]:
    """(``FrozenModule`` holding the checkpoint's weights, the DataModule settings the checkpoint records).

    The file is read once (restricted unpickler); our ``.ckpt`` records the model config, a
    published ``.pth.tar`` needs ``model_config`` (a preset or a YAML config).
    """
    from ..models import ModelConfig, load_checkpoint, safe_torch_load
    from ..module import FrozenModule

    path = Path(checkpoint)
    if not path.is_file():
        raise FileNotFoundError(f"--ckpt '{checkpoint}' not found")
    contents = safe_torch_load(path)
    if model_config is not None:
        config = ModelConfig.from_dict(read_model_config(model_config))
    else:
        try:
            config = ModelConfig.from_checkpoint(contents, path.name)
        except ValueError:
            raise ValueError(f"--ckpt {path.name} does not record its model config: give --model-config (a preset such "
                             "as stformer_b_16_224, or a YAML config with a model: section)") from None
    module = FrozenModule(video=config.video, text=config.text, projection_dim=config.projection_dim)
    load_checkpoint(module.model, contents, name=path.name)
    data = contents.get("datamodule_hyper_parameters") if isinstance(contents, dict) else None
    return module, dict(data or {})


def fingerprint(model: Any) -> str:
    """sha256 over every tensor of the model (name, dtype, shape, bytes): the weights' identity."""
    import torch

    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        value = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{value.dtype}:{tuple(value.shape)}".encode())
        digest.update(value.view(torch.uint8).numpy().tobytes() if value.numel() else b"")
    return digest.hexdigest()


def embedding_settings(module: Any, input_res: int, window_seconds: Optional[float] = None,
                       stride_seconds: Optional[float] = None, frames: Optional[int] = None) -> EmbeddingSettings:
    """Settings fitted to the model: its frame count, one second per frame per window, half-window stride."""
    model_frames = module.model.video_config.num_frames
    frames = model_frames if frames is None else frames
    if not 1 <= frames <= model_frames:
        raise ValueError(f"--frames must be from 1 to the model's {model_frames} frames per clip, got {frames}")
    window = float(window_seconds if window_seconds is not None else frames)
    stride = float(stride_seconds if stride_seconds is not None else window / 2)
    if not (window > 0 and stride > 0):
        raise ValueError(f"--window-seconds and --stride-seconds must be > 0, got {window:g} and {stride:g}")
    return EmbeddingSettings(window_seconds=window, stride_seconds=stride, frames=int(frames), input_res=input_res,
                             decode_size=max(input_res, THUMB_SIZE), thumb_size=THUMB_SIZE)


# -- the folder ------------------------------------------------------------------------------------

def check_out_folder(out: Path, videos_root: str) -> Optional[Manifest]:
    """The manifest of an index of this same folder at ``out``; None for a new or empty folder; else refused."""
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"--out '{out}' is a file: give a folder for the index")
    if (out / store.MANIFEST).is_file():
        existing = Manifest.read(out)
        store.check_same_folder(existing, videos_root, out)
        return existing
    if out.is_dir() and any(entry.name != store.LOCK for entry in out.iterdir()):
        raise FileExistsError(f"--out '{out}' is not empty and holds no search index (no {store.MANIFEST}); refusing "
                              "to write into it: choose a new or empty folder")
    return None


@contextlib.contextmanager
def _lightning_quiet() -> Iterator[None]:
    """Lightning's notes on which accelerators exist, and that an iterable dataset has no batch
    indices (the writer needs none), say nothing a user of `index` acts on."""
    from ..quiet import quiet_library_output

    quiet_library_output()
    logger = logging.getLogger("pytorch_lightning.utilities.rank_zero")
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Couldn't infer the batch indices")
            yield
    finally:
        logger.setLevel(level)


def build_index(videos: PathLike, out: PathLike, checkpoint: Optional[PathLike] = None,
                model_config: Optional[str] = None, *, module: Any = None,
                window_seconds: Optional[float] = None, stride_seconds: Optional[float] = None,
                frames: Optional[int] = None, batch_size: int = 16, num_workers: int = 0,
                progress: bool = True, approximate_above: int = ann.APPROXIMATE_ABOVE,
                devices: int = 1, accelerator: str = "auto", follow_links: bool = False) -> IndexSummary:
    """Index (or update the index of) every video under ``videos`` into the folder ``out``.

    Give ``checkpoint`` (our ``.ckpt``; a published ``.pth.tar`` with ``model_config``, a preset
    name or a YAML file) or a ``module`` (a ``FrozenModule`` with its weights). ``devices`` > 1
    embeds with DDP on that many devices of ``accelerator``. Returns an ``IndexSummary``.
    """
    started = time.perf_counter()
    for name, value, least in (("batch_size", batch_size, 1), ("num_workers", num_workers, 0),
                               ("devices", devices, 1)):
        if value < least:
            raise ValueError(f"{name} must be >= {least}, got {value}")
    if frames is not None and frames < 1:
        raise ValueError(f"--frames must be >= 1 (or left out: the model's own), got {frames}")
    root, out = Path(os.path.abspath(videos)), Path(out)
    if not root.is_dir():
        raise NotADirectoryError(f"--videos '{videos}' is not a folder")
    existing = check_out_folder(out, str(root))
    if (checkpoint is None) == (module is None):
        raise ValueError("build_index needs a checkpoint or a module (one of them)")
    source = str(Path(checkpoint).resolve()) if checkpoint is not None else ""
    data: dict = {}
    if module is None:
        module, data = load_module(checkpoint, model_config)
    module.weights_from_checkpoint()  # its weights are the ones indexed: Lightning must not load others
    model = module.model
    settings = embedding_settings(module, int(data.get("input_res") or model.video_config.geometry()["img_size"]),
                                  window_seconds, stride_seconds, frames)
    text = {"name": data.get("tokenizer") or model.text_config.name_or_path,
            "max_length": data.get("max_length"), "padding": data.get("padding") or "longest"}
    manifest = Manifest(checkpoint=source, fingerprint=fingerprint(model), model_config=_model_config(module),
                        model_config_source=model_config, embedding_dim=int(module.hparams.projection_dim),
                        settings=settings, videos_root=str(root), follow_links=follow_links,
                        tokenizer={"max_length": text["max_length"], "padding": text["padding"]})
    if existing is not None:
        existing.check_same(manifest, out)
    from ..data.datamodule import FrozenDataModule
    from ..tokenizer import build_tokenizer
    from .writer import IndexWriter

    def datamodule(paths: list[str]) -> FrozenDataModule:
        return FrozenDataModule(predict_dataset=WindowBatches(root, paths, settings, batch_size, num_workers),
                                tokenizer=text["name"], max_length=text["max_length"], padding=text["padding"],
                                input_res=settings.input_res, eval_batch_size=batch_size)

    datamodule([])  # checks the data settings, as the tokenizer and Lightning the devices, before any write
    tokenizer = build_tokenizer(text["name"])
    writer = IndexWriter(out, progress)
    with _lightning_quiet():
        trainer = _trainer(devices, accelerator, writer)
    out.mkdir(parents=True, exist_ok=True)
    with FolderLock(out):
        _claim(out, manifest, model, tokenizer)
        db = store.connect(out)
        try:
            store.set_complete(db, False)
            summary = _update(db, root, module, trainer, writer, datamodule, settings, follow_links)
            index = ann.load(out, db, manifest.embedding_dim, approximate_above)
            store.set_complete(db, True)
            summary.index_kind, summary.windows = index.kind, len(index.window_ids)
            summary.videos, summary.unreadable = store.count_videos(db), store.failures(db)
            store.settle(db)
        finally:
            db.close()
    summary.seconds = time.perf_counter() - started
    return summary


def _claim(out: Path, manifest: Manifest, model: Any, tokenizer: Any) -> None:
    """Under the lock: check the folder again (another run may have made it meanwhile), write the
    manifest first (a run killed from here on leaves a folder the next run resumes), then the
    query side if it is missing, damaged or of other tokenizer settings."""
    from .text import damaged_file, save_text_side

    existing = check_out_folder(out, manifest.videos_root)
    if existing is not None:
        existing.check_same(manifest, out)
    intact = existing is not None and existing.tokenizer == manifest.tokenizer and \
        damaged_file(out, existing.files) is None
    manifest.files = existing.files if intact else {}
    manifest.write(out)
    if not intact:
        manifest.files = save_text_side(out, model, tokenizer, manifest.tokenizer)
        manifest.write(out)


def _model_config(module: Any) -> dict:
    from ..models import ModelConfig

    return ModelConfig.from_dict(dict(module.hparams)).to_dict()


def _trainer(devices: int, accelerator: str, writer: Any) -> Any:
    import pytorch_lightning as pl

    return pl.Trainer(accelerator=accelerator, devices=devices, strategy="ddp_spawn" if devices > 1 else "auto",
                      logger=False, enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False, callbacks=[writer])


def _update(db, root: Path, module: Any, trainer: Any, writer: Any, datamodule: Any, settings: EmbeddingSettings,
            follow_links: bool) -> IndexSummary:
    summary = IndexSummary()
    found, refused = scan_folder(root, follow_links)
    on_disk = {**found, **{path: key for path, (key, _) in refused.items()}}
    known = store.known_files(db)
    vanished = sorted(set(known) - set(on_disk))
    changed = {path for path, key in on_disk.items() if known.get(path) != key}
    summary.found, summary.unchanged, summary.removed = len(on_disk), len(on_disk) - len(changed), len(vanished)
    refused_now = [VideoRecord(path, *key, error=reason) for path, (key, reason) in sorted(refused.items())
                   if path in changed]
    if vanished or refused_now:
        store.commit_videos(db, refused_now, drop=vanished)
    pending = sorted(path for path in found if path in changed)
    if not pending:
        return summary
    writer.total = len(pending)
    tick = time.perf_counter()
    with _lightning_quiet():
        trainer.predict(module, datamodule=datamodule(pending), return_predictions=False)
    seconds = time.perf_counter() - tick
    _record_unreadable(db, root, pending, found, settings)
    windows = dict(db.execute("SELECT v.path, COUNT(w.id) FROM videos v JOIN windows w ON w.video_id = v.id "
                              "GROUP BY v.id"))
    summary.embedded = sum(path in windows for path in pending)
    summary.clips_per_second = sum(windows.get(path, 0) for path in pending) / max(seconds, 1e-9)
    return summary


def _record_unreadable(db, root: Path, pending: list[str], found: dict[str, tuple[int, int]],
                       settings: EmbeddingSettings) -> None:
    """Commit the reason of every pending file the run did not commit: the unreadable ones (the
    window batches skip them). A readable one here was lost by a process: the run says so."""
    committed = store.known_files(db)
    records = [decode_video(root, path, settings).record for path in pending if committed.get(path) != found[path]]
    store.commit_videos(db, [r for r in records if r.error is not None])
    lost = [r.path for r in records if r.error is None]
    if lost:
        raise RuntimeError(f"{len(lost)} readable video(s) came back from no process (first: {lost[0]}); "
                           "run index again to add them")


def build_parser() -> Parser:
    parser = Parser(prog="lightning-frozen index", description=__doc__)
    parser.add_argument("--ckpt", required=True, help="our .ckpt, or a published .pth.tar with --model-config")
    parser.add_argument("--model-config", help="preset name (stformer_b_16_224) or a YAML config with a model: section")
    parser.add_argument("--videos", required=True, help="folder of videos (searched recursively)")
    parser.add_argument("--out", required=True, help="index folder (new or empty, or an index of the same --videos)")
    parser.add_argument("--window-seconds", type=positive_float,
                        help="window length (default: one second per model frame)")
    parser.add_argument("--stride-seconds", type=positive_float, help="window step (default: half a window)")
    parser.add_argument("--frames", type=positive_int, help="frames per window (default: the model's)")
    parser.add_argument("--batch-size", type=positive_int, default=16, help="windows per forward pass and per commit")
    parser.add_argument("--num-workers", type=non_negative_int, default=0, help="decoding worker processes")
    parser.add_argument("--devices", type=positive_int, default=1,
                        help="embed on this many devices through Trainer.predict with DDP (spawned processes)")
    parser.add_argument("--accelerator", default="auto", help="cpu, gpu or auto (with --devices)")
    parser.add_argument("--follow-links", action="store_true",
                        help="follow links to files and folders outside --videos (indexed under their path in it)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    summary = build_index(args.videos, args.out, args.ckpt, args.model_config, window_seconds=args.window_seconds,
                          stride_seconds=args.stride_seconds, frames=args.frames, batch_size=args.batch_size,
                          num_workers=args.num_workers, progress=not args.no_progress, devices=args.devices,
                          accelerator=args.accelerator, follow_links=args.follow_links)
    print(summary.report())
    if summary.videos == 0:
        print(f"lightning-frozen index: error: {summary.why_empty(args.videos)}", file=sys.stderr)
        return 1
    return 0
