"""Throughput, FLOPs, MFU and memory of the video tower, the full training step and embedding.

One measurement is a *cell*: ``WHAT.MODE:BATCH:PRECISION:COMPILE``, for example
``tower.train:64:bf16:eager``.

* WHAT: ``tower`` (the video tower, fast path), ``tower-ref`` (the same weights through the
  straightforward reference path, ``models/space_time_reference.py``: the baseline),
  ``vit`` (timm's plain ``vit_base_patch16_224`` at 448 px: 785 tokens, as 4 x 196 + 1, the
  ceiling a plain ViT of the same size reaches), ``dual`` (both towers, DistilBERT geometry
  by default, NormSoftmax on the cosine similarity matrix).
* MODE: ``train`` (forward + backward; for ``dual`` also an AdamW step, fused on CUDA: the
  full training step) or ``infer`` (eval, ``inference_mode``: for ``dual`` the forward-only
  embedding of clips and captions).
* PRECISION: ``bf16`` (autocast, as Lightning's bf16-mixed), ``tf32`` (fp32 weights and
  activations, TF32 matmuls: ``float32_matmul_precision("high")``, training's default on CUDA),
  ``fp32`` (strict fp32, ``"highest"``). On a CPU tf32 is fp32.
* COMPILE: ``eager``, ``compiled`` (``torch.compile(dynamic=False)``, ``--compile-mode``).

For each cell: clips/s (median step), FLOPs per step counted analytically and with
``FlopCounterMode`` (both reported; the analytic count is the one used), achieved TFLOP/s,
MFU against a square-matmul peak measured in the same run in the cell's precision, and peak
memory. Cells run in the order given and the JSON is rewritten after every cell, so a run cut
short keeps what it measured. Cells of one ``--plan`` group are timed interleaved, step by
step, so that on a shared machine they see the same load. ``--plan gpu`` is the GPU table in
priority order (``benchmarks/gpu.sh`` runs it); ``--plan cpu`` compares the fast path with the
reference on a CPU. It is a benchmark, never a test: nothing is asserted.

    python benchmarks/model_throughput.py --plan cpu --depth 2 4 --batch 4 --threads 2
    python benchmarks/model_throughput.py --device cuda --plan gpu --budget-s 540
"""
from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import json
import math
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # random weights only: the DistilBERT geometry builds offline
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from lightning_frozen.losses import NormSoftmaxLoss  # noqa: E402
from lightning_frozen.models import FrozenInTime  # noqa: E402
from lightning_frozen.models.config import arch_geometry, arch_names  # noqa: E402
from lightning_frozen.models.space_time import SpaceTimeTransformer  # noqa: E402
from lightning_frozen.models.space_time_reference import ReferenceTower  # noqa: E402

WHATS = ("tower", "tower-ref", "vit", "dual")
MODES = ("train", "infer")
PRECISIONS = ("bf16", "tf32", "fp32")
COMPILES = ("eager", "compiled")
DEFAULT_JSON = ROOT / "benchmarks" / "results" / "model_throughput.json"


@dataclass(frozen=True)
class Cell:
    what: str
    mode: str
    batch: int
    precision: str
    compile: str
    depth: int
    checkpointing: bool = False

    @classmethod
    def parse(cls, spec: str, depth: int) -> "Cell":
        """``WHAT.MODE:BATCH:PRECISION:COMPILE[:ckpt]``."""
        parts = spec.split(":")
        try:
            what, mode = parts[0].split(".")
            cell = cls(what, mode, int(parts[1]), parts[2], parts[3], depth, parts[4:] == ["ckpt"])
        except (ValueError, IndexError):
            raise SystemExit(f"cell {spec!r}: expected WHAT.MODE:BATCH:PRECISION:COMPILE[:ckpt], "
                             "e.g. tower.train:64:bf16:eager") from None
        for value, allowed in ((what, WHATS), (mode, MODES), (cell.precision, PRECISIONS), (cell.compile, COMPILES)):
            if value not in allowed:
                raise SystemExit(f"cell {spec!r}: {value!r} is not one of {allowed}")
        return cell

    @property
    def name(self) -> str:
        ckpt = ":ckpt" if self.checkpointing else ""
        return f"{self.what}.{self.mode}:{self.batch}:{self.precision}:{self.compile}{ckpt} depth={self.depth}"


def gpu_plan() -> list[list[str]]:
    """The GPU table, most important first (each inner list is timed as one group): the five cells
    the issue asks first, then cheap eager cells, then compiled ones (a minute or two of compiling each)."""
    first = ["tower.train:64:bf16:eager", "tower.train:64:bf16:compiled", "vit.train:64:bf16:eager",
             "dual.train:64:bf16:eager", "dual.infer:64:bf16:eager"]
    then = ["tower-ref.train:64:bf16:eager", "tower.train:64:tf32:eager", "tower-ref.train:64:tf32:eager",
            "dual.train:64:tf32:eager", "dual.train:256:bf16:eager:ckpt", "vit.train:64:bf16:compiled",
            "dual.train:64:bf16:compiled", "dual.infer:64:bf16:compiled", "tower.train:64:tf32:compiled"]
    rest = [f"{w}:{b}:{p}:{c}" for c in COMPILES for w in ("tower.train", "dual.train", "dual.infer")
            for p in ("bf16", "tf32") for b in (32, 64, 128)]
    seen: set[str] = set()
    return [[s] for s in first + then + rest if not (s in seen or seen.add(s))]


def cpu_plan(batch: int) -> list[list[str]]:
    """The fast path against the reference on a CPU, training and inference."""
    return [[f"tower-ref.{m}:{batch}:fp32:eager", f"tower.{m}:{batch}:fp32:eager"] for m in MODES]


# ----------------------------------------------------------------------------- options


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    what = p.add_mutually_exclusive_group()
    what.add_argument("--plan", choices=("gpu", "cpu"), help="a prepared list of cells (default: cpu on a CPU, "
                      "else gpu)")
    what.add_argument("--cells", nargs="+", help="cells WHAT.MODE:BATCH:PRECISION:COMPILE[:ckpt], each its own group")
    g = p.add_argument_group("model")
    g.add_argument("--arch", default="base_patch16_224", choices=arch_names(), help="video tower geometry")
    g.add_argument("--depth", type=int, nargs="+", default=None, help="video blocks (several: each cell per depth)")
    g.add_argument("--frames", type=int, default=4)
    g.add_argument("--text", default="distilbert-base-uncased", help="text encoder (random weights; DistilBERT "
                   "builds offline), e.g. the bundled MiniLM's directory")
    g.add_argument("--text-len", type=int, default=32, help="caption length in tokens")
    r = p.add_argument_group("run")
    r.add_argument("--batch", type=int, default=4, help="batch of --plan cpu")
    r.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    r.add_argument("--threads", type=int, default=None, help="torch intra-op threads (CPU)")
    r.add_argument("--steps", type=int, default=None, help="timed steps per cell (default CUDA 20, CPU 5)")
    r.add_argument("--warmup", type=int, default=None, help="untimed steps per cell (default CUDA 3, CPU 1)")
    r.add_argument("--compile-mode", default="default", choices=("default", "max-autotune"))
    r.add_argument("--compile-backend", default=None, help="torch.compile backend (default inductor; --quick: "
                   "aot_eager, which compiles in seconds)")
    r.add_argument("--peak-size", type=int, default=None, help="square matmul for the peak (CPU 2048, CUDA 8192)")
    r.add_argument("--budget-s", type=float, default=None, help="start no new cell after this many seconds "
                   "(the first cell always runs)")
    r.add_argument("--quick", action="store_true", help="a smoke run: tiny geometry, 1 step, small batches")
    r.add_argument("--json", type=Path, default=DEFAULT_JSON)
    return p.parse_args(argv)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda but torch sees no CUDA device")
    return torch.device(name)


# ----------------------------------------------------------------------------- models and steps


def video_geometry(args: argparse.Namespace, depth: int) -> dict[str, int]:
    geometry = {"img_size": 32, "patch_size": 16, "embed_dim": 64, "num_heads": 2} if args.quick else \
        arch_geometry(args.arch)
    geometry["depth"] = depth
    return geometry


def build(cell: Cell, args: argparse.Namespace, device: torch.device) -> nn.Module:
    """The cell's model with random weights (nothing is downloaded)."""
    torch.manual_seed(0)
    geometry = video_geometry(args, cell.depth)
    if cell.what == "vit":
        import timm

        size = geometry["img_size"] * 2
        model = timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=0, img_size=size,
                                  **({"embed_dim": 64, "num_heads": 2, "depth": cell.depth} if args.quick else {}))
    elif cell.what == "dual":
        overrides = {"num_hidden_layers": 1, "hidden_size": 64, "num_attention_heads": 2, "intermediate_size": 128,
                     "hidden_dim": 128} if args.quick else {}
        model = FrozenInTime(video={"arch": None, **geometry, "num_frames": args.frames,
                                    "grad_checkpointing": cell.checkpointing},
                             text={"name_or_path": args.text, "pretrained": False, "config_overrides": overrides})
    else:
        model = SpaceTimeTransformer(**geometry, num_frames=args.frames, grad_checkpointing=cell.checkpointing)
        if cell.what == "tower-ref":
            model = ReferenceTower(model)
    return model.to(device)


def make_inputs(cell: Cell, args: argparse.Namespace, model: nn.Module, device: torch.device) -> dict[str, Tensor]:
    g = torch.Generator().manual_seed(0)
    size = video_geometry(args, cell.depth)["img_size"]
    if cell.what == "vit":
        return {"image": torch.randn(cell.batch, 3, 2 * size, 2 * size, generator=g).to(device)}
    out = {"video": torch.randn(cell.batch, args.frames, 3, size, size, generator=g).to(device)}
    if cell.what == "dual":
        ids = torch.randint(1000, model.text_model.config.vocab_size, (cell.batch, args.text_len), generator=g)
        out.update(input_ids=ids.to(device), attention_mask=torch.ones_like(ids).to(device))
    return out


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


@contextlib.contextmanager
def matmul_precision(precision: str) -> Iterator[None]:
    """TF32 matmuls for `tf32` cells, strict fp32 otherwise (the setting is restored after)."""
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high" if precision == "tf32" else "highest")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(before)


def make_step(cell: Cell, model: nn.Module, inputs: dict[str, Tensor], device: torch.device,
              args: argparse.Namespace) -> Callable[[], None]:
    """One step of the cell; compiled cells wrap the model (not the optimizer) in torch.compile."""
    model.train(cell.mode == "train")
    run = model
    if cell.compile == "compiled":
        mode = None if args.compile_mode == "default" else args.compile_mode
        run = torch.compile(model, dynamic=False, mode=mode, backend=args.compile_backend)
    amp = lambda: autocast(device, cell.precision)  # noqa: E731

    if cell.what == "dual":
        loss_fn = NormSoftmaxLoss(0.05)
        args = (inputs["video"], inputs["input_ids"], inputs["attention_mask"])
        if cell.mode == "infer":
            def step() -> None:
                with torch.inference_mode(), amp():
                    run(*args)
            return step
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6, fused=device.type == "cuda")

        def step() -> None:
            with amp():
                text, video = run(*args)
                loss = loss_fn(FrozenInTime.similarity(text, video))
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        return step

    x = next(iter(inputs.values()))
    if cell.mode == "infer":
        def step() -> None:
            with torch.inference_mode(), amp():
                run(x)
        return step

    def step() -> None:
        with amp():
            out = run(x)
        out.float().square().mean().backward()
        model.zero_grad(set_to_none=True)
    return step


# ----------------------------------------------------------------------------- FLOPs


def _linear(rows: int, fan_in: int, fan_out: int) -> int:
    return 2 * rows * fan_in * fan_out


def tower_forward_flops(b: int, f: int, g: dict[str, int], cls_only_last: bool) -> int:
    """Divided space-time tower: patch embedding, blocks (the last CLS-only on the fast path); matmuls only."""
    d, n = g["embed_dim"], (g["img_size"] // g["patch_size"]) ** 2
    t = 1 + f * n
    cls = 4 * b * t * d  # the CLS query against every token
    time = _linear(b * t, d, 3 * d) + _linear(b * t, d, d) + cls + 4 * b * n * f * (f + 1) * d  # + position groups
    space = _linear(b * t, d, 3 * d) + _linear(b * t, d, d) + cls + 4 * b * f * n * (n + 1) * d  # + frame groups
    block = time + space + _linear(b * t, d, 4 * d) * 2
    # the last block's CLS-only space attention (its query, every token's keys and values) and MLP
    last = time + 2 * _linear(b, d, d) + _linear(b * t, d, 2 * d) + cls + _linear(b, d, 4 * d) * 2
    blocks = block * (g["depth"] - 1) + (last if cls_only_last else block)
    return blocks + _linear(b * f * n, 3 * g["patch_size"] ** 2, d)


def vit_forward_flops(b: int, g: dict[str, int]) -> int:
    """Plain ViT at twice the side (4x the patches): patch embedding and blocks with full attention."""
    d, n = g["embed_dim"], (2 * g["img_size"] // g["patch_size"]) ** 2
    t = 1 + n
    block = _linear(b * t, d, 3 * d) + _linear(b * t, d, d) + 4 * b * t * t * d + _linear(b * t, d, 4 * d) * 2
    return block * g["depth"] + _linear(b * n, 3 * g["patch_size"] ** 2, d)


def text_forward_flops(b: int, length: int, config: Any) -> int:
    """BERT-family encoder (DistilBERT calls the FFN width hidden_dim), matmuls only."""
    h, rows = config.hidden_size, b * length
    ffn = getattr(config, "hidden_dim", None) or config.intermediate_size
    layer = 4 * _linear(rows, h, h) + 4 * b * length * length * h + 2 * _linear(rows, h, ffn)
    return config.num_hidden_layers * layer


def analytic_flops(cell: Cell, args: argparse.Namespace, model: nn.Module) -> int:
    """FLOPs of one step: forward, plus twice that for backward (the patch embedding once: pixels need no grad)."""
    g, b = video_geometry(args, cell.depth), cell.batch
    images = b * (4 if cell.what == "vit" else args.frames)  # the plain ViT's images have 4x the patches
    patch = _linear(images * (g["img_size"] // g["patch_size"]) ** 2, 3 * g["patch_size"] ** 2, g["embed_dim"])
    if cell.what == "vit":
        fwd = vit_forward_flops(b, g)
    else:
        fwd = tower_forward_flops(b, args.frames, g, cls_only_last=cell.what != "tower-ref")
    if cell.what == "dual":
        video_proj, text_proj = model.vid_proj[0], model.txt_proj[1]
        fwd += text_forward_flops(b, args.text_len, model.text_model.config)
        fwd += _linear(b, video_proj.in_features, video_proj.out_features)
        fwd += _linear(b, text_proj.in_features, text_proj.out_features) + 2 * b * b * text_proj.out_features
    return fwd if cell.mode == "infer" else 3 * fwd - patch


def _sdpa_cpu_flops(query: tuple, key: tuple, value: tuple, *args: Any, out_shape: Any = None, **kwargs: Any) -> int:
    *bh, q_len, d = query
    return 2 * math.prod(bh) * q_len * key[-2] * (d + value[-1])


def _sdpa_cpu_backward_flops(grad_out: tuple, query: tuple, key: tuple, value: tuple, *args: Any,
                             out_shape: Any = None, **kwargs: Any) -> int:
    return 2 * _sdpa_cpu_flops(query, key, value)


def counted_flops(step: Callable[[], None]) -> int:
    """FLOPs of one call of `step` by FlopCounterMode (matmuls, convolutions, attention; the CPU
    flash-attention kernels, which torch's counter does not know, added here)."""
    aten = torch.ops.aten
    mapping = {}
    if hasattr(aten, "_scaled_dot_product_flash_attention_for_cpu"):
        mapping[aten._scaled_dot_product_flash_attention_for_cpu] = _sdpa_cpu_flops
        mapping[aten._scaled_dot_product_flash_attention_for_cpu_backward] = _sdpa_cpu_backward_flops
    counter = FlopCounterMode(display=False, custom_mapping=mapping)
    with counter:
        step()
    return counter.get_total_flops()


# ----------------------------------------------------------------------------- measuring


def progress(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def clock(device: torch.device) -> Callable[[], float]:
    """Wall time, except for one CPU thread: process time, which a loaded shared machine disturbs least."""
    return time.process_time if device.type == "cpu" and torch.get_num_threads() == 1 else time.perf_counter


def timed(step: Callable[[], None], device: torch.device) -> float:
    now = clock(device)
    start = now()
    step()
    synchronize(device)
    return now() - start


def _proc_status_kb(key: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)


@contextlib.contextmanager
def peak_memory(device: torch.device, out: dict[str, Any]) -> Iterator[None]:
    """Peak memory of the block: CUDA allocator peak, or on a CPU the process's VmHWM (after resetting
    it through /proc/self/clear_refs) over its RSS before (after gc and malloc_trim)."""
    if device.type == "cuda":
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        yield
        synchronize(device)
        out.update(peak_mib=torch.cuda.max_memory_allocated(device) / 2**20, method="torch.cuda.max_memory_allocated")
        return
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        method = "VmHWM after clear_refs=5, minus VmRSS before"
    except OSError:
        method = "VmHWM (lifetime: clear_refs not permitted) minus VmRSS before"
    before = _proc_status_kb("VmRSS") / 1024
    yield
    out.update(peak_mib=_proc_status_kb("VmHWM") / 1024 - before, method=method)


def matmul_peak(device: torch.device, precision: str, size: int, repeats: int = 10) -> float:
    """FLOP/s of the fastest of `repeats` square matmuls in the precision's compute dtype."""
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    g = torch.Generator().manual_seed(1)
    a, b = (torch.randn(size, size, generator=g).to(device, dtype) for _ in range(2))
    inner = 1 if device.type == "cpu" else 20
    with matmul_precision(precision):
        def step() -> None:
            for _ in range(inner):
                torch.mm(a, b)
        step()
        best = min(timed(step, device) for _ in range(repeats))
    return 2 * size**3 * inner / best


@dataclass
class Prepared:
    cell: Cell
    step: Callable[[], None]
    result: dict[str, Any]


def prepare(cell: Cell, args: argparse.Namespace, device: torch.device) -> Prepared:
    """Build, count FLOPs, warm up (compiling, for compiled cells) and take the peak memory of one step."""
    model = build(cell, args, device)
    inputs = make_inputs(cell, args, model, device)
    result: dict[str, Any] = {"cell": cell.name, "what": cell.what, "mode": cell.mode, "batch": cell.batch,
                              "precision": cell.precision, "compile": cell.compile, "depth": cell.depth,
                              "grad_checkpointing": cell.checkpointing}
    with matmul_precision(cell.precision):
        flops_step = make_step(Cell(**{**vars(cell), "compile": "eager"}), model, inputs, device, args)
        result["flops_counted"] = counted_flops(flops_step)
        result["flops_analytic"] = analytic_flops(cell, args, model)
        step = make_step(cell, model, inputs, device, args)
        first = time.perf_counter()
        step()
        synchronize(device)
        result["first_step_s"] = time.perf_counter() - first  # includes compiling
        for _ in range(args.warmup - 1):
            step()
        with peak_memory(device, result):
            step()
    return Prepared(cell, step, result)


def run_group(cells: list[Cell], args: argparse.Namespace, device: torch.device, peaks: dict[str, float]) -> list[dict]:
    """Prepare every cell of a group, then time them interleaved, step by step."""
    prepared = []
    for cell in cells:
        progress(f"{cell.name}: building, counting FLOPs, warming up")
        prepared.append(prepare(cell, args, device))
    times: dict[int, list[float]] = {i: [] for i in range(len(prepared))}
    for _ in range(args.steps):
        for i, p in enumerate(prepared):
            with matmul_precision(p.cell.precision):
                times[i].append(timed(p.step, device))
    rows = []
    for i, p in enumerate(prepared):
        r = p.result
        median = statistics.median(times[i])
        peak = peaks[p.cell.precision]
        r.update(step_s={"median": median, "min": min(times[i]), "all": times[i]},
                 clips_per_s=p.cell.batch / median, flops_per_s=r["flops_analytic"] / median,
                 matmul_peak_flops_per_s=peak, mfu=r["flops_analytic"] / median / peak,
                 flops_counted_over_analytic=r["flops_counted"] / r["flops_analytic"])
        progress(f"{p.cell.name}: {r['clips_per_s']:.2f} clips/s, MFU {100 * r['mfu']:.1f}%, "
                 f"peak {r['peak_mib']:.0f} MiB")
        rows.append(r)
    del prepared
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    torch._dynamo.reset()
    return rows


def embedding_agreement(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """Smallest per-embedding cosine of bf16-autocast and TF32 embeddings against strict fp32 (eval)."""
    cell = Cell("dual", "infer", 16 if not args.quick else 4, "fp32", "eager", args.depth[0])
    model = build(cell, args, device).eval()
    inputs = make_inputs(cell, args, model, device)
    batch = (inputs["video"], inputs["input_ids"], inputs["attention_mask"])
    out: dict[str, Any] = {"batch": cell.batch}
    with torch.inference_mode():
        with matmul_precision("fp32"):
            ref = model(*batch)
        for precision in ("bf16", "tf32"):
            with matmul_precision(precision), autocast(device, precision):
                low = model(*batch)
            out[precision] = {name: F.cosine_similarity(r.float(), x.float(), dim=-1).min().item()
                              for name, r, x in zip(("text", "video"), ref, low)}
    return out


# ----------------------------------------------------------------------------- reporting


def machine_info(device: torch.device) -> dict[str, Any]:
    info: dict[str, Any] = {"torch": torch.__version__, "python": platform.python_version(), "device": str(device),
                            "threads": torch.get_num_threads(), "cpu_count": os.cpu_count()}
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.partition(":")[2].strip()
                break
    if device.type == "cuda":
        info.update(gpu=torch.cuda.get_device_name(device), cuda=torch.version.cuda,
                    gpu_memory_gib=torch.cuda.get_device_properties(device).total_memory / 2**30)
    return info


def print_table(rows: list[dict[str, Any]]) -> None:
    tera = any(r["matmul_peak_flops_per_s"] > 1e12 for r in rows)
    unit, scale = ("TF/s", 1e12) if tera else ("GF/s", 1e9)
    head = ("cell", "depth", "clips/s", unit, "MFU %", "peak MiB", "counted/analytic", "first step s")
    lines = [(r["cell"].split(" ")[0], str(r["depth"]), f"{r['clips_per_s']:.2f}", f"{r['flops_per_s'] / scale:.1f}",
              f"{100 * r['mfu']:.1f}", f"{r['peak_mib']:.0f}", f"{r['flops_counted_over_analytic']:.3f}",
              f"{r['first_step_s']:.1f}") for r in rows]
    widths = [max(len(h), *(len(x[i]) for x in lines)) for i, h in enumerate(head)]
    fmt = "  ".join(f"{{:>{w}}}" for w in widths)
    print(fmt.format(*head))
    for line in lines:
        print(fmt.format(*line))


def speedups(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Fast path over reference, for cells that differ only in that."""
    def key(r: dict[str, Any]) -> tuple:
        return r["mode"], r["batch"], r["precision"], r["compile"], r["depth"], r["grad_checkpointing"]

    ref = {key(r): r for r in rows if r["what"] == "tower-ref"}
    out = []
    for r in rows:
        if r["what"] == "tower" and key(r) in ref:
            base = ref[key(r)]
            out.append({"mode": r["mode"], "batch": r["batch"], "precision": r["precision"], "compile": r["compile"],
                        "depth": r["depth"], "fast_over_reference": r["clips_per_s"] / base["clips_per_s"],
                        "fast_over_reference_min_step": base["step_s"]["min"] / r["step_s"]["min"]})
    return out


def main(argv: Optional[list[str]] = None) -> dict[str, Any]:
    args = parse_args(argv)
    started = time.perf_counter()
    device = resolve_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    cuda = device.type == "cuda"
    args.steps = args.steps or (1 if args.quick else 20 if cuda else 5)
    args.warmup = args.warmup or (1 if args.quick or not cuda else 3)
    args.depth = args.depth or ([2] if args.quick else [12 if cuda else 2])
    args.compile_backend = args.compile_backend or ("aot_eager" if args.quick else "inductor")
    plan = [[s] for s in args.cells] if args.cells else \
        (gpu_plan() if (args.plan or ("gpu" if cuda else "cpu")) == "gpu" else cpu_plan(args.batch))
    if args.quick:  # small batches, so that a dry run of a whole plan takes seconds per cell
        plan = [[":".join([s.split(":")[0], str(min(int(s.split(":")[1]), 4)), *s.split(":")[2:]]) for s in group]
                for group in plan]
    groups = [[Cell.parse(s, d) for s in group] for d in args.depth for group in plan]
    size = args.peak_size or (8192 if cuda else 256 if args.quick else 2048)
    precisions = sorted({c.precision for group in groups for c in group})
    report: dict[str, Any] = {
        "benchmark": "model_throughput", "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
        "machine": machine_info(device), "run": {"steps": args.steps, "warmup": args.warmup, "frames": args.frames,
                                                 "text": args.text, "text_len": args.text_len,
                                                 "compile_mode": args.compile_mode, "arch": args.arch,
                                                 "compile_backend": args.compile_backend,
                                                 "timer": "process_time" if clock(device) is time.process_time
                                                 else "perf_counter", "quick": args.quick},
        "matmul_peak_flops_per_s": {}, "cells": [], "not_run": [], "speedups": [],
    }

    def save() -> None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=1))

    for precision in precisions:
        report["matmul_peak_flops_per_s"][precision] = matmul_peak(device, precision, size)
        progress(f"{precision} matmul peak {report['matmul_peak_flops_per_s'][precision] / 1e9:.1f} GFLOP/s")
    save()
    for i, group in enumerate(groups):
        if i > 0 and args.budget_s is not None and time.perf_counter() - started > args.budget_s:
            report["not_run"] = [c.name for g in groups[i:] for c in g]
            progress(f"budget of {args.budget_s:.0f} s spent: {len(report['not_run'])} cells not run")
            break
        try:
            report["cells"] += run_group(group, args, device, report["matmul_peak_flops_per_s"])
        except torch.cuda.OutOfMemoryError as err:
            report.setdefault("failed", []).append({"cells": [c.name for c in group], "error": str(err)[:300]})
            torch.cuda.empty_cache()
        report["speedups"] = speedups(report["cells"])
        report["elapsed_s"] = time.perf_counter() - started
        save()
        if i == min(4, len(groups) - 1) and "agreement" not in report:
            report["agreement"] = embedding_agreement(args, device)
            progress(f"min cosine against fp32: {report['agreement']}")
            save()
    save()
    print(f"\n{report['machine'].get('gpu', report['machine'].get('cpu', device))}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, {args.frames} frames, medians of {args.steps} steps")
    print_table(report["cells"])
    for s in report["speedups"]:
        print(f"fast path / reference, {s['mode']} batch {s['batch']} {s['precision']} {s['compile']} depth "
              f"{s['depth']}: x{s['fast_over_reference']:.3f} (median), x{s['fast_over_reference_min_step']:.3f} (min)")
    if "agreement" in report:
        print(f"embeddings, min cosine against strict fp32: {report['agreement']}")
    print(f"wrote {args.json}")
    return report


if __name__ == "__main__":
    main()
