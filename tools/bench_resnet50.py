"""Side-by-side benchmark: graphprune vs Torch-Pruning on torchvision's resnet50.

Both tools prune the same randomly initialised resnet50 (``weights=None``, eval mode,
input 1x3x224x224) at the same per-layer ratio with the L2-magnitude criterion:

* graphprune works on the ONNX export (``graphprune.pipeline.prune``);
* Torch-Pruning (``tp.pruner.MetaPruner`` + ``tp.importance.MagnitudeImportance(p=2)``,
  ``ignored_layers=[model.fc]``, local pruning) works on the torch module, which is then
  exported to ONNX the same way as the dense model.

For the dense model and both pruned models the script measures, on the ONNX files and
with graphprune's own helpers so that both tools are counted identically: MACs and
parameters (``graphprune.bench.count_macs_params``), onnxruntime CPU latency
(``graphprune.bench.measure_latency``: dense and pruned interleaved, median of per-pair
ratios), speedup realization (speedup / MACs ratio), the output shape, and prune time.

graphprune's prune time is analyze + score + plan + rewrite (from ``report["timings_s"]``;
the wall time of the ``prune()`` call minus verify is shown too, it also counts MACs).
Torch-Pruning's prune time is ``pruner.step()``; the pruner's constructor, which builds the
DependencyGraph (a traced forward pass), is timed separately, and the DependencyGraph build
inside it on its own.  Each tool is run ``--prune-repeats`` times and the median is shown.

Setup (torchvision must stay out of the project's own environment; use a separate venv)::

    python3 -m venv /work/venv-bench
    /work/venv-bench/bin/pip install torch==2.14.1 torchvision==0.29.1 torch-pruning \\
        onnx onnxruntime onnx-graphsurgeon numpy click onnxscript
    /work/venv-bench/bin/pip install -e /work/main --no-deps

Run (from the repository root; a few minutes on 2 cores)::

    /work/venv-bench/bin/python tools/bench_resnet50.py --ratio 0.5 --round-to 1 8 \\
        --threads 1 --repeats 30 --json /tmp/bench_resnet50.json
    # the same with the legacy exporter's deduplicated initializers undone (see below)
    /work/venv-bench/bin/python tools/bench_resnet50.py --ratio 0.5 --round-to 1 8 --undedup

Besides the table, the script prints the two goals (graphprune speedup / MACs ratio >= 0.98;
graphprune analyze+score+rewrite no slower than Torch-Pruning's ``step()``), a head-to-head
latency of the two pruned models, and how much CPU other processes used during the run: on
a shared 2-core machine that makes every timing noisy, Torch-Pruning's most of all (torch's
OpenMP threads stall when a core is taken; ``--torch-threads 1`` avoids that).

``--round-to`` takes one or more values; each is a separate pruning of the same dense model.
``--exporter dynamo`` uses the torch.export-based exporter (default opset 18) instead of the
legacy TorchScript one (default opset 17).

With ``weights=None`` every BatchNorm has default statistics, so every BN-folded Conv bias
is the same zero vector; the legacy exporter then deduplicates those initializers and feeds
most Conv biases through ``Identity(initializer)`` nodes.  ``--undedup`` replaces each such
node by a private copy of the initializer before anything is measured (all ONNX models, dense
and both pruned, get the same treatment; onnxruntime folds these Identity nodes anyway, so
latency is unaffected).  Without it graphprune (at the time of writing) sees those Convs as
having non-constant weights and prunes nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import json
import logging
import os
import platform
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # refmodels/
import time
import warnings
from collections import Counter
from typing import Any, Callable, Dict, List, Optional

import numpy as np
import onnx

try:
    import torch
    import torch_pruning as tp
    import torchvision
except ImportError as e:  # pragma: no cover - environment problem
    sys.exit(f"{e}\nThis benchmark needs torch, torchvision and torch-pruning: see the setup in "
             f"{os.path.basename(__file__)}'s docstring (a separate venv, not the project's).")

from graphprune import bench as gbench
from graphprune.pipeline import Options, prune

MAX_IR_VERSION = 10  # onnxruntime 1.31 loads these; IR 10 covers opsets <= 21
DEFAULT_OPSET = {"legacy": 17, "dynamo": 18}
INPUT_SHAPE = (1, 3, 224, 224)


# --------------------------------------------------------------------------- helpers


def _quiet():
    """The reference exporter's quiet context, with this tool's extra loggers."""
    from refmodels.export import quiet

    return quiet(("torch.onnx._internal.exporter._registration", "torch.onnx._internal.exporter._core"))


def build_resnet50(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torchvision.models.resnet50(weights=None).eval()


def export_onnx(model: torch.nn.Module, example: torch.Tensor, exporter: str, opset: int,
                undedup: bool = False) -> onnx.ModelProto:
    """Export ``model`` to an in-memory ONNX model (eval mode, BN folded into Conv)."""
    model.eval()
    with _quiet(), torch.no_grad():
        if exporter == "legacy":
            buf = io.BytesIO()
            torch.onnx.export(model, (example,), buf, dynamo=False, opset_version=opset,
                              do_constant_folding=True, input_names=["input"], output_names=["output"])
            proto = onnx.load_from_string(buf.getvalue())
        else:
            prog = torch.onnx.export(model, (example,), dynamo=True, opset_version=opset,
                                     input_names=["input"], output_names=["output"],
                                     optimize=True, verbose=False, external_data=False)
            proto = prog.model_proto
    if undedup:
        undedup_initializers(proto)
    proto.ir_version = min(proto.ir_version, MAX_IR_VERSION)
    return proto


def undedup_initializers(model: onnx.ModelProto) -> int:
    """Replace every top-level ``Identity(initializer)`` by a private copy of the initializer.

    The legacy exporter deduplicates initializers with equal values and feeds the extra
    users through ``Identity`` nodes; with ``weights=None`` every BN-folded Conv bias is the
    same zero vector, so most Conv biases arrive that way.  Returns the number of nodes
    replaced (the model is changed in place; onnxruntime computes the same thing)."""
    inits = {t.name: t for t in model.graph.initializer}
    keep, n = [], 0
    for node in model.graph.node:
        if node.op_type == "Identity" and node.domain in ("", "ai.onnx") and node.input[0] in inits:
            t = onnx.TensorProto()
            t.CopyFrom(inits[node.input[0]])
            t.name = node.output[0]
            model.graph.initializer.append(t)
            n += 1
        else:
            keep.append(node)
    if n:
        del model.graph.node[:]
        model.graph.node.extend(keep)
        outs = {o.name for o in model.graph.output}
        if outs & {t.name for t in model.graph.initializer}:
            raise RuntimeError("an Identity of an initializer is a graph output; cannot undo dedup")
    return n


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    return out


def _median(xs: List[float]) -> float:
    return float(statistics.median(xs)) if xs else float("nan")


def conv_shapes(model: onnx.ModelProto) -> Counter:
    """Multiset of Conv / Gemm weight shapes: the pruned architecture, independent of names."""
    inits = {t.name: tuple(t.dims) for t in model.graph.initializer}
    out: Counter = Counter()
    for n in model.graph.node:
        if n.op_type in ("Conv", "Gemm", "MatMul") and len(n.input) > 1 and n.input[1] in inits:
            out[(n.op_type, inits[n.input[1]])] += 1
    return out


def output_shape(model: onnx.ModelProto, feed: Dict[str, np.ndarray]) -> List[int]:
    outs = gbench.run_model(model, feed)
    return list(next(iter(outs.values())).shape)


# --------------------------------------------------------------------------- graphprune


def run_graphprune(dense: onnx.ModelProto, ratio: float, round_to: int, repeats: int) -> Dict[str, Any]:
    """Prune ``repeats`` times (the first with verify on); return the first result and median timings."""
    runs: List[Dict[str, float]] = []
    first = None
    for i in range(repeats):
        m = _copy(dense)
        opts = Options(ratio=ratio, round_to=round_to, bench=False, verify=(i == 0))
        t0 = time.perf_counter()
        res = prune(m, opts)
        wall = time.perf_counter() - t0
        t = dict(res.report["timings_s"])
        t.setdefault("score_s", 0.0)
        t["core_s"] = t["analyze_s"] + t["score_s"] + t["plan_s"] + t["rewrite_s"]
        t["wall_minus_verify_s"] = wall - t.get("verify_s", 0.0)
        runs.append(t)
        if first is None:
            first = res
    keys = ("analyze_s", "score_s", "plan_s", "rewrite_s", "core_s", "wall_minus_verify_s")
    timings = {k: _median([r[k] for r in runs]) for k in keys}
    timings["verify_s"] = runs[0].get("verify_s", float("nan"))
    timings["first_core_s"] = runs[0]["core_s"]
    s = first.report.get("summary", {})
    return {
        "model": first.model,
        "timings_s": timings,
        "runs": runs,
        "verify": first.report.get("verify"),
        "groups": s.get("groups"),
        "prunable_groups": s.get("prunable_groups"),
        "pruned_groups": s.get("pruned_groups"),
        "blocked": [{"group": gj.get("name"), "channels": gj.get("channels_before"), "why": gj["blocked"]}
                    for gj in first.report.get("groups", []) if gj.get("blocked")],
    }


# --------------------------------------------------------------------------- Torch-Pruning


@contextlib.contextmanager
def _time_dependency_graph(sink: List[float]):
    """Record the wall time of every DependencyGraph.build_dependency call."""
    cls = tp.dependency.DependencyGraph
    orig = cls.build_dependency

    def timed(self, *a, **kw):
        t0 = time.perf_counter()
        try:
            return orig(self, *a, **kw)
        finally:
            sink.append(time.perf_counter() - t0)

    cls.build_dependency = timed
    try:
        yield
    finally:
        cls.build_dependency = orig


def run_torch_pruning(dense: torch.nn.Module, ratio: float, round_to: int, repeats: int,
                      exporter: str, opset: int, undedup: bool = False) -> Dict[str, Any]:
    runs: List[Dict[str, float]] = []
    pruned = None
    for _ in range(repeats):
        m = copy.deepcopy(dense).eval()
        example = torch.randn(*INPUT_SHAPE)
        dg: List[float] = []
        with _quiet(), _time_dependency_graph(dg):
            t0 = time.perf_counter()
            pruner = tp.pruner.MetaPruner(
                m, example,
                importance=tp.importance.MagnitudeImportance(p=2),
                pruning_ratio=ratio,
                ignored_layers=[m.fc],
                global_pruning=False,
                round_to=round_to,
            )
            t1 = time.perf_counter()
            pruner.step()
            t2 = time.perf_counter()
        runs.append({"init_s": t1 - t0, "dg_build_s": sum(dg), "step_s": t2 - t1,
                     "init_plus_step_s": t2 - t0})
        if pruned is None:
            pruned = m
    with torch.no_grad():
        y = pruned(torch.randn(*INPUT_SHAPE))
    timings = {k: _median([r[k] for r in runs]) for k in runs[0]}
    timings["first_step_s"] = runs[0]["step_s"]
    return {
        "model": export_onnx(pruned, torch.randn(*INPUT_SHAPE), exporter, opset, undedup),
        "torch_output_shape": list(y.shape),
        "timings_s": timings,
        "runs": runs,
    }


# --------------------------------------------------------------------------- measurement


def measure(dense: onnx.ModelProto, pruned: onnx.ModelProto, dense_cost, feed,
            threads: int, repeats: int) -> Dict[str, Any]:
    macs, params = gbench.count_macs_params(pruned)
    lat = gbench.measure_latency(dense, pruned, feed, threads=threads, repeats=repeats)
    macs_ratio = dense_cost[0] / macs if macs else float("nan")
    return {
        "macs": int(macs),
        "params": int(params),
        "macs_ratio": macs_ratio,
        "params_ratio": dense_cost[1] / params if params else float("nan"),
        "dense_ms": lat["before_ms"],
        "pruned_ms": lat["after_ms"],
        "speedup": lat["speedup"],
        "realization": lat["speedup"] / macs_ratio if macs_ratio else float("nan"),
        "output_shape": output_shape(pruned, feed),
    }


def bench_round_to(args, round_to: int, dense_torch, dense_onnx, dense_cost, feed, opset, log) -> Dict[str, Any]:
    log(f"[round_to={round_to}] graphprune prune x{args.prune_repeats} ...")
    gp = run_graphprune(dense_onnx, args.ratio, round_to, args.prune_repeats)
    log(f"[round_to={round_to}] Torch-Pruning prune x{args.prune_repeats} + export ...")
    tpr = run_torch_pruning(dense_torch, args.ratio, round_to, args.prune_repeats, args.exporter, opset,
                            args.undedup)
    log(f"[round_to={round_to}] measuring graphprune model ...")
    gm = measure(dense_onnx, gp["model"], dense_cost, feed, args.threads, args.repeats)
    log(f"[round_to={round_to}] measuring Torch-Pruning model ...")
    tm = measure(dense_onnx, tpr["model"], dense_cost, feed, args.threads, args.repeats)
    same_arch = conv_shapes(gp["model"]) == conv_shapes(tpr["model"])
    log(f"[round_to={round_to}] timing graphprune model against Torch-Pruning model ...")
    head = gbench.measure_latency(tpr["model"], gp["model"], feed, threads=args.threads, repeats=args.repeats)
    if args.save_dir:
        os.makedirs(args.save_dir, exist_ok=True)
        onnx.save_model(gp["model"], os.path.join(args.save_dir, f"resnet50_gp_r{round_to}.onnx"))
        onnx.save_model(tpr["model"], os.path.join(args.save_dir, f"resnet50_tp_r{round_to}.onnx"))
    return {
        "round_to": round_to,
        "graphprune": {**gm, "timings_s": gp["timings_s"], "verify": gp["verify"],
                       "groups": gp["groups"], "prunable_groups": gp["prunable_groups"],
                       "pruned_groups": gp["pruned_groups"], "blocked": gp["blocked"]},
        "torch_pruning": {**tm, "timings_s": tpr["timings_s"], "torch_output_shape": tpr["torch_output_shape"]},
        "same_architecture": same_arch,
        "gp_vs_tp": {"tp_ms": head["before_ms"], "gp_ms": head["after_ms"], "speedup": head["speedup"]},
    }


# --------------------------------------------------------------------------- report


def table(res: Dict[str, Any], dense: Dict[str, Any], args) -> str:
    g, t = res["graphprune"], res["torch_pruning"]
    gt, tt = g["timings_s"], t["timings_s"]
    v = g.get("verify") or {}

    def f(x, fmt="{:.3f}"):
        return fmt.format(x) if isinstance(x, (int, float)) and x == x else "n/a"

    rows = [
        ("MACs (G)", f(dense["macs"] / 1e9), f(g["macs"] / 1e9), f(t["macs"] / 1e9)),
        ("params (M)", f(dense["params"] / 1e6), f(g["params"] / 1e6), f(t["params"] / 1e6)),
        ("MACs ratio (dense/pruned)", "1.000", f(g["macs_ratio"]), f(t["macs_ratio"])),
        ("params ratio (dense/pruned)", "1.000", f(g["params_ratio"]), f(t["params_ratio"])),
        (f"ORT CPU latency ms, dense, paired with each tool ({args.threads} thr)", "-",
         f(g["dense_ms"], "{:.2f}"), f(t["dense_ms"], "{:.2f}")),
        (f"ORT CPU latency ms, pruned ({args.threads} thr)", "-",
         f(g["pruned_ms"], "{:.2f}"), f(t["pruned_ms"], "{:.2f}")),
        ("speedup (median of pair ratios)", "1.000", f(g["speedup"]), f(t["speedup"])),
        ("speedup realization (speedup / MACs ratio)", "-", f(g["realization"]), f(t["realization"])),
        ("output shape", str(dense["output_shape"]), str(g["output_shape"]), str(t["output_shape"])),
        ("prune time s (gp: analyze+score+plan+rewrite; tp: step)", "-", f(gt["core_s"]), f(tt["step_s"])),
        ("  gp analyze / score / plan / rewrite s", "-",
         " / ".join(f(gt[k]) for k in ("analyze_s", "score_s", "plan_s", "rewrite_s")), "-"),
        ("  gp analyze+score+rewrite s", "-", f(gt["analyze_s"] + gt["score_s"] + gt["rewrite_s"]), "-"),
        ("  gp prune() wall minus verify s (incl. MAC count)", "-", f(gt["wall_minus_verify_s"]), "-"),
        ("  tp pruner init s (DependencyGraph build)", "-", "-",
         f"{f(tt['init_s'])} ({f(tt['dg_build_s'])})"),
        ("  tp init + step s", "-", "-", f(tt["init_plus_step_s"])),
        ("  first (cold) run prune time s", "-", f(gt["first_core_s"]), f(tt["first_step_s"])),
        ("verify max_abs_diff (passed)", "-",
         f"{f(v.get('max_abs_diff'), '{:.2e}')} ({v.get('passed')})", "-"),
    ]
    head = (f"### resnet50, ratio {args.ratio}, round_to {res['round_to']}, exporter {args.exporter}, "
            f"ORT threads {args.threads}, latency repeats {args.repeats}, prune repeats {args.prune_repeats} (median)")
    lines = [head, "", "| metric | dense | graphprune | Torch-Pruning |", "|---|---|---|---|"]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows]
    h = res["gp_vs_tp"]
    lines.append("")
    lines.append(f"Head to head (pruned vs pruned, interleaved): graphprune {f(h['gp_ms'], '{:.2f}')} ms, "
                 f"Torch-Pruning {f(h['tp_ms'], '{:.2f}')} ms, TP/graphprune median ratio {f(h['speedup'])}")
    lines.append(f"Pruned architectures identical (Conv/Gemm weight shapes): {res['same_architecture']}; "
                 f"graphprune groups: {g['groups']} ({g['prunable_groups']} prunable, {g['pruned_groups']} pruned)")
    gp_ast = gt["analyze_s"] + gt["score_s"] + gt["rewrite_s"]
    if not g["pruned_groups"] or g["macs"] >= dense["macs"]:
        lines.append("WARNING: graphprune pruned nothing; blocked groups:")
        lines += [f"  - {b['group']} ({b['channels']} ch): {'; '.join(b['why'])}" for b in g["blocked"]]
        lines.append("Goal: graphprune realization >= 0.98: n/a (nothing pruned) -> FAIL")
    else:
        lines.append(f"Goal: graphprune realization >= 0.98: {f(g['realization'])} -> "
                     f"{'PASS' if g['realization'] >= 0.98 else 'FAIL'}")
    lines.append(f"Goal: graphprune analyze+score+rewrite <= Torch-Pruning step: {f(gp_ast)} s vs "
                 f"{f(tt['step_s'])} s -> {'PASS' if gp_ast <= tt['step_s'] else 'FAIL'} "
                 f"(vs TP init+step {f(tt['init_plus_step_s'])} s: "
                 f"{'PASS' if gp_ast <= tt['init_plus_step_s'] else 'FAIL'})")
    return "\n".join(lines)


def _busy_s() -> Optional[tuple]:
    """(CPU seconds the whole machine has been busy, CPU seconds this process used); Linux only."""
    try:
        with open("/proc/stat") as fh:
            f = [int(x) for x in fh.readline().split()[1:]]
        busy = (sum(f[:8]) - f[3] - f[4]) / os.sysconf("SC_CLK_TCK")  # all but idle, iowait
    except Exception:
        return None
    t = os.times()
    return busy, t.user + t.system


def _other_cores(window: float) -> Optional[float]:
    """Cores used by other processes over ``window`` seconds (this process sleeps meanwhile)."""
    a = _busy_s()
    time.sleep(window)
    b = _busy_s()
    if a is None or b is None:
        return None
    return max(0.0, (b[0] - a[0]) - (b[1] - a[1])) / window


def _dist_version(name: str) -> str:
    """Installed distribution version (torch_pruning.__version__ lags the wheel's)."""
    try:
        from importlib.metadata import version
        return version(name)
    except Exception:
        return getattr(tp, "__version__", "?")


def _strip(d: Any) -> Any:
    if isinstance(d, dict):
        return {k: _strip(v) for k, v in d.items() if not isinstance(v, onnx.ModelProto)}
    if isinstance(d, list):
        return [_strip(x) for x in d]
    if isinstance(d, (np.floating, np.integer)):
        return d.item()
    return d


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--ratio", type=float, default=0.5, help="per-layer channel pruning ratio (default 0.5)")
    p.add_argument("--round-to", type=int, nargs="+", default=[1],
                   help="channel multiple; several values run several prunings (default 1)")
    p.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads (default 1)")
    p.add_argument("--repeats", type=int, default=30, help="latency pairs per comparison (default 30)")
    p.add_argument("--prune-repeats", type=int, default=5,
                   help="prunings per tool; timings are the median (default 5)")
    p.add_argument("--exporter", choices=("legacy", "dynamo"), default="legacy")
    p.add_argument("--opset", type=int, default=None, help="default: 17 legacy, 18 dynamo")
    p.add_argument("--undedup", action="store_true",
                   help="before pruning, replace the legacy exporter's Identity(initializer) nodes "
                        "(deduplicated equal initializers) by private copies; applies to every ONNX "
                        "model measured (dense and both pruned), latency is unaffected")
    p.add_argument("--torch-threads", type=int, default=0,
                   help="torch intra-op threads while Torch-Pruning runs (default 0: torch's default)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", metavar="PATH", help="write all results as JSON")
    p.add_argument("--save-dir", metavar="DIR", help="also save the dense and pruned ONNX files here")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    args = p.parse_args(argv)
    if any(r < 1 for r in args.round_to):
        p.error("--round-to must be >= 1")
    opset = args.opset or DEFAULT_OPSET[args.exporter]
    if args.torch_threads > 0:
        torch.set_num_threads(args.torch_threads)

    def log(msg: str) -> None:
        if not args.quiet:
            print(msg, file=sys.stderr, flush=True)

    t_start = time.perf_counter()
    busy0 = _busy_s()
    other = _other_cores(1.0)
    if other is not None and other > 0.2:
        log(f"WARNING: other processes are using {other:.2f} cores now; timings will be noisy")
    log(f"building resnet50 (weights=None, seed {args.seed}) and exporting ({args.exporter}, opset {opset}) ...")
    dense_torch = build_resnet50(args.seed)
    dense_onnx = export_onnx(dense_torch, torch.randn(*INPUT_SHAPE), args.exporter, opset)
    n_identity = sum(1 for n in dense_onnx.graph.node if n.op_type == "Identity")
    n_undedup = undedup_initializers(dense_onnx) if args.undedup else 0
    if n_undedup:
        log(f"--undedup: replaced {n_undedup} Identity(initializer) nodes by private initializers")
    if args.save_dir:
        os.makedirs(args.save_dir, exist_ok=True)
        onnx.save_model(dense_onnx, os.path.join(args.save_dir, "resnet50_dense.onnx"))
    feed = gbench.random_inputs(dense_onnx, seed=args.seed)
    dense_cost = gbench.count_macs_params(dense_onnx)
    dense = {"macs": int(dense_cost[0]), "params": int(dense_cost[1]),
             "output_shape": output_shape(dense_onnx, feed)}

    results = []
    for r in args.round_to:
        results.append(bench_round_to(args, r, dense_torch, dense_onnx, dense_cost, feed, opset, log))

    versions = {"python": platform.python_version(), "torch": torch.__version__,
                "torchvision": torchvision.__version__, "torch_pruning": _dist_version("torch-pruning"),
                "onnx": onnx.__version__, "onnxruntime": gbench.ort.__version__, "numpy": np.__version__}
    print(f"## resnet50 pruning: graphprune vs Torch-Pruning {versions['torch_pruning']}")
    print("")
    print("versions: " + ", ".join(f"{k} {v}" for k, v in versions.items())
          + f"; cpu cores {os.cpu_count()}; torch threads {torch.get_num_threads()}")
    print(f"dense ONNX ({args.exporter}, opset {opset}): {n_identity} Identity nodes"
          + (f", {n_undedup} Identity(initializer) replaced by private initializers (--undedup)"
             if args.undedup else ""))
    print("")
    for res in results:
        print(table(res, dense, args))
        print("")
    total = time.perf_counter() - t_start
    busy1 = _busy_s()
    others = None
    if busy0 is not None and busy1 is not None:
        others = max(0.0, (busy1[0] - busy0[0]) - (busy1[1] - busy0[1])) / total
    print(f"total benchmark time: {total:.1f} s; CPU used by other processes during the run: "
          + ("unknown" if others is None else f"{others:.2f} cores on average"))
    if others is not None and others > 0.1:
        print("WARNING: other processes were using the CPU during this run: timings are noisy")

    if args.json:
        out = {"args": vars(args), "opset": opset, "versions": versions, "dense": dense,
               "dense_identity_nodes": n_identity, "undedup_replaced": n_undedup,
               "results": results, "total_s": total, "other_processes_cores": others}
        with open(args.json, "w") as fh:
            json.dump(_strip(out), fh, indent=2)
        log(f"wrote {args.json}")

    ok = all(list(r["graphprune"]["output_shape"]) == [1, 1000] and list(r["torch_pruning"]["output_shape"]) == [1, 1000]
             for r in results)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
