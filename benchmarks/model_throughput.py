"""Throughput, FLOPs, MFU and memory of the video tower, the training step, embedding and `fit`.

One measurement is a *cell*. Throughput cells are ``WHAT.MODE:BATCH:PRECISION:COMPILE[:ckpt]``,
for example ``tower.train:64:bf16:eager``:

* WHAT: ``tower`` (the video tower, fast path), ``tower-ref`` (the same weights through the
  straightforward reference path, ``models/space_time_reference.py``: the baseline),
  ``vit`` (timm's plain ``vit_base_patch16_224`` at 448 px: 785 tokens, as 4 x 196 + 1, the
  ceiling a plain ViT of the same size reaches), ``dual`` (both towers, DistilBERT geometry
  by default, NormSoftmax on the cosine similarity matrix).
* MODE: ``train`` (forward + backward; for ``dual`` also an AdamW step, fused on CUDA: the
  full training step) or ``infer`` (eval, ``inference_mode``: for ``dual`` the forward-only
  embedding of clips and captions).
* PRECISION: ``bf16`` (autocast, as Lightning's bf16-mixed), ``tf32`` (fp32 weights and
  activations, TF32 matmuls and convolutions: ``float32_matmul_precision("high")``, training's
  default on CUDA), ``fp32`` (strict fp32: ``"highest"``, cuDNN's TF32 off). On a CPU tf32 is fp32.
* COMPILE: ``eager``, ``compiled`` (``torch.compile(dynamic=False)``, ``--compile-mode``).
* ``:ckpt``: activation checkpointing in every video block.

For each: clips/s (median step), FLOPs per step counted analytically and with
``FlopCounterMode`` (both reported; the analytic count is the one used), achieved TFLOP/s,
MFU against a square-matmul peak measured in the same run in the cell's precision, peak
memory, and the targets that apply (CUDA, the published geometry, batch 64). A cell that
misses a target is profiled on the spot (``torch.profiler``: the top kernels of a few more
steps); ``--quick`` profiles every cell that has targets, so that this path runs on a CPU too.

Other cells: ``exactness`` (the fast attention against the reference on this device: fp32,
batch 2, the output and every gradient within 1e-3 relative), ``agreement`` (bf16 and TF32
embeddings against strict fp32) and ``fit:BATCH:PRECISION:COMPILE`` (``lightning-frozen fit``
itself through FrozenModule on synthetic clips: ``fit_throughput.py``).

Cells run in order, each isolated, and the JSON is rewritten atomically after every one
(``cell_runner.py``): a failing cell, a spent ``--budget-s`` or a kill loses only that cell.
``--plan gpu`` is the GPU table in priority order (``benchmarks/gpu.sh`` runs it); ``--plan
cpu`` compares the fast path with the reference on a CPU, its pairs timed interleaved, step by
step, so that on a shared machine both see the same load. A benchmark, never a test: nothing
is asserted.

    python benchmarks/model_throughput.py --plan cpu --depth 2 4 --batch 4 --threads 2
    python benchmarks/model_throughput.py --device cuda --plan gpu --budget-s 240
"""
from __future__ import annotations

import argparse
import contextlib
import ctypes
import functools
import gc
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # random weights only: the DistilBERT geometry builds offline
for folder in (ROOT, HERE):
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))

from cell_runner import Job, Report, profile_summary, progress, run_jobs  # noqa: E402
from machine import cpu_description  # noqa: E402

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
QUICK_VIDEO = {"img_size": 32, "patch_size": 16, "embed_dim": 64, "num_heads": 2}
QUICK_TEXT = {"num_hidden_layers": 1, "hidden_size": 64, "num_attention_heads": 2, "intermediate_size": 128,
              "hidden_dim": 128}
EXACTNESS_LIMIT = 1e-3  # relative error of the fast attention against the reference, fp32
FIT_TIMEOUT_S = 300  # one fit cell's child process, compiling included
# (WHAT, MODE, PRECISION) -> (figure, ">=" or "<=", bound): they apply on CUDA, at batch 64, published geometry.
TARGETS: dict[tuple[str, str, str], tuple[tuple[str, str, float], ...]] = {
    ("tower", "train", "bf16"): (("clips_per_s", ">=", 550.0), ("mfu", ">=", 0.40), ("peak_mib", "<=", 30 * 1024.0)),
    ("dual", "train", "bf16"): (("clips_per_s", ">=", 450.0), ("peak_mib", "<=", 30 * 1024.0)),
    ("dual", "infer", "bf16"): (("clips_per_s", ">=", 1500.0),),
}
FIT_SHARE_OF_STEP = 0.9  # fit's target: this share of the training step's clips/s (same precision and compile)


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


@dataclass(frozen=True)
class FitCell:
    batch: int
    precision: str
    compile: str
    depth: int

    @classmethod
    def parse(cls, spec: str, depth: int) -> "FitCell":
        """``fit:BATCH:PRECISION:COMPILE``."""
        parts = spec.split(":")
        try:
            cell = cls(int(parts[1]), parts[2], parts[3], depth)
        except (ValueError, IndexError):
            raise SystemExit(f"cell {spec!r}: expected fit:BATCH:PRECISION:COMPILE, e.g. fit:64:bf16:eager") from None
        if len(parts) != 4 or cell.precision not in PRECISIONS or cell.compile not in COMPILES:
            raise SystemExit(f"cell {spec!r}: expected fit:BATCH:{'|'.join(PRECISIONS)}:{'|'.join(COMPILES)}")
        return cell

    @property
    def name(self) -> str:
        return f"fit:{self.batch}:{self.precision}:{self.compile} depth={self.depth}"


def gpu_plan(quick: bool = False) -> list[list[str]]:
    """The GPU table, most important first (each inner list is one job). The eager cells of the
    first five figures and the exactness check take a few minutes together; then the compiled
    tower and `fit` (the rate users get, eager and compiled); then compiled step and embedding
    (a minute or two of compiling each); then the rest. `quick` (a dry run of every kind of
    cell) leaves out the last block, the compiled cells after the second, and the compiled
    training step, which the compiled fit runs too."""
    first = ["tower.train:64:bf16:eager", "vit.train:64:bf16:eager", "dual.train:64:bf16:eager",
             "dual.infer:64:bf16:eager", "exactness"]
    compiled = ["tower.train:64:bf16:compiled", "fit:64:bf16:eager", "fit:64:bf16:compiled",
                "dual.train:64:bf16:compiled", "dual.infer:64:bf16:compiled"]
    then = ["agreement", "dual.train:256:bf16:eager:ckpt", "tower-ref.train:64:bf16:eager",
            "tower.train:64:tf32:eager", "tower-ref.train:64:tf32:eager", "dual.train:64:tf32:eager",
            "vit.train:64:bf16:compiled", "tower.train:64:tf32:compiled"]
    rest = [f"{w}:{b}:{p}:{c}" for c in COMPILES for w in ("tower.train", "dual.train", "dual.infer")
            for p in ("bf16", "tf32") for b in (32, 64, 128)]
    if quick:
        compiled.remove("dual.train:64:bf16:compiled")
        then, rest = [s for s in then if not s.endswith(":compiled")], []
    return [[s] for s in dict.fromkeys(first + compiled + then + rest)]


def cpu_plan(batch: int) -> list[list[str]]:
    """The fast path against the reference on a CPU, training and inference."""
    return [[f"tower-ref.{m}:{batch}:fp32:eager", f"tower.{m}:{batch}:fp32:eager"] for m in MODES]


def quick_plan(plan: list[list[str]]) -> list[list[str]]:
    """Batches of at most 4 (so that a dry run takes seconds per cell), repeated cells dropped."""
    def small(spec: str) -> str:
        parts = spec.split(":")
        if len(parts) > 1 and parts[1].isdigit():
            parts[1] = str(min(int(parts[1]), 4))
        return ":".join(parts)

    return [list(group) for group in dict.fromkeys(tuple(small(s) for s in group) for group in plan)]


# ----------------------------------------------------------------------------- options


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    what = p.add_mutually_exclusive_group()
    what.add_argument("--plan", choices=("gpu", "cpu"), help="a prepared list of cells (default: cpu on a CPU, "
                      "else gpu)")
    what.add_argument("--cells", nargs="+", help="cells, each its own job: WHAT.MODE:BATCH:PRECISION:COMPILE[:ckpt], "
                      "exactness, agreement, fit:BATCH:PRECISION:COMPILE")
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
    r.add_argument("--threads", type=int, default=None, help="torch intra-op threads (CPU; --quick: 1)")
    r.add_argument("--steps", type=int, default=None, help="timed steps per cell (default CUDA 20, CPU 5)")
    r.add_argument("--warmup", type=int, default=None, help="untimed steps per cell (default CUDA 3, CPU 1)")
    r.add_argument("--compile-mode", default="default", choices=("default", "max-autotune"))
    r.add_argument("--compile-backend", default=None, help="torch.compile backend (default inductor; --quick: "
                   "aot_eager, which compiles in seconds)")
    r.add_argument("--peak-size", type=int, default=None, help="square matmul for the peak (CPU 2048, CUDA 8192)")
    r.add_argument("--budget-s", type=float, default=None, help="start no new cell after this many seconds "
                   "(the first always runs)")
    r.add_argument("--quick", action="store_true", help="a dry run: tiny geometry, 1 step, batches of at most 4, "
                   "compiling with aot_eager")
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
    geometry = dict(QUICK_VIDEO) if args.quick else arch_geometry(args.arch)
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
                                  depth=cell.depth, **({"embed_dim": 64, "num_heads": 2} if args.quick else {}))
    elif cell.what == "dual":
        model = FrozenInTime(video={"arch": None, **geometry, "num_frames": args.frames,
                                    "grad_checkpointing": cell.checkpointing},
                             text={"name_or_path": args.text, "pretrained": False,
                                   "config_overrides": QUICK_TEXT if args.quick else {}})
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
    """TF32 in matmuls and cuDNN convolutions (the patch embedding) for `tf32` cells, strict fp32
    otherwise, whatever the process's defaults (cuDNN's is TF32); both are restored after."""
    cudnn = torch.backends.cudnn
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high" if precision == "tf32" else "highest")
    try:
        with cudnn.flags(enabled=cudnn.enabled, benchmark=cudnn.benchmark, deterministic=cudnn.deterministic,
                         allow_tf32=precision == "tf32"):
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
    result: dict[str, Any] = {"what": cell.what, "mode": cell.mode, "batch": cell.batch,
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


# ----------------------------------------------------------------------------- cells


@dataclass
class Bench:
    """What every cell of a run shares: options, device, the report, a scratch folder, matmul peaks."""

    args: argparse.Namespace
    device: torch.device
    report: Report
    workdir: Path
    peaks: dict[str, float] = field(default_factory=dict)

    def peak(self, precision: str) -> float:
        """The matmul peak of `precision`, measured on first use and recorded in the report."""
        if precision not in self.peaks:
            size = self.args.peak_size or (8192 if self.device.type == "cuda" else 256 if self.args.quick else 2048)
            self.peaks[precision] = matmul_peak(self.device, precision, size)
            self.report.data["matmul_peak_flops_per_s"] = dict(self.peaks)
            progress(f"{precision} matmul peak {self.peaks[precision] / 1e9:.1f} GFLOP/s")
        return self.peaks[precision]

    def targets_apply(self, depth: int, batch: int) -> bool:
        """Targets hold for the published model at batch 64 on CUDA (not for --quick or other geometries)."""
        a = self.args
        return (self.device.type == "cuda" and not a.quick and a.arch == "base_patch16_224" and depth == 12
                and batch == 64 and a.frames == 4 and a.text == "distilbert-base-uncased" and a.text_len == 32)

    def profile_steps(self) -> int:
        return 1 if self.args.quick else 3


def check_targets(targets: tuple[tuple[str, str, float], ...], figures: dict[str, Any]) -> list[dict[str, Any]]:
    """Each target against the cell's figure."""
    out = []
    for figure, op, bound in targets:
        value = figures[figure]
        out.append({"figure": figure, "bound": f"{op} {bound:g}", "value": value,
                    "met": value >= bound if op == ">=" else value <= bound})
    return out


def profile_cell(p: Prepared, bench: Bench) -> dict[str, Any]:
    """Where the time of a few more steps goes (``torch.profiler``): the top CPU operators and GPU kernels."""
    cuda = bench.device.type == "cuda"
    activities = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if cuda else [])
    steps = bench.profile_steps()
    with matmul_precision(p.cell.precision), torch.profiler.profile(activities=activities) as prof:
        for _ in range(steps):
            p.step()
        synchronize(bench.device)
    return profile_summary(prof.key_averages(), cuda, steps)


def run_group(cells: list[Cell], bench: Bench) -> list[dict[str, Any]]:
    """Prepare every cell of a group, time them interleaved, step by step; then targets and profiles."""
    args, device = bench.args, bench.device
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
        r, cell = p.result, p.cell
        median = statistics.median(times[i])
        peak = bench.peak(cell.precision)
        r.update(step_s={"median": median, "min": min(times[i]), "all": times[i]},
                 clips_per_s=cell.batch / median, flops_per_s=r["flops_analytic"] / median,
                 matmul_peak_flops_per_s=peak, mfu=r["flops_analytic"] / median / peak,
                 flops_counted_over_analytic=r["flops_counted"] / r["flops_analytic"])
        targets = TARGETS.get((cell.what, cell.mode, cell.precision), ())
        if targets and bench.targets_apply(cell.depth, cell.batch):
            r["targets"] = check_targets(targets, r)
        if (targets and args.quick) or not all(t["met"] for t in r.get("targets", [])):
            try:
                r["profile"] = profile_cell(p, bench)
            except Exception as error:  # noqa: BLE001  a profiler failure must not cost the figures above
                r["profile_error"] = f"{type(error).__name__}: {error}"
        missed = [f"{t['figure']} {t['value']:.3g} (target {t['bound']})" for t in r.get("targets", []) if not t["met"]]
        progress(f"{cell.name}: {r['clips_per_s']:.2f} clips/s, MFU {100 * r['mfu']:.1f}%, peak {r['peak_mib']:.0f} MiB"
                 + (f"; missed: {', '.join(missed)}" if missed else ""))
        rows.append(r)
    return rows


def relative_error(got: Tensor, expected: Tensor) -> float:
    """||got - expected|| / ||expected|| in float64 (0 when both are zero)."""
    diff = torch.linalg.vector_norm((got.double() - expected.double())).item()
    scale = torch.linalg.vector_norm(expected.double()).item()
    return diff / scale if scale > 0 else (0.0 if diff == 0 else math.inf)


def exactness(bench: Bench) -> dict[str, Any]:
    """The fast divided attention against the reference path on this device: strict fp32, batch 2,
    the output and the gradients of the input and of every parameter (time attention drawn, not zero)."""
    args, device = bench.args, bench.device
    geometry = video_geometry(args, args.depth[0])
    torch.manual_seed(0)
    tower = SpaceTimeTransformer(**geometry, num_frames=args.frames, time_init="rand").to(device).train()
    g = torch.Generator().manual_seed(0)
    clip = torch.randn(2, args.frames, 3, geometry["img_size"], geometry["img_size"], generator=g).to(device)
    weights = torch.randn(2, geometry["embed_dim"], generator=g).to(device)

    def output_and_grads(forward: Callable[[Tensor], Tensor]) -> dict[str, Tensor]:
        tower.zero_grad(set_to_none=True)
        video = clip.clone().requires_grad_(True)
        out = forward(video)
        (out * weights).sum().backward()
        return {"output": out.detach(), "input": video.grad,
                **{name: p.grad for name, p in tower.named_parameters()}}

    with matmul_precision("fp32"):
        fast, reference = output_and_grads(tower), output_and_grads(ReferenceTower(tower))
    missing = sorted(name for name in reference if reference[name] is None or fast[name] is None)
    if missing:
        raise RuntimeError(f"no gradient for {missing}")
    errors = {name: relative_error(fast[name], reference[name]) for name in reference}
    gradients = {name: e for name, e in errors.items() if name != "output"}
    worst = max(gradients, key=gradients.get)
    figures = {"device": str(device), "precision": "fp32", "batch": 2, "frames": args.frames, "depth": args.depth[0],
               "limit": EXACTNESS_LIMIT, "output_rel": errors["output"], "worst_gradient": worst,
               "worst_gradient_rel": gradients[worst], "tensors": len(errors),
               "passed": all(e <= EXACTNESS_LIMIT for e in errors.values())}
    print(exactness_line(figures), flush=True)
    return figures


def exactness_line(f: dict[str, Any]) -> str:
    return (f"exactness, fast attention against the reference on {f['device']} (fp32, batch {f['batch']}, "
            f"{f['tensors']} tensors): output {f['output_rel']:.1e}, worst gradient {f['worst_gradient']} "
            f"{f['worst_gradient_rel']:.1e} relative: {'PASS' if f['passed'] else 'FAIL'} (limit {f['limit']:g})")


def embedding_agreement(bench: Bench) -> dict[str, Any]:
    """Smallest per-embedding cosine of bf16-autocast and TF32 embeddings against strict fp32 (eval)."""
    args, device = bench.args, bench.device
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
    progress(f"min cosine against fp32: {out}")
    return out


def fit_cell(cell: FitCell, bench: Bench) -> dict[str, Any]:
    """`lightning-frozen fit` on synthetic clips (fit_throughput.py); its target is set by `derived`."""
    from fit_throughput import run_fit

    args, device = bench.args, bench.device
    quick = args.quick
    figures = run_fit(
        bench.workdir, device=device.type, batch=cell.batch, precision=cell.precision,
        compile="off" if cell.compile == "eager" else args.compile_mode, compile_backend=args.compile_backend,
        video={"arch": None, **video_geometry(args, cell.depth), "num_frames": args.frames}, text=args.text,
        text_overrides=QUICK_TEXT if quick else {}, text_len=args.text_len, warmup=args.warmup, timed=args.steps,
        profile_steps=bench.profile_steps(), frame_size=32 if quick else 112,
        workers=1 if quick else max(1, min(14, (os.cpu_count() or 2) - 2)), timeout_s=FIT_TIMEOUT_S)
    figures.update(batch=cell.batch, precision=cell.precision, compile=cell.compile, depth=cell.depth)
    progress(f"{cell.name}: {figures['clips_per_s']:.2f} clips/s, first step {figures['first_step_s']:.1f} s, "
             f"data wait {figures['data_wait_s'] or 0:.2f} s")
    return figures


def derived(bench: Bench) -> None:
    """Figures computed from several cells, refreshed after every job: the fast path over the
    reference, and fit against the training step of the same batch, precision and compile."""
    report = bench.report
    report.data["speedups"] = speedups(report.records("throughput"))
    for fit in report.records("fit"):
        step = next((r for r in report.records("throughput") if r["what"] == "dual" and r["mode"] == "train"
                     and not r["grad_checkpointing"] and all(r[k] == fit[k] for k in
                                                             ("batch", "precision", "compile", "depth"))), None)
        fit["step_clips_per_s"] = step and step["clips_per_s"]
        if step and bench.targets_apply(fit["depth"], fit["batch"]):
            fit["targets"] = check_targets((("clips_per_s", ">=", FIT_SHARE_OF_STEP * step["clips_per_s"]),), fit)


def free_memory(bench: Bench) -> None:
    gc.collect()
    if bench.device.type == "cuda":
        torch.cuda.empty_cache()
    torch._dynamo.reset()


def one(function: Callable[..., dict[str, Any]], *args: Any) -> list[dict[str, Any]]:
    return [function(*args)]


def make_jobs(plan: list[list[str]], bench: Bench) -> list[Job]:
    """One job per group of the plan (throughput groups once per --depth)."""
    depths = bench.args.depth
    jobs = []
    for group in plan:
        head = group[0]
        if head == "exactness":
            jobs.append(Job(("exactness",), "exactness", functools.partial(one, exactness, bench)))
        elif head == "agreement":
            jobs.append(Job(("agreement",), "agreement", functools.partial(one, embedding_agreement, bench)))
        elif head.startswith("fit:"):
            fit = FitCell.parse(head, depths[0])
            jobs.append(Job((fit.name,), "fit", functools.partial(one, fit_cell, fit, bench)))
        else:
            for depth in depths:
                cells = [Cell.parse(spec, depth) for spec in group]
                jobs.append(Job(tuple(c.name for c in cells), "throughput", functools.partial(run_group, cells, bench)))
    return jobs


# ----------------------------------------------------------------------------- reporting


def machine_info(device: torch.device) -> dict[str, Any]:
    info: dict[str, Any] = {"torch": torch.__version__, "python": platform.python_version(), "device": str(device),
                            "threads": torch.get_num_threads(), "cpu_count": os.cpu_count()}
    info["cpu"] = cpu_description()
    if device.type == "cuda":
        info.update(gpu=torch.cuda.get_device_name(device), cuda=torch.version.cuda,
                    gpu_memory_gib=torch.cuda.get_device_properties(device).total_memory / 2**30)
    return info


def print_table(rows: list[dict[str, Any]]) -> None:
    if not rows:
        return
    tera = any(r["matmul_peak_flops_per_s"] > 1e12 for r in rows)
    unit, scale = ("TF/s", 1e12) if tera else ("GF/s", 1e9)
    head = ("cell", "depth", "clips/s", unit, "MFU %", "peak MiB", "counted/analytic", "first step s")
    lines = [(r["name"].split(" ")[0], str(r["depth"]), f"{r['clips_per_s']:.2f}", f"{r['flops_per_s'] / scale:.1f}",
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


def print_summary(report: Report) -> None:
    """The table of throughput cells, then the other cells, targets missed and failures, one line each."""
    data = report.data
    machine = data["machine"]
    print(f"\n{machine.get('gpu', machine.get('cpu', machine['device']))}, torch {machine['torch']}, "
          f"{machine['threads']} threads, {data['run']['frames']} frames, medians of {data['run']['steps']} steps")
    print_table(report.records("throughput"))
    for s in data.get("speedups", []):
        print(f"fast path / reference, {s['mode']} batch {s['batch']} {s['precision']} {s['compile']} depth "
              f"{s['depth']}: x{s['fast_over_reference']:.3f} (median), x{s['fast_over_reference_min_step']:.3f} (min)")
    for r in report.records("exactness"):
        print(exactness_line(r))
    for r in report.records("agreement"):
        print(f"embeddings, min cosine against strict fp32: bf16 {r['bf16']}, tf32 {r['tf32']}")
    for r in report.records("fit"):
        wait = "" if r["data_wait_share"] is None else f", data wait {100 * r['data_wait_share']:.1f}%"
        step = "" if r.get("step_clips_per_s") is None else f" (training step {r['step_clips_per_s']:.2f})"
        print(f"{r['name']}: {r['clips_per_s']:.2f} clips/s{step}{wait}, first step {r['first_step_s']:.1f} s")
    for r in report.records():
        for t in r.get("targets", []):
            if not t["met"]:
                print(f"MISSED {r['name']}: {t['figure']} {t['value']:.4g}, target {t['bound']}")
    for r in data["cells"]:
        if r["status"] != "ok":
            print(f"{r['status'].upper()} {r['name']}: {r['error']['type']}: {r['error']['message'][:300]}")
    if data["not_run"]:
        print(f"not run ({len(data['not_run'])}): {', '.join(data['not_run'][:8])}"
              + (" ..." if len(data["not_run"]) > 8 else ""))
    print(f"wrote {report.path}")


def main(argv: Optional[list[str]] = None) -> dict[str, Any]:
    args = parse_args(argv)
    device = resolve_device(args.device)
    if args.threads or args.quick:
        torch.set_num_threads(args.threads or 1)
    cuda = device.type == "cuda"
    args.steps = args.steps or (1 if args.quick else 20 if cuda else 5)
    args.warmup = args.warmup or (1 if args.quick or not cuda else 3)
    args.depth = args.depth or ([2] if args.quick else [12 if cuda else 2])
    args.compile_backend = args.compile_backend or ("aot_eager" if args.quick else "inductor")
    plan = [[s] for s in args.cells] if args.cells else \
        (gpu_plan(args.quick) if (args.plan or ("gpu" if cuda else "cpu")) == "gpu" else cpu_plan(args.batch))
    if args.quick:
        plan = quick_plan(plan)
    report = Report(args.json, {
        "benchmark": "model_throughput", "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
        "machine": machine_info(device),
        "run": {"steps": args.steps, "warmup": args.warmup, "frames": args.frames, "text": args.text,
                "text_len": args.text_len, "compile_mode": args.compile_mode, "arch": args.arch,
                "compile_backend": args.compile_backend, "quick": args.quick, "budget_s": args.budget_s,
                "timer": "process_time" if clock(device) is time.process_time else "perf_counter"},
        "matmul_peak_flops_per_s": {}, "speedups": [],
    })
    with tempfile.TemporaryDirectory(prefix="lightning-frozen-bench-") as workdir:
        bench = Bench(args, device, report, Path(workdir))
        jobs = make_jobs(plan, bench)

        def after_job() -> None:
            free_memory(bench)
            derived(bench)

        finished = run_jobs(jobs, report, args.budget_s, after_job)
    derived(bench)
    report.save()
    print_summary(report)
    if not finished:
        raise SystemExit(130)
    return report.data


if __name__ == "__main__":
    main()
