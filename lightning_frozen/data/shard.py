"""`lightning-frozen shard`: a dataset in its usual layout -> LitData shards for streaming.

    lightning-frozen shard --src data/webvid --layout webvid --dst s3://bucket/webvid-train \\
        [--split train] [--prepare] [--workers 16] [--chunk-bytes 256MB]

Each sample holds the encoded bytes as stored (mp4, or the re-encode of ``prepare`` with
``--prepare``; images as they are for CC3M), the captions, the id and the source path; the
datasets of ``lightning_frozen.data.streaming`` decode them in the DataLoader workers.

Three steps, each one resumable, so a re-run after a kill finishes the job:

1. List the samples with the layout's own dataset class (the same metadata rules as
   training from files) and shuffle them with ``--seed``: WebVid's metadata is ordered by
   page, which would put near-duplicate clips (false negatives) in one batch.
2. Check that every source decodes, all frames, in a process pool (with ``--prepare``,
   re-encode first, through ``prepare_videos`` into the work folder). Unreadable ones are
   listed in the report, counted, and left out of the shards, so nothing has to be skipped
   at training time. Results go to ``checked.jsonl`` in the work folder as they come; a
   re-run checks only what is not in it.
3. ``litdata.optimize`` writes the chunks with ``use_checkpoint=True``: LitData records each
   worker's progress under ``<dst>/.checkpoints`` and a re-run with the same inputs and
   ``--workers`` continues from there (and removes them when done).

The work folder (``--work-dir``) is ``<dst>/.shard`` for a local ``--dst``, and
``.shard-work/<bucket>/<prefix>`` under the current folder for a URL. The report,
``shard_report.json``, is written there and, for a local ``--dst``, next to the shards.

A local ``--dst`` is a folder this command owns (``lightning_frozen.folders``; for a URL, the
work folder carries the marker and the lock): a re-run continues only shards of the same
inputs, a ``--dst`` that already holds finished shards (``index.json``) is never overwritten,
and a folder that is neither empty nor made by this command is refused before anything is
written. Ctrl-C stops the run with one line; a re-run continues it.
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import shutil
import signal
import time
import types
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, NamedTuple, Optional, Sequence, Union
from urllib.parse import urlparse

from ..arguments import ArgumentParser
from ..folders import owned_folder
from .prepare import ignore_interrupts

if TYPE_CHECKING:
    import pandas as pd

# Dataset classes by layout name (imported when a run needs one: `--help` stays light).
LAYOUTS = {"webvid": "WebVid", "cc3m": "ConceptualCaptions3M", "msrvtt": "MSRVTT", "folder": "VideoFolder"}
IMAGE_LAYOUTS = ("cc3m",)
REPORT = "shard_report.json"
CHECKED = "checked.jsonl"
RECORDS = "records.jsonl"
_SAMPLE_OVERHEAD = 256  # bytes of a sample besides its media, captions and path: id, kind, LitData's offsets


@dataclass
class ShardSummary:
    """What a run did; ``broken`` maps source paths (relative to ``--src``) to their error."""

    dst: str
    samples: int = 0
    broken: dict[str, str] = field(default_factory=dict)
    checked_before: int = 0
    seconds: float = 0.0

    def __str__(self) -> str:
        text = (f"{self.samples} samples sharded into {self.dst}; {len(self.broken)} unreadable left out "
                f"({self.checked_before} checks reused from an earlier run, {self.seconds:.1f} s)")
        for path, error in list(self.broken.items())[:20]:
            text += f"\n  LEFT OUT {path}: {error}"
        if len(self.broken) > 20:
            text += f"\n  ... and {len(self.broken) - 20} more (see {REPORT})"
        return text


def is_url(location: Union[str, os.PathLike]) -> bool:
    """A destination LitData writes through a client (s3://, gs://, ...), not a local folder."""
    return "://" in str(location)


def default_work_dir(dst: str) -> Path:
    if not is_url(dst):
        return Path(dst) / ".shard"
    parsed = urlparse(dst)
    return Path(".shard-work") / parsed.netloc / parsed.path.strip("/")


def _check_layout(layout: str, cut: Optional[str], prepare: bool) -> None:
    if layout not in LAYOUTS:
        raise ValueError(f"--layout must be one of {sorted(LAYOUTS)}, got {layout!r}")
    if cut is not None and layout not in ("webvid", "msrvtt"):
        raise ValueError(f"--cut applies to the webvid and msrvtt layouts, not {layout!r}")
    if prepare and layout in IMAGE_LAYOUTS:
        raise ValueError("--prepare re-encodes videos; the cc3m layout holds images, which are sharded as they are")


def source_records(src: Path, layout: str, split: str, cut: Optional[str], metadata: Optional[str]) -> pd.DataFrame:
    """``id``, ``path`` (relative to src) and ``captions`` of every sample, by the layout's dataset class."""
    from .. import data

    _check_layout(layout, cut, prepare=False)
    options: dict[str, Any] = {"split": split}
    if cut is not None:
        options["cut"] = cut
    if metadata is not None:
        options["captions_csv" if layout == "folder" else "metadata_csv"] = metadata
    return getattr(data, LAYOUTS[layout])(src, **options).records


def verify_media(path: Path, image: bool) -> Optional[str]:
    """None if every frame of the file decodes, else why not (the shard-time check)."""
    from .video import VideoReadError, pyav_cause, read_image

    try:
        if image:
            read_image(path)
            return None
        return _verify_video(path)
    except VideoReadError as error:
        return error.cause or str(error)
    except Exception as error:  # PyAV raises av.error.* (OSError) for damaged streams; strerror omits the path
        return pyav_cause(error)


def _verify_video(path: Path) -> Optional[str]:
    import av

    from .video import check_file

    check_file(path, str(path))  # missing, not a file, empty: a VideoReadError with the cause
    with av.open(str(path)) as container:
        if not container.streams.video:
            return "no video stream"
        stream = container.streams.video[0]
        stream.codec_context.thread_count = 1  # one process per core already
        expected = stream.frames
        decoded = sum(1 for _ in container.decode(stream))
    if decoded == 0:
        return "no decodable frames"
    if expected and decoded < expected:
        return f"truncated: {decoded} of the {expected} frames in its header decode"
    return None


class Check(NamedTuple):
    """One source's check: why it cannot be read (None: it can) and its size in bytes."""

    error: Optional[str]
    size: int


def _verify_task(args: tuple[str, str, bool]) -> tuple[str, Check]:
    relative, path, image = args
    error = verify_media(Path(path), image)
    return relative, Check(error, 0 if error else Path(path).stat().st_size)


def check_sources(relatives: list[str], media_root: Path, image: bool, log_path: Path, workers: int,
                  progress: bool) -> tuple[dict[str, Check], int]:
    """The check of every source, and how many came from an earlier run's log (``log_path``)."""
    from tqdm import tqdm

    results = _read_check_log(log_path)
    reused = sum(1 for r in relatives if r in results)
    todo = [(r, str(media_root / r), image) for r in relatives if r not in results]
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "a") as log, tqdm(total=len(todo), desc="checking sources", unit="file",
                                          disable=not progress) as bar:
        if workers > 1 and len(todo) > 1:
            pool = ProcessPoolExecutor(max_workers=min(workers, len(todo)), initializer=ignore_interrupts)
            outcomes = pool.map(_verify_task, todo, chunksize=8)
        else:
            pool, outcomes = None, map(_verify_task, todo)
        try:
            for relative, check in outcomes:
                results[relative] = check
                log.write(json.dumps({"path": relative, **check._asdict()}) + "\n")
                log.flush()
                bar.update()
        finally:  # Ctrl-C: the checks logged so far are kept, the queued ones never start
            if pool is not None:
                pool.shutdown(cancel_futures=True)
    return {r: results[r] for r in relatives}, reused


def _read_check_log(path: Path) -> dict[str, Check]:
    """Results of an earlier run; a last line cut short by a kill is ignored (checked again)."""
    results: dict[str, Check] = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                continue
            results[entry["path"]] = Check(entry["error"], entry["size"])
    return results


_BYTE_UNITS = {"tb": 1000**4, "gb": 1000**3, "mb": 1000**2, "kb": 1000, "t": 1000**4, "g": 1000**3, "m": 1000**2,
               "k": 1000, "b": 1}  # decimal, as LitData reads --chunk-bytes


def byte_count(text: str) -> int:
    """'256MB', '12KB', '1.5G' -> bytes (decimal units, LitData's reading of a chunk size)."""
    raw = text.lower().strip()
    unit = next((u for u in _BYTE_UNITS if raw.endswith(u)), None)
    try:
        size = int(float(raw[: -len(unit)]) * _BYTE_UNITS[unit]) if unit else int(raw)
    except ValueError:
        size = 0
    if size <= 0:
        raise ValueError(f"--chunk-bytes {text!r} is not a size; write it like 256MB, 64KB or 1GB")
    return size


def check_chunk_bytes(chunk_bytes: str, sizes: dict[str, int]) -> None:
    """Every sample (``sizes``: bytes per source path) must fit in a chunk.

    LitData gives a larger sample a chunk of its own, and its checkpoint then counts one input
    too few: a run resumed after a kill just there writes that sample twice (seen with 0.2.76).
    """
    limit = byte_count(chunk_bytes)
    largest = max(sizes, key=sizes.get)
    if sizes[largest] >= limit:
        raise ValueError(
            f"--chunk-bytes {chunk_bytes} does not exceed the largest sample ('{largest}', about {sizes[largest]} "
            "bytes with its captions); raise --chunk-bytes (LitData cannot resume a job exactly when a sample "
            "needs a chunk of its own)"
        )


class ShardSample:
    """The ``optimize`` function: input ``i`` -> sample ``i`` of the records table, with its bytes.

    Inputs are row numbers, not the rows: LitData stores every input in its checkpoint
    configuration, which for WebVid-10M rows would weigh gigabytes. Each worker reads the
    table once.
    """

    def __init__(self, records_path: str, media_root: str, kind: str) -> None:
        self.records_path, self.media_root, self.kind = records_path, media_root, kind
        self._records: Optional[list[dict]] = None

    def __call__(self, row: int) -> dict[str, Any]:
        if self._records is None:
            import pandas as pd

            self._records = pd.read_json(self.records_path, lines=True, dtype=False).to_dict("records")
        record = self._records[row]
        media = (Path(self.media_root) / record["path"]).read_bytes()
        return {"id": str(record["id"]), "path": record["path"], "captions": json.dumps(record["captions"]),
                "kind": self.kind, "media": media}


def _check_destination(dst: str, src: Path) -> None:
    if is_url(dst):
        return
    target = Path(dst).resolve()
    if (target / "index.json").exists():
        raise FileExistsError(
            f"'{dst}' already holds shards (index.json); shards are never overwritten: choose another --dst "
            "or delete that folder"
        )
    if target == src or src in target.parents:
        raise ValueError(f"--dst '{dst}' is inside --src '{src}'; write the shards to a separate folder")


def shard_dataset(
    src: Union[str, os.PathLike],
    layout: str,
    dst: str,
    split: str = "train",
    cut: Optional[str] = None,
    metadata: Optional[str] = None,
    prepare: bool = False,
    workers: Optional[int] = None,
    chunk_bytes: str = "256MB",
    seed: int = 0,
    work_dir: Union[str, os.PathLike, None] = None,
    progress: bool = True,
) -> ShardSummary:
    """Write the LitData shards of one split of a dataset (see the module docstring)."""
    src_path = Path(src).resolve()
    if not src_path.is_dir():
        raise FileNotFoundError(f"--src '{src}' is not a directory")
    _check_destination(dst, src_path)
    _check_layout(layout, cut, prepare)
    if workers is not None and workers < 1:
        raise ValueError(f"--workers must be >= 1, got {workers}")
    byte_count(chunk_bytes)
    workers = max(1, workers or os.cpu_count() or 1)
    work = Path(work_dir) if work_dir is not None else default_work_dir(dst)
    inputs = {"src": str(src_path), "layout": layout, "split": split, "cut": cut, "metadata": metadata,
              "prepare": prepare, "workers": workers, "chunk_bytes": chunk_bytes, "seed": seed}
    # A local --dst carries the marker and the lock; for a URL, the work folder does (it names the URL).
    owner, option = (work, "--work-dir") if is_url(dst) else (Path(dst), "--dst")
    elsewhere = {**inputs, "dst": dst}  # a work folder outside --dst records where the shards go
    with contextlib.ExitStack() as owned:
        owned.enter_context(owned_folder(owner, "lightning-frozen shard", elsewhere if is_url(dst) else inputs, option))
        if owner.resolve() not in [work.resolve(), *work.resolve().parents]:  # a --work-dir outside --dst
            owned.enter_context(owned_folder(work, "lightning-frozen shard", elsewhere, "--work-dir"))
        return _shard(src_path, layout, dst, split, cut, metadata, prepare, workers, chunk_bytes, seed, work,
                      progress)


def _shard(src: Path, layout: str, dst: str, split: str, cut: Optional[str], metadata: Optional[str], prepare: bool,
           workers: int, chunk_bytes: str, seed: int, work: Path, progress: bool) -> ShardSummary:
    import litdata

    from .prepare import prepare_videos

    started = time.perf_counter()
    image = layout in IMAGE_LAYOUTS
    records = source_records(src, layout, split, cut, metadata)
    records = records.sample(frac=1.0, random_state=seed).reset_index(drop=True)
    media_root, broken = src, {}
    if prepare:
        media_root = work / "prepared"
        prepared = prepare_videos(src, media_root, workers=workers, progress=progress)
        broken.update({path: f"prepare: {error}" for path, error in prepared.failed.items()})
    checks, reused = check_sources([p for p in records["path"] if p not in broken], media_root, image,
                                   work / (f"prepared-{CHECKED}" if prepare else CHECKED), workers, progress)
    broken.update({path: check.error for path, check in checks.items() if check.error is not None})
    good = records[~records["path"].isin(broken)].reset_index(drop=True)
    summary = ShardSummary(dst=dst, samples=len(good), broken=dict(sorted(broken.items())), checked_before=reused)
    if len(good) == 0:
        _write_report(summary, layout, split, work, dst)
        raise ValueError(f"no readable samples in '{src}' ({len(broken)} unreadable); see {work / REPORT}")
    check_chunk_bytes(chunk_bytes, {row.path: checks[row.path].size + len(json.dumps(row.captions)) + len(row.path)
                                    + _SAMPLE_OVERHEAD for row in good.itertuples()})
    records_path = work / RECORDS
    good[["id", "path", "captions"]].to_json(records_path, orient="records", lines=True)
    with interruptible():
        litdata.optimize(
            fn=ShardSample(str(records_path), str(media_root), "image" if image else "video"),
            inputs=list(range(len(good))),
            output_dir=dst,
            chunk_bytes=byte_count(chunk_bytes),  # read once, as the check above read it
            num_workers=min(workers, len(good)),
            use_checkpoint=True,
            start_method=multiprocessing.get_start_method(),  # LitData would force "spawn" on the whole process
            verbose=progress,
        )
    if not is_url(dst) and not (Path(dst) / "index.json").is_file():
        raise RuntimeError(f"LitData returned without writing {Path(dst) / 'index.json'}")
    if prepare:
        shutil.rmtree(media_root)  # the shards hold the re-encoded bytes now
    summary.seconds = time.perf_counter() - started
    _write_report(summary, layout, split, work, dst)
    return summary


@contextlib.contextmanager
def interruptible() -> Iterator[None]:
    """Ctrl-C during ``litdata.optimize`` stops the run as it stops any other command.

    LitData answers SIGINT by ending its processes with ``os._exit(0)``: a stopped run looked like
    a finished one to the shell and to scripts. While it runs, its workers (forked) end quietly
    instead, and this process raises KeyboardInterrupt (`lightning-frozen` prints one line and exits
    with code 130). The chunks written so far stay in LitData's checkpoints: a re-run continues.
    """
    from litdata.processing import data_processor

    main = os.getpid()

    def on_interrupt(signum: int, frame: Any) -> None:
        if os.getpid() != main:
            os._exit(130)
        raise KeyboardInterrupt

    def install(signum: int, handler: Any) -> Any:
        return signal.signal(signum, on_interrupt if signum == signal.SIGINT else handler)

    library, handler = data_processor.signal, signal.getsignal(signal.SIGINT)
    data_processor.signal = types.SimpleNamespace(**{**vars(signal), "signal": install})
    try:
        yield
    finally:
        data_processor.signal = library
        signal.signal(signal.SIGINT, handler)


def _write_report(summary: ShardSummary, layout: str, split: str, work: Path, dst: str) -> None:
    report = json.dumps({"layout": layout, "split": split, **asdict(summary)}, indent=1)
    (work / REPORT).write_text(report)
    if not is_url(dst) and Path(dst).is_dir():
        (Path(dst) / REPORT).write_text(report)


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog="lightning-frozen shard",
        description="Write LitData shards of a dataset (one split) for streaming training, locally or to "
                    "object storage (s3://, gs://).",
    )
    parser.add_argument("--src", required=True, help="dataset root in its usual layout (never written)")
    parser.add_argument("--layout", required=True, choices=sorted(LAYOUTS))
    parser.add_argument("--dst", required=True, help="output folder or URL (s3://bucket/prefix)")
    parser.add_argument("--split", default="train", choices=("train", "val", "test"))
    parser.add_argument("--cut", default=None, help="webvid: 2M/10M (metadata file name); msrvtt: jsfusion/miech/full")
    parser.add_argument("--metadata", default=None, help="metadata CSV (webvid, cc3m) or captions CSV (folder)")
    parser.add_argument("--prepare", action="store_true", help="re-encode videos as `lightning-frozen prepare` does")
    parser.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    parser.add_argument("--chunk-bytes", default="256MB", help="chunk size, e.g. 64MB or 256MB")
    parser.add_argument("--seed", type=int, default=0, help="shuffle of the samples before sharding")
    parser.add_argument("--work-dir", default=None, help="check log, records and report (see the docs)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> ShardSummary:
    args = build_parser().parse_args(argv)
    summary = shard_dataset(
        args.src, args.layout, args.dst, split=args.split, cut=args.cut, metadata=args.metadata,
        prepare=args.prepare, workers=args.workers, chunk_bytes=args.chunk_bytes, seed=args.seed,
        work_dir=args.work_dir, progress=not args.quiet,
    )
    print(summary)
    return summary
