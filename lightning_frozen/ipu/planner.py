"""Pipeline planner: memory, FLOPs and pipeline efficiency of a stage map, and a balanced map.

``lightning-frozen ipu-plan --config configs/webvid2m_8ipu_4f.yaml [--balance]`` prints one row per IPU
of the stage map:

* parameters, and weight + gradient-accumulator + optimizer-state bytes for the configured
  precision ("32", "16.32", "16.16") and optimizer-state location (off chip: not counted);
* an activation estimate for one micro-batch with recomputation: the working set of the
  stage's largest layer plus the stage-boundary tensors stashed for the micro-batches in flight;
* forward and training FLOPs per micro-batch (training = forward + backward (2x; 1x for the
  patch embedding, whose pixels need no gradient) + the recomputed forward), counted analytically
  from the model geometry: matmuls, convolutions and attention, 2 FLOPs per multiply-add, the
  convention of ``torch.utils.flop_counter``;
* the pipeline's estimated efficiency: stage balance (mean / slowest stage) times pipeline fill
  (``G / (G + 2(S - 1))`` for S stages and G micro-batches per step in training),

against the 900 MB of In-Processor Memory of a Mk2 IPU. ``--balance`` proposes the map that
minimises the slowest stage's FLOPs while every IPU stays within memory (a linear-partition
dynamic programme over FrozenInTime's layers in execution order), written as module paths of
FrozenModule, ready for ``stage_map``. These are estimates for planning, not a substitute for
PopVision's memory report after compilation.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Sequence

from ..arguments import ArgumentParser

if TYPE_CHECKING:  # torch loads when a plan is made, not for `ipu-plan --help`
    from torch import nn

    from .pipeline import StageMap

IPU_MEMORY_BYTES = 900 * 10**6  # Mk2 GC200: 900 MB In-Processor Memory
_BYTES = {"32": (4, 4, 4), "16.32": (2, 4, 4), "16.16": (2, 2, 2)}  # weights, grad accumulator, optimizer moments


@dataclass
class Geometry:
    """What the counts need to know about the model and the micro-batch."""

    batch: int
    frames: int
    tokens: int
    img_size: int
    patch_size: int
    video_dim: int
    video_depth: int
    video_heads: int
    mlp_ratio: float
    text_dim: int
    text_layers: int
    text_heads: int
    text_ffn: int
    text_pooler: bool
    projection_dim: int

    @property
    def patches(self) -> int:
        return (self.img_size // self.patch_size) ** 2

    @property
    def video_tokens(self) -> int:
        return 1 + self.frames * self.patches


@dataclass
class Item:
    """One unit the planner places: a module of FrozenModule (its path, ``[i]`` for one layer) with its costs."""

    name: str
    module: nn.Module
    params: int
    forward_flops: int
    activation_bytes: int  # working set of one micro-batch during (re)computation
    boundary_bytes: int  # size of its output (what a stage stashes per micro-batch in flight)
    backward_factor: int = 2  # backward = weight grads + input grads; 1 where the input needs no grad

    def training_flops(self, recompute: bool) -> int:
        """Forward + backward (+ the recomputed forward)."""
        return self.forward_flops * (1 + self.backward_factor + (1 if recompute else 0))


def _linear(batch_tokens: int, fan_in: int, fan_out: int) -> int:
    return 2 * batch_tokens * fan_in * fan_out


def video_block_flops(g: Geometry, cls_only: bool = False) -> int:
    """One space-time block; `cls_only`: the tower's last, which computes only what reaches the CLS token."""
    b, t, d, n, f = g.batch, g.video_tokens, g.video_dim, g.patches, g.frames
    cls = 4 * b * t * d  # the CLS query attends to every token
    time = _linear(b * t, d, 3 * d) + _linear(b * t, d, d) + cls + 4 * b * n * f * (f + 1) * d  # + position groups
    hidden = int(d * g.mlp_ratio)
    if cls_only:  # space attention of the CLS query alone (keys and values of every token), MLP of the CLS
        return time + 2 * _linear(b, d, d) + _linear(b * t, d, 2 * d) + cls + _linear(b, d, hidden) + \
            _linear(b, hidden, d)
    space = _linear(b * t, d, 3 * d) + _linear(b * t, d, d) + cls + 4 * b * f * n * (n + 1) * d  # + frame groups
    return time + space + _linear(b * t, d, hidden) + _linear(b * t, hidden, d)


def text_layer_flops(g: Geometry) -> int:
    b, n, h = g.batch, g.tokens, g.text_dim
    return 4 * _linear(b * n, h, h) + 4 * b * n * n * h + _linear(b * n, h, g.text_ffn) + _linear(b * n, g.text_ffn, h)


def forward_flops(g: Geometry) -> dict[str, int]:
    """Forward FLOPs per micro-batch for every group (list groups: per layer)."""
    patch = 2 * g.batch * g.frames * g.patches * g.video_dim * 3 * g.patch_size ** 2
    return {
        "txt_embeddings": 0,
        "txt_layers": text_layer_flops(g),
        "txt_pooler": _linear(g.batch, g.text_dim, g.text_dim) if g.text_pooler else 0,
        "txt_proj": _linear(g.batch, g.text_dim, g.projection_dim),
        "vid_patch_embed": patch,
        "vid_blocks": video_block_flops(g),
        "vid_last_block": video_block_flops(g, cls_only=True),
        # the video projection, and the similarity matrix of the loss on the last stage
        "vid_proj": _linear(g.batch, g.video_dim, g.projection_dim) + 2 * g.batch * g.batch * g.projection_dim,
    }


def _activations(g: Geometry, act_bytes: int) -> dict[str, tuple[int, int]]:
    """(working set, boundary) bytes per group for one micro-batch: a coarse transformer-layer model."""
    b = g.batch
    t, d, hv = g.video_tokens, g.video_dim, g.video_heads
    scores_v = hv * (2 * t + g.frames * g.patches * (g.patches + 1) + g.patches * g.frames * (g.frames + 1))
    block = b * (t * d * 12 + t * int(d * g.mlp_ratio) * 2 + scores_v) * act_bytes
    n, h = g.tokens, g.text_dim
    layer = b * (n * h * 10 + n * g.text_ffn * 2 + g.text_heads * n * n * 2) * act_bytes
    return {
        "txt_embeddings": (b * n * h * 3 * act_bytes, b * n * h * act_bytes),
        "txt_layers": (layer, b * n * h * act_bytes),
        "txt_proj": (b * (h + g.projection_dim) * act_bytes, b * g.projection_dim * act_bytes),
        "vid_patch_embed": (b * (g.frames * 3 * g.img_size ** 2 + 3 * t * d) * act_bytes, b * t * d * act_bytes),
        "vid_blocks": (block, b * t * d * act_bytes),
        "vid_proj": (b * (d + g.projection_dim + b) * act_bytes * 2, b * g.projection_dim * act_bytes),
    }


def _count(module: Any) -> int:
    return sum(p.numel() for p in module.parameters()) if module is not None else 0


def build_items(model: Any, g: Geometry, act_bytes: int) -> list[Item]:
    """FrozenInTime's units in execution order (text tower, then video tower), with parameters, FLOPs and
    activations; named by their path in FrozenModule, as a stage map names them."""
    flops = forward_flops(g)
    acts = _activations(g, act_bytes)
    video = model.video_model
    layers, blocks = list(model.text_layers), list(video.blocks)
    pooler = getattr(model.text_model, "pooler", None)
    items = [Item("model.text_model.embeddings", model.text_model.embeddings, _count(model.text_model.embeddings),
                  0, *acts["txt_embeddings"])]
    for i, layer in enumerate(layers):
        last = i == len(layers) - 1
        items.append(Item(f"model.text_layers[{i}]", layer, _count(layer) + (_count(pooler) if last else 0),
                          flops["txt_layers"] + (flops["txt_pooler"] if last else 0), *acts["txt_layers"]))
    items.append(Item("model.txt_proj", model.txt_proj, _count(model.txt_proj), flops["txt_proj"], *acts["txt_proj"]))
    embed_params = _count(video.patch_embed) + sum(
        getattr(video, n).numel() for n in ("cls_token", "pos_embed", "temporal_embed"))
    # the pixels need no gradient: the patch convolution's backward computes weight gradients only
    items.append(Item("model.video_model.patch_embed", video.patch_embed, embed_params, flops["vid_patch_embed"],
                      *acts["vid_patch_embed"], backward_factor=1))
    for i, block in enumerate(blocks):
        last = i == len(blocks) - 1
        items.append(Item(f"model.video_model.blocks[{i}]", block, _count(block) + (_count(video.norm) if last else 0),
                          flops["vid_last_block" if last else "vid_blocks"], *acts["vid_blocks"]))
    items.append(Item("model.vid_proj", model.vid_proj, _count(model.vid_proj), flops["vid_proj"], *acts["vid_proj"]))
    return items


def lightning_root(model: nn.Module) -> nn.Module:
    """Stands in for FrozenModule around a bare FrozenInTime, so that stage-map paths (``model.*``) resolve."""
    from torch import nn

    return nn.ModuleDict({"model": model})


@dataclass
class StageReport:
    ipu: int
    items: list[str]
    params: int
    weight_bytes: int
    grad_bytes: int
    optimizer_bytes: int
    activation_bytes: int
    forward_flops: int
    training_flops: int

    @property
    def total_bytes(self) -> int:
        return self.weight_bytes + self.grad_bytes + self.optimizer_bytes + self.activation_bytes


@dataclass
class Plan:
    stages: list[StageReport]
    accumulation: int
    efficiency: float
    balance: float
    fill: float
    stage_map: dict[str, Any] = field(default_factory=dict)

    def fits(self) -> bool:
        return all(s.total_bytes <= IPU_MEMORY_BYTES for s in self.stages)


def _stage_report(ipu: int, items: Sequence[Item], num_stages: int, precision: str, offchip: bool,
                  sharding: int, recompute: bool, stage_index: int) -> StageReport:
    w, gacc, mom = _BYTES[precision]
    params = sum(i.params for i in items)
    in_flight = 2 * (num_stages - stage_index) - 1  # micro-batches whose stage inputs are stashed
    boundary = items[0].boundary_bytes if items else 0
    if recompute:
        working = max((i.activation_bytes for i in items), default=0)
        activations = working + in_flight * boundary + sum(i.boundary_bytes for i in items)
    else:
        activations = in_flight * sum(i.activation_bytes for i in items)
    fwd = sum(i.forward_flops for i in items)
    return StageReport(
        ipu=ipu, items=[i.name for i in items], params=params, weight_bytes=params * w, grad_bytes=params * gacc,
        optimizer_bytes=0 if offchip else params * 2 * mom // max(1, sharding), activation_bytes=activations,
        forward_flops=fwd, training_flops=sum(i.training_flops(recompute) for i in items),
    )


def plan(items: list[Item], assignment: Sequence[int], *, precision: str = "32", offchip: bool = False,
         sharding: int = 1, recompute: bool = True, accumulation: int = 1) -> Plan:
    """Per-IPU report and efficiency for items assigned to IPUs (non-decreasing ids)."""
    ipus = sorted(set(assignment))
    stages = []
    for k, ipu in enumerate(ipus):
        members = [it for it, a in zip(items, assignment) if a == ipu]
        stages.append(_stage_report(ipu, members, len(ipus), precision, offchip, sharding, recompute, k))
    times = [s.training_flops for s in stages]
    balance = (sum(times) / len(times)) / max(times) if max(times) else 1.0
    s = len(stages)
    fill = accumulation / (accumulation + 2 * (s - 1)) if s > 1 else 1.0
    return Plan(stages, accumulation, balance * fill, balance, fill)


def balance(items: list[Item], num_ipus: int, **plan_kwargs: Any) -> Optional[list[int]]:
    """Assignment of items (in order) to ``num_ipus`` contiguous stages minimising the slowest stage
    within memory; None if no assignment fits."""
    n = len(items)
    if num_ipus > n:
        return None
    recompute = plan_kwargs.get("recompute", True)
    cost = [it.training_flops(recompute) for it in items]
    prefix = [0]
    for c in cost:
        prefix.append(prefix[-1] + c)

    def fits(i: int, j: int, k: int) -> bool:
        report = _stage_report(k, items[i:j], num_ipus, plan_kwargs.get("precision", "32"),
                               plan_kwargs.get("offchip", False), plan_kwargs.get("sharding", 1), recompute, k)
        return report.total_bytes <= IPU_MEMORY_BYTES

    inf = math.inf
    # best[k][j]: minimal slowest-stage cost of putting items[:j] on stages 0..k-1
    best = [[inf] * (n + 1) for _ in range(num_ipus + 1)]
    cut = [[0] * (n + 1) for _ in range(num_ipus + 1)]
    best[0][0] = 0
    for k in range(1, num_ipus + 1):
        for j in range(k, n - (num_ipus - k) + 1):
            for i in range(k - 1, j):
                if best[k - 1][i] == inf or not fits(i, j, k - 1):
                    continue
                value = max(best[k - 1][i], prefix[j] - prefix[i])
                if value < best[k][j]:
                    best[k][j], cut[k][j] = value, i
    if best[num_ipus][n] == inf:
        return None
    assignment = [0] * n
    j = n
    for k in range(num_ipus, 0, -1):
        i = cut[k][j]
        for idx in range(i, j):
            assignment[idx] = k - 1
        j = i
    return assignment


def assignment_from_map(items: list[Item], stage_map: StageMap, root: nn.Module) -> list[int]:
    """The IPU of every item under ``stage_map``: an entry starts its IPU at the first item it holds, and
    items run on the IPU of the item before them until the next start (poptorch's rule)."""
    from .pipeline import StageMapError, entries

    starts: dict[int, int] = {}
    for entry in entries(stage_map, root):
        inside = {id(m) for m in entry.module.modules()}
        first = next((k for k, it in enumerate(items) if id(it.module) in inside), None)
        if first is None:
            raise StageMapError(f"ipu-plan: {entry.name} holds none of the planned units (whole layers: "
                                f"{', '.join(_compress([it.name for it in items]))}); fix: place whole layers")
        starts[first] = entry.ipu
    assignment, current = [], 0
    for k in range(len(items)):
        current = starts.get(k, current)
        assignment.append(current)
    return assignment


def map_from_assignment(items: list[Item], assignment: Sequence[int]) -> StageMap:
    """A stage map (paths in FrozenModule) that places every item as ``assignment`` says."""
    out: StageMap = {}
    for it, ipu in zip(items, assignment):
        path, _, index = it.name.partition("[")
        if index:
            out.setdefault(path, []).append(ipu)
        else:
            out[path] = ipu
    return out


# ------------------------------------------------------------------------------ CLI
def _geometry_from_config(cfg: dict, model: Any) -> Geometry:
    model_cfg = cfg.get("model", {})
    data = cfg.get("data", {})
    strategy = (cfg.get("trainer", {}).get("strategy") or {}).get("init_args", {})
    video = model.video_model
    text_cfg = model.text_model.config
    sizes = data.get("train_batch_sizes", 1)
    batch = sizes if isinstance(sizes, int) else max(sizes)
    tokens = strategy.get("pad_text_to") or data.get("max_length") or 32
    frames = (model_cfg.get("video") or {}).get("num_frames") or video.num_frames

    def conf(*names: str) -> int:
        for n in names:
            if getattr(text_cfg, n, None) is not None:
                return int(getattr(text_cfg, n))
        raise AttributeError(f"text config has none of {names}")

    block = video.blocks[0]
    return Geometry(
        batch=int(batch), frames=int(frames), tokens=int(tokens), img_size=video.patch_embed.img_size,
        patch_size=video.patch_embed.patch_size, video_dim=video.embed_dim, video_depth=len(video.blocks),
        video_heads=block.attn.num_heads, mlp_ratio=block.mlp.fc1.out_features / video.embed_dim,
        text_dim=conf("hidden_size", "dim"), text_layers=len(model.text_layers),
        text_heads=conf("num_attention_heads", "n_heads"), text_ffn=conf("intermediate_size", "hidden_dim"),
        text_pooler=getattr(model.text_model, "pooler", None) is not None,
        projection_dim=model.vid_proj[0].out_features,
    )


def build_model_from_config(cfg: dict) -> Any:
    """The FrozenInTime the config describes, with random weights (nothing is downloaded)."""
    from ..models import FrozenInTime

    m = dict(cfg.get("model", {}))
    video = dict(m.get("video") or {})
    video["pretrained"] = False
    video.pop("pretrained_path", None)
    text = dict(m.get("text") or {})
    text["pretrained"] = False
    return FrozenInTime(video, text, m.get("projection_dim", 256))


def _fmt_bytes(n: int) -> str:
    return f"{n / 1e6:8.1f} MB"


def _fmt_flops(n: int) -> str:
    return f"{n / 1e9:9.2f} G"


def format_plan(p: Plan) -> str:
    head = (f"{'IPU':>3}  {'modules (in model.)':<60} {'params':>10} {'weights':>11} {'grads':>11} {'optimizer':>11} "
            f"{'activations':>11} {'total':>11} {'of 900MB':>8} {'fwd FLOPs':>11} {'train FLOPs':>11}")
    lines = [head, "-" * len(head)]
    for s in p.stages:
        groups = ", ".join(_compress([name.removeprefix("model.") for name in s.items]))
        lines.append(
            f"{s.ipu:>3}  {groups[:60]:<60} {s.params:>10,} {_fmt_bytes(s.weight_bytes)} {_fmt_bytes(s.grad_bytes)} "
            f"{_fmt_bytes(s.optimizer_bytes)} {_fmt_bytes(s.activation_bytes)} {_fmt_bytes(s.total_bytes)} "
            f"{100 * s.total_bytes / IPU_MEMORY_BYTES:7.0f}% {_fmt_flops(s.forward_flops)} "
            f"{_fmt_flops(s.training_flops)}")
    lines.append(f"pipeline: {len(p.stages)} stages, {p.accumulation} micro-batches per step; balance "
                 f"{p.balance:.2f} x fill {p.fill:.2f} = estimated efficiency {p.efficiency:.2f}"
                 + ("" if p.fits() else "   ** some IPU exceeds 900 MB **"))
    return "\n".join(lines)


def _compress(names: list[str]) -> list[str]:
    """txt_layers[0], txt_layers[1], txt_layers[2] -> txt_layers[0-2]."""
    out: list[str] = []
    run: list[tuple[str, int]] = []

    def flush() -> None:
        if run:
            g, a, b = run[0][0], run[0][1], run[-1][1]
            out.append(f"{g}[{a}]" if a == b else f"{g}[{a}-{b}]")
            run.clear()

    for name in names:
        if name.endswith("]"):
            g, idx = name[:-1].split("[")
            if run and run[-1][0] == g and run[-1][1] + 1 == int(idx):
                run.append((g, int(idx)))
                continue
            flush()
            run.append((g, int(idx)))
        else:
            flush()
            out.append(name)
    flush()
    return out


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of ``lightning-frozen ipu-plan``: print the plan of a config's stage map (and a balanced map)."""
    parser = ArgumentParser(prog="lightning-frozen ipu-plan", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, help="a LightningCLI YAML with an IPUStrategy")
    parser.add_argument("--balance", action="store_true", help="also propose a balanced stage map")
    parser.add_argument("--json", help="write the plan(s) as JSON here")
    args = parser.parse_args(argv)

    import yaml

    from .pipeline import ipus_per_replica, validate

    cfg = yaml.safe_load(Path(args.config).read_text())
    strategy = (cfg.get("trainer", {}).get("strategy") or {}).get("init_args", {})
    opts = strategy.get("training_opts") or {}
    precision = str(strategy.get("precision", "32"))
    accumulation = opts.get("gradient_accumulation") or cfg.get("trainer", {}).get("accumulate_grad_batches", 1)
    replication = int(opts.get("replication_factor", 1))
    kwargs = dict(precision=precision, offchip=bool(opts.get("optimizer_state_offchip", False)),
                  sharding=replication if opts.get("replicated_tensor_sharding") else 1,
                  recompute=bool(strategy.get("recompute", True)),
                  accumulation=int(accumulation))
    model = build_model_from_config(cfg)
    geometry = _geometry_from_config(cfg, model)
    items = build_items(model, geometry, act_bytes=_BYTES[precision][0])
    stage_map = strategy.get("stage_map") or {"model": 0}
    root = lightning_root(model)
    validate(stage_map, root)
    current = plan(items, assignment_from_map(items, stage_map, root), **kwargs)
    print(f"{args.config}: micro-batch {geometry.batch}, {geometry.frames} frame(s), {geometry.tokens} tokens, "
          f"precision {precision}, optimizer state {'off' if kwargs['offchip'] else 'on'} chip, "
          f"replication {replication}")
    print(format_plan(current))
    out = {"config": args.config, "current": _plan_json(current, stage_map)}
    if args.balance:
        plan_kwargs = {k: v for k, v in kwargs.items() if k != "accumulation"}
        assignment = balance(items, ipus_per_replica(stage_map), **plan_kwargs)
        print()
        if assignment is None:
            print(f"--balance: no map on {ipus_per_replica(stage_map)} IPUs keeps every IPU within 900 MB")
        else:
            proposed = map_from_assignment(items, assignment)
            balanced = plan(items, assignment, **kwargs)
            print("balanced stage map (minimises the slowest stage within memory):")
            print(json.dumps(proposed))
            print(format_plan(balanced))
            out["balanced"] = _plan_json(balanced, proposed)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))
    return 0


def _plan_json(p: Plan, stage_map: dict) -> dict:
    return {"stage_map": stage_map, "efficiency": p.efficiency, "balance": p.balance, "fill": p.fill,
            "stages": [{"ipu": s.ipu, "groups": s.items, "params": s.params, "weight_bytes": s.weight_bytes,
                        "grad_bytes": s.grad_bytes, "optimizer_bytes": s.optimizer_bytes,
                        "activation_bytes": s.activation_bytes, "total_bytes": s.total_bytes,
                        "forward_flops": s.forward_flops, "training_flops": s.training_flops} for s in p.stages]}


if __name__ == "__main__":
    raise SystemExit(main())
