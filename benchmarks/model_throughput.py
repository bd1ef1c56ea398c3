"""Throughput, FLOPs, memory and bf16 agreement of the FrozenInTime dual encoder.

For each precision (``32`` and/or ``bf16-mixed``) this measures, on one device:

* training steps: forward of both towers on a batch of clips and short captions, the
  symmetric NormSoftmax loss on the cosine similarity matrix, backward and (unless
  ``--no-optimizer``) an AdamW step; reported as clips/s (median step time);
* forward only: ``torch.inference_mode`` in eval mode, both towers plus the similarity
  matrix; clips/s;
* peak memory of each phase over the state before it (weights, optimizer state, inputs);
* FLOPs per clip, forward and forward+backward, from ``FlopCounterMode``;
* the fraction of the device's own matmul peak in the same precision, measured here
  with a large square matmul (the fastest repeat), that the model reaches (FLOPs counted
  / median step time);
* for bf16: the cosine similarity between bf16-autocast and fp32 embeddings.

Precisions are timed in turn, step by step, so that on a shared machine both see the
same load.

It prints a table and writes JSON. It is a benchmark, never a test: nothing is asserted.

    HF_HUB_OFFLINE=1 python benchmarks/model_throughput.py --depth 4 --frames 4 --batch 4
"""
from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import json
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.flop_counter import FlopCounterMode

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from lightning_frozen.models import FrozenInTime, TextConfig, VideoConfig, bundled_text_model_path  # noqa: E402

PRECISIONS = ("32", "bf16-mixed")
# A geometry small enough for a smoke run on any machine.
TINY = {"img_size": 32, "patch_size": 16, "embed_dim": 64, "depth": 2, "num_heads": 2}
DEFAULT_JSON = ROOT / "benchmarks" / "results" / "model_throughput.json"


# ----------------------------------------------------------------------------- options


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    """Command-line options; geometry flags override the --arch preset."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("model")
    g.add_argument("--arch", default="base_patch16_224", help="video preset: base_patch16_224, base_patch32_224 or tiny")
    for name in ("img-size", "patch-size", "embed-dim", "depth", "num-heads"):
        g.add_argument(f"--{name}", type=int, default=None, help="override the preset")
    g.add_argument("--frames", type=int, default=4, help="frames per clip (also the model's num_frames)")
    g.add_argument("--text", default=None, help="HF encoder dir or id (default: the bundled MiniLM), random weights")
    g.add_argument("--text-layers", type=int, default=None, help="override the text encoder's layer count")
    g.add_argument("--text-len", type=int, default=16, help="caption length in tokens")
    g.add_argument("--projection-dim", type=int, default=256)
    r = p.add_argument_group("run")
    r.add_argument("--batch", type=int, default=4, help="clips (and captions) per step")
    r.add_argument("--precision", nargs="+", choices=PRECISIONS, default=list(PRECISIONS))
    r.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    r.add_argument("--threads", type=int, default=None, help="torch intra-op threads (CPU); default: torch's")
    r.add_argument("--steps", type=int, default=3, help="timed steps per phase and precision (median reported)")
    r.add_argument("--warmup", type=int, default=1, help="untimed steps before each phase")
    r.add_argument("--no-optimizer", action="store_true", help="time forward+backward without the AdamW step")
    r.add_argument("--peak-size", type=int, default=None, help="square matmul size for the peak (CPU 2048, CUDA 8192)")
    r.add_argument("--peak-repeats", type=int, default=10, help="matmul repeats; the fastest is the peak")
    r.add_argument("--profile", action="store_true", help="also profile one training step per precision")
    r.add_argument("--json", type=Path, default=DEFAULT_JSON, help="where to write the results")
    return p.parse_args(argv)


def resolve_device(name: str) -> torch.device:
    """`auto` is CUDA when available, else CPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda but torch sees no CUDA device")
    return torch.device(name)


def video_config(args: argparse.Namespace) -> VideoConfig:
    """The video tower's config from --arch and the geometry overrides."""
    geometry = {k: getattr(args, k) for k in ("img_size", "patch_size", "embed_dim", "depth", "num_heads")}
    arch: Optional[str] = args.arch
    if arch == "tiny":
        geometry = {k: v if v is not None else TINY[k] for k, v in geometry.items()}
        arch = None
    return VideoConfig(arch=arch, num_frames=args.frames, **geometry)


def build_model(args: argparse.Namespace, device: torch.device) -> FrozenInTime:
    """FrozenInTime with random weights in both towers (`pretrained=False`)."""
    overrides = {"num_hidden_layers": args.text_layers} if args.text_layers else {}
    text = TextConfig(name_or_path=str(args.text or bundled_text_model_path()), pretrained=False,
                      config_overrides=overrides)
    return FrozenInTime(video=video_config(args), text=text, projection_dim=args.projection_dim).to(device)


def make_batch(model: FrozenInTime, args: argparse.Namespace, device: torch.device) -> dict[str, Tensor]:
    """Random normalised clips and random captions of `--text-len` tokens (no padding)."""
    g = torch.Generator().manual_seed(0)
    size = model.video_model.patch_embed.img_size
    video = torch.randn(args.batch, args.frames, 3, size, size, generator=g)
    vocab = model.text_model.config.vocab_size
    ids = torch.randint(1000, vocab, (args.batch, args.text_len), generator=g)
    ids[:, 0] = getattr(model.text_model.config, "bos_token_id", None) or 101
    mask = torch.ones_like(ids)
    return {"video": video.to(device), "input_ids": ids.to(device), "attention_mask": mask.to(device)}


# ----------------------------------------------------------------------------- steps


def contrastive_loss() -> Callable[[Tensor], Tensor]:
    """The project's NormSoftmaxLoss, or an equivalent inline symmetric InfoNCE."""
    try:
        from lightning_frozen.losses import NormSoftmaxLoss

        return NormSoftmaxLoss(temperature=0.05)
    except ImportError:
        def info_nce(sims: Tensor, temperature: float = 0.05) -> Tensor:
            logits = sims / temperature
            return -F.log_softmax(logits, 1).diagonal().mean() - F.log_softmax(logits.t(), 1).diagonal().mean()

        return info_nce


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """bf16 autocast for `bf16-mixed` (weights stay fp32, as in Lightning), nothing for `32`."""
    if precision == "bf16-mixed":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def forward_loss(model: FrozenInTime, batch: dict[str, Tensor], loss_fn: Callable[[Tensor], Tensor]) -> Tensor:
    """Both towers, the cosine similarity matrix and the contrastive loss."""
    text_emb, video_emb = model(batch["video"], batch["input_ids"], batch["attention_mask"])
    return loss_fn(model.similarity(text_emb, video_emb))


def make_train_step(model: FrozenInTime, batch: dict[str, Tensor], loss_fn: Callable[[Tensor], Tensor],
                    optimizer: Optional[torch.optim.Optimizer], amp: Callable[[], Any]) -> Callable[[], None]:
    """One training step; gradients are freed at its end so each step allocates them anew."""

    def step() -> None:
        with amp():
            loss = forward_loss(model, batch, loss_fn)
        loss.backward()
        if optimizer is not None:
            optimizer.step()
        model.zero_grad(set_to_none=True)

    return step


def make_forward_step(model: FrozenInTime, batch: dict[str, Tensor], amp: Callable[[], Any]) -> Callable[[], None]:
    """Inference: both towers and the similarity matrix, no autograd."""

    def step() -> None:
        with torch.inference_mode(), amp():
            text_emb, video_emb = model(batch["video"], batch["input_ids"], batch["attention_mask"])
            model.similarity(text_emb, video_emb)

    return step


# ----------------------------------------------------------------------------- measuring


def progress(message: str) -> None:
    """A timestamped line on stderr, so that long CPU runs show where they are."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(step: Callable[[], None], steps: int, warmup: int, device: torch.device) -> list[float]:
    """Seconds per step for `steps` timed calls after `warmup` untimed ones."""
    for _ in range(warmup):
        step()
    synchronize(device)
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return times


def _proc_status_kb(key: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)


def _release_cpu_memory() -> None:
    """Return freed heap pages to the OS so that RSS reflects live memory (glibc only)."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _reset_hwm() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False where not permitted."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


@dataclass
class PeakMemory:
    """Peak memory of a block of code: CUDA allocator peak, or process peak RSS on the CPU."""

    device: torch.device
    baseline_mb: float = 0.0
    peak_mb: float = 0.0
    method: str = ""

    @property
    def delta_mb(self) -> float:
        return self.peak_mb - self.baseline_mb

    @contextlib.contextmanager
    def measure(self) -> Iterator["PeakMemory"]:
        if self.device.type == "cuda":
            synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.baseline_mb = torch.cuda.memory_allocated(self.device) / 2**20
            yield self
            synchronize(self.device)
            self.peak_mb = torch.cuda.max_memory_allocated(self.device) / 2**20
            self.method = "torch.cuda.max_memory_allocated"
            return
        _release_cpu_memory()
        reset = _reset_hwm()
        self.baseline_mb = _proc_status_kb("VmRSS") / 1024
        yield self
        self.peak_mb = _proc_status_kb("VmHWM") / 1024
        self.method = "VmHWM after clear_refs=5, minus VmRSS before (malloc_trim'd)" if reset else \
            "VmHWM (lifetime: clear_refs not permitted) minus VmRSS before"


def _sdpa_cpu_flops(query: tuple, key: tuple, value: tuple, *args: Any, out_shape: Any = None, **kwargs: Any) -> int:
    """Q.K^T and P.V of the CPU flash kernel: 2*b*h*q*k*(d + d_v)."""
    *bh, q_len, d = query
    k_len, d_v = key[-2], value[-1]
    batch_heads = 1
    for n in bh:
        batch_heads *= n
    return 2 * batch_heads * q_len * k_len * (d + d_v)


def _sdpa_cpu_backward_flops(grad_out: tuple, query: tuple, key: tuple, value: tuple, *args: Any,
                             out_shape: Any = None, **kwargs: Any) -> int:
    """dV, dP, dQ and dK: twice the forward's matmul work (recompute of P not counted)."""
    return 2 * _sdpa_cpu_flops(query, key, value)


def _flop_counter() -> FlopCounterMode:
    """FlopCounterMode that also counts the CPU SDPA kernels it does not know (torch <= 2.14)."""
    aten = torch.ops.aten
    mapping = {}
    if hasattr(aten, "_scaled_dot_product_flash_attention_for_cpu"):
        mapping[aten._scaled_dot_product_flash_attention_for_cpu] = _sdpa_cpu_flops
        mapping[aten._scaled_dot_product_flash_attention_for_cpu_backward] = _sdpa_cpu_backward_flops
    return FlopCounterMode(display=False, custom_mapping=mapping)


def _tower_flops(counter: FlopCounterMode) -> dict[str, int]:
    """FLOPs per top-level submodule of the model (video_model, text_model, ...)."""
    out = {}
    for name, ops in counter.get_flop_counts().items():
        parts = name.split(".")
        if len(parts) == 2 and parts[0] == "FrozenInTime":
            out[parts[1]] = sum(ops.values())
    return out


def count_flops(step: Callable[[], Any]) -> tuple[int, dict[str, int]]:
    """Total FLOPs of one call of `step`, and their split by tower."""
    counter = _flop_counter()
    with counter:
        step()
    return counter.get_total_flops(), _tower_flops(counter)


def make_matmul_step(device: torch.device, dtype: torch.dtype, size: int) -> tuple[Callable[[], None], int]:
    """A size x size matmul in `dtype` (the device's practical peak) and its FLOPs per call."""
    g = torch.Generator().manual_seed(1)
    a = torch.randn(size, size, generator=g).to(device, dtype)
    b = torch.randn(size, size, generator=g).to(device, dtype)
    inner = 1 if device.type == "cpu" else 20

    def step() -> None:
        for _ in range(inner):
            torch.mm(a, b)

    return step, 2 * size**3 * inner


def interleaved_times(steps: dict[str, Callable[[], None]], repeats: int, device: torch.device) -> dict[str, list[float]]:
    """Seconds per call of each step, taken in turn (A B A B ...) so that all see the same machine load."""
    out: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(repeats):
        for name, step in steps.items():
            out[name] += time_steps(step, 1, 0, device)
    return out


def embedding_agreement(model: FrozenInTime, batch: dict[str, Tensor], device: torch.device) -> dict[str, float]:
    """Smallest per-embedding cosine similarity between bf16-autocast and fp32 outputs, per tower."""
    model.eval()
    args = (batch["video"], batch["input_ids"], batch["attention_mask"])
    with torch.inference_mode():
        ref = model(*args)
        with autocast(device, "bf16-mixed"):
            low = model(*args)
    names = ("text", "video")
    return {n: F.cosine_similarity(r.float(), l.float(), dim=-1).min().item() for n, r, l in zip(names, ref, low)}


def profile_step(step: Callable[[], None], device: torch.device, rows: int = 15) -> list[dict[str, Any]]:
    """Top operators by self time over one step, printed and returned."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities, record_shapes=False) as prof:
        step()
        synchronize(device)
    sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    table = prof.key_averages()
    print(table.table(sort_by=sort, row_limit=rows))
    events = sorted(table, key=lambda e: e.self_device_time_total if device.type == "cuda" else e.self_cpu_time_total,
                    reverse=True)[:rows]
    return [{"op": e.key, "calls": e.count, "self_cpu_ms": e.self_cpu_time_total / 1e3,
             "self_device_ms": getattr(e, "self_device_time_total", 0) / 1e3} for e in events]


# ----------------------------------------------------------------------------- description


def machine_info(device: torch.device) -> dict[str, Any]:
    """CPU or GPU model, torch version, threads and the CPU's bf16-relevant ISA flags."""
    info: dict[str, Any] = {"torch": torch.__version__, "python": platform.python_version(),
                            "device": str(device), "threads": torch.get_num_threads(),
                            "interop_threads": torch.get_num_interop_threads(), "cpu_count": os.cpu_count()}
    with contextlib.suppress(OSError):
        cpuinfo = Path("/proc/cpuinfo").read_text()
        for line in cpuinfo.splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                info["cpu"] = value.strip()
            if key.strip() == "flags":
                flags = set(value.split())
                info["cpu_flags"] = sorted(flags & {"avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "fma"})
                break
    with contextlib.suppress(Exception):
        info["mkldnn_bf16_supported"] = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
        info["tf32_matmul"] = torch.backends.cuda.matmul.allow_tf32
    return info


def describe_model(model: FrozenInTime, args: argparse.Namespace) -> dict[str, Any]:
    """Geometry and parameter counts of the benchmarked model."""
    vm = model.video_model
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    return {
        "video": {"img_size": vm.patch_embed.img_size, "patch_size": vm.patch_embed.patch_size,
                  "embed_dim": vm.embed_dim, "depth": len(vm.blocks), "num_heads": vm.blocks[0].attn.num_heads,
                  "frames": args.frames, "tokens": 1 + args.frames * vm.patches_per_frame, "params": count(vm)},
        "text": {"name_or_path": str(args.text or bundled_text_model_path()), "layers":
                 model.text_model.config.num_hidden_layers, "tokens": args.text_len, "params": count(model.text_model)},
        "params": count(model),
    }


# ----------------------------------------------------------------------------- measuring all precisions


@dataclass
class PrecisionResult:
    precision: str
    train_s: list[float] = field(default_factory=list)
    forward_s: list[float] = field(default_factory=list)
    train_mem: Optional[PeakMemory] = None
    forward_mem: Optional[PeakMemory] = None
    peak_flops: list[float] = field(default_factory=list)
    agreement: dict[str, float] = field(default_factory=dict)
    profile: list[dict[str, Any]] = field(default_factory=list)


def measure_memory(step: Callable[[], None], device: torch.device) -> PeakMemory:
    """Peak memory of one call of `step`."""
    memory = PeakMemory(device)
    with memory.measure():
        step()
    return memory


def measure_matmul_peaks(results: dict[str, PrecisionResult], args: argparse.Namespace, device: torch.device) -> None:
    """FLOP/s of a large square matmul in each precision's compute dtype, interleaved."""
    size = args.peak_size or (8192 if device.type == "cuda" else 2048)
    steps, flops = {}, {}
    for precision in results:
        dtype = torch.bfloat16 if precision == "bf16-mixed" else torch.float32
        steps[precision], flops[precision] = make_matmul_step(device, dtype, size)
        time_steps(steps[precision], 0, 2, device)
    for precision, times in interleaved_times(steps, args.peak_repeats, device).items():
        results[precision].peak_flops = [flops[precision] / t for t in times]
        progress(f"{precision}: matmul peak {max(results[precision].peak_flops) / 1e9:.1f} GFLOP/s")


def measure_phase(steps: dict[str, Callable[[], None]], results: dict[str, PrecisionResult], phase: str,
                  args: argparse.Namespace, device: torch.device) -> None:
    """Warm up each precision, take one step's peak memory, then time all precisions interleaved."""
    for precision, step in steps.items():
        time_steps(step, 0, args.warmup, device)  # the training warmup also creates AdamW's state
        setattr(results[precision], f"{phase}_mem", measure_memory(step, device))
    for precision, times in interleaved_times(steps, args.steps, device).items():
        setattr(results[precision], f"{phase}_s", times)
        progress(f"{precision}: {phase} steps {[round(t, 2) for t in times]} s")


def run_precisions(model: FrozenInTime, batch: dict[str, Tensor], args: argparse.Namespace,
                   device: torch.device) -> dict[str, PrecisionResult]:
    """Matmul peaks, forward-only and training timings with peak memory, for every precision."""
    results = {p: PrecisionResult(p) for p in args.precision}
    measure_matmul_peaks(results, args, device)
    amps = {p: (lambda p=p: autocast(device, p)) for p in args.precision}
    model.eval()
    measure_phase({p: make_forward_step(model, batch, amps[p]) for p in args.precision}, results, "forward", args, device)
    model.train()
    loss_fn = contrastive_loss()
    optimizers = {p: None if args.no_optimizer else torch.optim.AdamW(model.parameters(), lr=1e-6) for p in args.precision}
    train = {p: make_train_step(model, batch, loss_fn, optimizers[p], amps[p]) for p in args.precision}
    measure_phase(train, results, "train", args, device)
    if args.profile:
        for precision, step in train.items():
            print(f"\n== profile: one training step, precision {precision}")
            results[precision].profile = profile_step(step, device)
    return results


def summarise(r: PrecisionResult, batch: int, flops: dict[str, Any]) -> dict[str, Any]:
    """One JSON/table row: rates, FLOP/s, fraction of matmul peak, memory, agreement."""
    train_t, fwd_t = statistics.median(r.train_s), statistics.median(r.forward_s)
    peak = max(r.peak_flops)  # the fastest matmul seen: load on a shared machine only ever slows it
    return {
        "precision": r.precision,
        "train_clips_per_s": batch / train_t, "forward_clips_per_s": batch / fwd_t,
        "train_step_s": {"median": train_t, "min": min(r.train_s), "max": max(r.train_s), "all": r.train_s},
        "forward_step_s": {"median": fwd_t, "min": min(r.forward_s), "max": max(r.forward_s), "all": r.forward_s},
        "train_flops_per_s": flops["train_per_step"] / train_t, "forward_flops_per_s": flops["forward_per_step"] / fwd_t,
        "matmul_peak_flops_per_s": {"max": peak, "median": statistics.median(r.peak_flops), "all": r.peak_flops},
        "train_fraction_of_peak": flops["train_per_step"] / train_t / peak,
        "forward_fraction_of_peak": flops["forward_per_step"] / fwd_t / peak,
        "train_peak_mem_mb": {"delta": r.train_mem.delta_mb, "peak": r.train_mem.peak_mb,
                              "baseline": r.train_mem.baseline_mb},
        "forward_peak_mem_mb": {"delta": r.forward_mem.delta_mb, "peak": r.forward_mem.peak_mb,
                                "baseline": r.forward_mem.baseline_mb},
        "memory_method": r.train_mem.method,
        "bf16_vs_fp32_min_cosine": r.agreement or None,
        "profile_top_ops": r.profile or None,
    }


def _rate_unit(rows: list[dict[str, Any]]) -> tuple[str, float]:
    """GFLOP/s on CPUs, TFLOP/s where the matmul peak passes 1 TFLOP/s."""
    tera = max(r["matmul_peak_flops_per_s"]["max"] for r in rows) > 1e12
    return ("TF/s", 1e12) if tera else ("GF/s", 1e9)


def print_table(rows: list[dict[str, Any]], flops: dict[str, Any]) -> None:
    """One line per precision, then FLOPs per clip and the bf16 speed-up."""
    unit, scale = _rate_unit(rows)
    head = ("precision", "train clip/s", "fwd clip/s", f"train {unit}", f"fwd {unit}", f"mm peak {unit}",
            "train %pk", "fwd %pk", "train mem MB", "fwd mem MB", "min cos t/v")
    lines = []
    for r in rows:
        cos = r["bf16_vs_fp32_min_cosine"]
        lines.append((
            r["precision"], f"{r['train_clips_per_s']:.3f}", f"{r['forward_clips_per_s']:.3f}",
            f"{r['train_flops_per_s'] / scale:.1f}", f"{r['forward_flops_per_s'] / scale:.1f}",
            f"{r['matmul_peak_flops_per_s']['max'] / scale:.1f}",
            f"{100 * r['train_fraction_of_peak']:.1f}", f"{100 * r['forward_fraction_of_peak']:.1f}",
            f"{r['train_peak_mem_mb']['delta']:.0f}", f"{r['forward_peak_mem_mb']['delta']:.0f}",
            f"{cos['text']:.5f}/{cos['video']:.5f}" if cos else "-",
        ))
    widths = [max(len(h), *(len(l[i]) for l in lines)) for i, h in enumerate(head)]
    fmt = "  ".join(f"{{:>{w}}}" for w in widths)
    print(fmt.format(*head))
    for line in lines:
        print(fmt.format(*line))
    per_clip = {k: v / 1e9 for k, v in flops.items() if k.endswith("per_clip")}
    print("GFLOP/clip: forward {forward_per_clip:.2f} (video {video_forward_per_clip:.2f}, text "
          "{text_forward_per_clip:.3f}); forward+backward {train_per_clip:.2f}".format(**per_clip))
    by_precision = {r["precision"]: r for r in rows}
    if set(PRECISIONS) <= set(by_precision):
        lo, hi = by_precision["bf16-mixed"], by_precision["32"]
        print("bf16-mixed vs 32: train x{:.2f}, forward x{:.2f}, matmul peak x{:.2f}".format(
            lo["train_clips_per_s"] / hi["train_clips_per_s"], lo["forward_clips_per_s"] / hi["forward_clips_per_s"],
            lo["matmul_peak_flops_per_s"]["max"] / hi["matmul_peak_flops_per_s"]["max"]))


# ----------------------------------------------------------------------------- main


def main(argv: Optional[list[str]] = None) -> dict[str, Any]:
    args = parse_args(argv)
    device = resolve_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = build_model(args, device)
    batch = make_batch(model, args, device)
    loss_fn = contrastive_loss()

    progress("counting FLOPs")
    # FLOPs do not depend on the precision: count once, in fp32.
    model.train()
    train_flops, train_split = count_flops(lambda: forward_loss(model, batch, loss_fn).backward())
    model.zero_grad(set_to_none=True)
    model.eval()
    fwd_flops, fwd_split = count_flops(make_forward_step(model, batch, contextlib.nullcontext))
    flops = {"train_per_step": train_flops, "forward_per_step": fwd_flops,
             "train_per_clip": train_flops / args.batch, "forward_per_clip": fwd_flops / args.batch,
             "video_forward_per_clip": fwd_split.get("video_model", 0) / args.batch,
             "text_forward_per_clip": fwd_split.get("text_model", 0) / args.batch}

    progress(f"{fwd_flops / args.batch / 1e9:.2f} GFLOP/clip forward; checking bf16 agreement")
    agreement = embedding_agreement(model, batch, device) if "bf16-mixed" in args.precision else {}
    results = run_precisions(model, batch, args, device)
    if "bf16-mixed" in results:
        results["bf16-mixed"].agreement = agreement
    rows = [summarise(r, args.batch, flops) for r in results.values()]

    report = {
        "benchmark": "model_throughput",
        "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
        "machine": machine_info(device),
        "model": describe_model(model, args),
        "run": {"batch": args.batch, "steps": args.steps, "warmup": args.warmup,
                "timing": "precisions interleaved step by step; medians reported",
                "train_step": "forward + NormSoftmax loss + backward" + ("" if args.no_optimizer else " + AdamW step"),
                "forward_step": "eval, inference_mode, both towers + similarity matrix",
                "peak_size": args.peak_size or (8192 if device.type == "cuda" else 2048)},
        "flops": flops,
        "flops_method": "torch.utils.flop_counter.FlopCounterMode (matmul/conv/SDPA only; CPU flash SDPA added)",
        "results": rows,
    }
    print(f"\n{report['model']['video']} text {report['model']['text']['layers']} layers x "
          f"{args.text_len} tokens, batch {args.batch}, {device}, {torch.get_num_threads()} threads, "
          f"train step = {report['run']['train_step']}")
    print_table(rows, flops)
    print(f"memory: {rows[0]['memory_method']}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2))
    print(f"wrote {args.json}")
    return report


if __name__ == "__main__":
    main()
