"""The data path as one line: load -> analyze -> score -> plan -> rewrite -> verify -> bench -> save."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence

import onnx

from . import bench
from .analyze import analyze, groups as find_groups
from .errors import UsageError, VerifyError
from .fold import fold_shapes
from .graph import Graph
from .plan import Plan, make_plan
from .rewrite import rewrite
from .score import CRITERIA, score
from .verify import verify


@dataclass
class Options:
    ratio: float = 0.5
    head_ratio: Optional[float] = None      # attention heads (default: ratio)
    mlp_ratio: Optional[float] = None       # MLP widths and CNN channels (default: ratio)
    prune_hidden: bool = False              # also prune the residual (hidden) width: not exact
    round_to: int = 1
    protect: Sequence[str] = ()
    criterion: str = "l2"
    reduce: str = "mean"
    seed: int = 0
    allow_inexact: bool = False
    threads: int = 1
    bench: bool = True
    bench_repeats: int = 30
    verify: bool = True
    seq_len: int = 64                       # value of non-batch symbolic dims when counting MACs

    def kind_ratios(self) -> Dict[str, Optional[float]]:
        return {"heads": self.head_ratio, "channels": self.mlp_ratio}

    def check(self) -> None:
        for name in ("ratio", "head_ratio", "mlp_ratio"):
            v = getattr(self, name)
            if v is not None and not (0.0 <= v < 1.0):
                raise UsageError(f"--{name.replace('_', '-')} must be in [0, 1), got {v}")
        if self.round_to < 1:
            raise UsageError(f"--round-to must be >= 1, got {self.round_to}")
        if self.criterion not in CRITERIA:
            raise UsageError(f"unknown criterion {self.criterion!r}; choose from {', '.join(sorted(CRITERIA))}")
        if self.threads < 1:
            raise UsageError("--threads must be >= 1")


@dataclass
class Result:
    model: onnx.ModelProto
    plan: Plan
    report: dict
    timings: Dict[str, float] = field(default_factory=dict)


Progress = Callable[[str], None]


def _noop(msg: str) -> None:
    pass


class Analyzed:
    """A model with its analysis and groups, reusable by several plans."""

    def __init__(self, model: onnx.ModelProto):
        self.original = model
        g0 = Graph(model)
        folded = fold_shapes(model, g0)
        self.model = folded
        self.graph = g0 if folded is model else Graph(folded, known_shapes=g0.shapes, runtime=False)
        self.analysis = analyze(model, self.graph)
        self.groups, self.root = find_groups(self.analysis)


def prune(model: onnx.ModelProto, opts: Options, progress: Progress = _noop,
          plan_json: Optional[dict] = None) -> Result:
    opts.check()
    t = {}
    t0 = time.perf_counter()
    progress("analyze")
    an = Analyzed(model)
    t["analyze_s"] = time.perf_counter() - t0
    t1 = time.perf_counter()
    if plan_json is None:
        progress("score")
        scores = score(an.groups, an.graph, opts.criterion, opts.reduce, opts.seed)
        t["score_s"] = time.perf_counter() - t1
        t1 = time.perf_counter()
        progress("plan")
        plan = make_plan(an.groups, scores, opts.ratio, opts.round_to, opts.protect,
                         opts.allow_inexact or opts.prune_hidden, kind_ratios=opts.kind_ratios())
    else:
        progress("plan")
        plan = Plan.from_json(plan_json, an.groups)
    t["plan_s"] = time.perf_counter() - t1
    t1 = time.perf_counter()
    progress("rewrite")
    removed = plan.removed_units()
    pruned = rewrite(an.model, an.analysis, an.root, removed) if removed else _unchanged(model)
    t["rewrite_s"] = time.perf_counter() - t1
    pj = plan.to_json()
    report = {"groups": pj["groups"]}
    report["summary"] = {
        "groups": len(an.groups),
        "prunable_groups": sum(1 for g in an.groups if g.prunable),
        "pruned_groups": plan.n_pruned_groups(),
        "options": {"ratio": opts.ratio, "head_ratio": opts.head_ratio, "mlp_ratio": opts.mlp_ratio,
                    "prune_hidden": opts.prune_hidden, "round_to": opts.round_to, "criterion": opts.criterion,
                    "protect": list(opts.protect), "seed": opts.seed},
    }
    progress("count")
    feed = count_feed(model, opts.seq_len)
    mb, pb = bench.count_macs_params(model, feed)
    ma, pa = bench.count_macs_params(pruned, feed)
    report["macs"] = {"before": int(mb), "after": int(ma)}
    report["params"] = {"before": int(pb), "after": int(pa)}
    if opts.verify:
        t1 = time.perf_counter()
        progress("verify")
        report["verify"] = verify(model, pruned, pj)
        t["verify_s"] = time.perf_counter() - t1
    if opts.bench:
        progress("bench")
        feed = bench.random_inputs(model, seed=opts.seed)
        lat = bench.measure_latency(model, pruned, feed, threads=opts.threads, repeats=opts.bench_repeats)
        report["latency_ms"] = {"before": lat["before_ms"], "after": lat["after_ms"], "speedup": lat["speedup"],
                                "threads": opts.threads}
    report["timings_s"] = t
    return Result(pruned, plan, report, t)


def count_feed(model: onnx.ModelProto, seq_len: int) -> Optional[dict]:
    """Inputs for run-time MAC counting when the graph has symbolic dims (batch 1, others seq_len)."""
    syms = {d.dim_param for vi in model.graph.input for d in vi.type.tensor_type.shape.dim
            if d.HasField("dim_param") and d.dim_param}
    if not syms:
        return None
    return bench.random_inputs(model, seed=0, batch=1,
                               dims={s: seq_len for s in syms if not bench._is_batch_symbol(s)})


def _unchanged(model: onnx.ModelProto) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    return out


def check_verified(report: dict) -> None:
    v = report.get("verify")
    if v is not None and not v.get("passed"):
        why = v.get("reason") or f"max_abs_diff={v.get('max_abs_diff')}"
        raise VerifyError(f"verification failed: pruned model disagrees with the masked-dense oracle ({why})")
