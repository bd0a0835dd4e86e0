"""The data path as one line:
load -> analyze -> [calibrate] -> score -> plan -> rewrite -> verify -> [repair] -> bench -> save."""

from __future__ import annotations

import gc
import numbers
import time
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence

import onnx

from . import bench
from .analyze import analyze, consumer_inputs, groups as find_groups
from .errors import UsageError, VerifyError
from .repair import PRIORS
from .fold import fold_shapes_into, fold_weight_subgraphs, untie_constants
from .graph import Graph
from .plan import Plan, global_plan, make_plan, uniform_for_target
from .rewrite import rewrite
from .score import CRITERIA, needs as criterion_needs, score
from .verify import agreement, verify

SCOPES = ("uniform", "global")
NORMALIZE = ("mean", "max", "std", "none")
REDUCE = ("mean", "sum", "max")
REPAIR = ("none", "bias", "lstsq")


@dataclass
class Options:
    ratio: float = 0.5
    head_ratio: Optional[float] = None      # attention heads (default: ratio)
    mlp_ratio: Optional[float] = None       # MLP widths and CNN channels (default: ratio)
    prune_hidden: bool = False              # also prune the residual (hidden) width: not exact
    round_to: Any = 1                       # int >= 1, or "auto": bench.simd_block() of this machine
    protect: Sequence[str] = ()
    criterion: str = "l2"
    reduce: str = "mean"
    seed: int = 0
    allow_inexact: bool = False
    threads: int = 1
    bench: Optional[bool] = True            # None: auto (skipped for models over AUTO_SKIP_BYTES)
    bench_repeats: int = 30
    verify: Optional[bool] = True           # None: auto (skipped for models over AUTO_SKIP_BYTES)
    seq_len: int = 64                       # value of non-batch symbolic dims when counting MACs
    normalize: str = "mean"                 # per-layer score normalisation: mean | max | std | none
    scope: str = "uniform"                  # uniform: every group its ratio; global: one threshold
    target_macs: Optional[float] = None     # reach this fraction of the dense MACs
    target_params: Optional[float] = None   # reach this fraction of the dense parameters
    min_ratio: float = 0.0                  # per-group bounds on the fraction removed
    max_ratio: Optional[float] = None       # (global scope default: 0.9)
    per_cost: bool = True                   # global scope with a target: rank by importance per cost
    calib: Any = None                       # Calibration, or any iterable of feed dicts
    calib_batch: int = 16
    repair: str = "none"                    # none | bias | lstsq
    ridge: float = 1e-3                     # lstsq repair: ridge strength relative to mean diag(X·Xᵀ)
    ridge_prior: str = "zero"               # lstsq repair: ridge pulls toward zero (or the kept weights)
    taylor_samples: int = 8
    taylor_eps: float = 1e-2
    sparsity: Optional[float] = None        # sparse layers (sparsify.py): fraction of weights zeroed
    pattern: Optional[str] = None           # unstructured | N:M | block:RxC (None: no sparse step)
    sparse_kernels: str = "auto"            # auto: timed per layer | always | never (dense with zeros)
    sparse_criterion: Optional[str] = None  # magnitude | wanda | sparsegpt | random (default from criterion)
    sparse_margin: float = 1.05             # a layer's kernel must be this much faster than dense
    sparse_sequential: bool = False         # sparsegpt: prune stage by stage on the sparse model's inputs

    def sparse(self) -> bool:
        return self.sparsity is not None or self.pattern is not None

    def structured(self) -> bool:
        """Whether structured pruning has anything to do (else its scoring is skipped)."""
        return bool(self.ratio or self.head_ratio or self.mlp_ratio or self.target() is not None)

    def kind_ratios(self) -> Dict[str, Optional[float]]:
        return {"heads": self.head_ratio, "channels": self.mlp_ratio}

    def rounding(self) -> int:
        """``round_to`` as a number (``"auto"``: this machine's SIMD block, bench.simd_block)."""
        return bench.simd_block() if self.round_to == "auto" else int(self.round_to)

    def check(self) -> None:
        for name in ("ratio", "head_ratio", "mlp_ratio"):
            v = getattr(self, name)
            if v is not None and not (0.0 <= v < 1.0):
                raise UsageError(f"--{name.replace('_', '-')} must be in [0, 1), got {v}")
        if self.round_to != "auto" and (not isinstance(self.round_to, numbers.Integral) or isinstance(self.round_to, bool)
                                        or self.round_to < 1):
            raise UsageError(f"--round-to must be an integer >= 1 or auto, got {self.round_to!r}")
        if self.criterion not in CRITERIA:
            raise UsageError(f"unknown criterion {self.criterion!r}; choose from {', '.join(sorted(CRITERIA))}")
        if self.threads < 1:
            raise UsageError("--threads must be >= 1")
        for name, allowed in (("scope", SCOPES), ("normalize", NORMALIZE), ("reduce", REDUCE), ("repair", REPAIR),
                              ("ridge_prior", PRIORS)):
            if getattr(self, name) not in allowed:
                raise UsageError(f"--{name.replace('_', '-')} must be one of {', '.join(allowed)}, "
                                 f"got {getattr(self, name)!r}")
        for name in ("target_macs", "target_params"):
            v = getattr(self, name)
            if v is not None and not (0.0 < v <= 1.0):
                raise UsageError(f"--{name.replace('_', '-')} must be in (0, 1], got {v}")
        if self.target_macs is not None and self.target_params is not None:
            raise UsageError("give --target-macs or --target-params, not both")
        if not (0.0 <= self.min_ratio < 1.0):
            raise UsageError(f"--min-ratio must be in [0, 1), got {self.min_ratio}")
        if self.max_ratio is not None and not (self.min_ratio <= self.max_ratio < 1.0):
            raise UsageError(f"--max-ratio must be in [min-ratio, 1), got {self.max_ratio}")
        if self.seq_len < 1:
            raise UsageError(f"--seq-len must be >= 1, got {self.seq_len}")
        if self.calib_batch < 1:
            raise UsageError("--calib-batch must be >= 1")
        need = criterion_needs(self.criterion)
        if self.calib is None and need in ("calib", "gram", "samples"):
            raise UsageError(f"criterion {self.criterion!r} needs calibration data: pass --calib FILE.npz or "
                             f"--calib-dir DIR (Options(calib=...) in Python)")
        if self.calib is None and self.repair != "none":
            raise UsageError(f"--repair {self.repair} needs calibration data: pass --calib FILE.npz or "
                             f"--calib-dir DIR (Options(calib=...) in Python)")
        self.check_sparse()

    def check_sparse(self) -> None:
        from .sparsify import MASK_CRITERIA, Pattern, resolve_sparsity

        if not self.sparse():
            return
        resolve_sparsity(Pattern.parse(self.pattern or "unstructured"), self.sparsity)
        if self.sparse_kernels not in ("auto", "always", "never"):
            raise UsageError(f"--sparse-kernels must be auto, always or never, got {self.sparse_kernels!r}")
        if self.sparse_criterion is not None and self.sparse_criterion not in MASK_CRITERIA:
            raise UsageError(f"--sparse-criterion must be one of {', '.join(MASK_CRITERIA)}, "
                             f"got {self.sparse_criterion!r}")
        if self.calib is None and self.sparse_criterion in ("wanda", "sparsegpt"):
            raise UsageError(f"--sparse-criterion {self.sparse_criterion} needs calibration data: pass "
                             f"--calib FILE.npz or --calib-dir DIR")

    def target(self):
        if self.target_macs is not None:
            return ("macs", float(self.target_macs))
        if self.target_params is not None:
            return ("params", float(self.target_params))
        return None


@dataclass
class Result:
    model: onnx.ModelProto
    plan: Plan
    report: dict
    timings: Dict[str, float] = field(default_factory=dict)


Progress = Callable[[str], None]

# verify and bench run the dense, masked-dense and pruned models in onnxruntime at once:
# above this much weight data they are skipped unless asked for
AUTO_SKIP_BYTES = 1 << 30


def _noop(msg: str) -> None:
    pass


class Analyzed:
    """A model with its analysis and groups, reusable by several plans."""

    def __init__(self, model: onnx.ModelProto):
        bench.lean_heap()      # before the analysis' own large temporaries (see lean_heap)
        gc_was = gc.isenabled()
        gc.disable()  # the analysis allocates many small objects and frees none: no cycles
        try:
            self._run(model)
        finally:
            if gc_was:
                gc.enable()

    def _run(self, model: onnx.ModelProto) -> None:
        self.original = model
        m = fold_weight_subgraphs(model)
        m = untie_constants(m, inplace=m is not model)      # the caller's model is never modified
        g0 = Graph(m)
        # a private copy is folded in place: one copy of the weights fewer at the peak
        folded, changed = fold_shapes_into(m, g0, inplace=m is not model)
        self.model = folded
        self.graph = Graph(folded, known_shapes=g0.shapes, runtime=False) if changed else g0
        del g0
        self.analysis = analyze(folded, self.graph)
        self.groups, self.root = find_groups(self.analysis)


def calibration(model: onnx.ModelProto, opts: Options):
    """The options' calibration data as a checked Calibration (None when there is none)."""
    from .calib import Calibration

    c = opts.calib
    if c is None:
        return None
    if not isinstance(c, Calibration):
        c = Calibration(c, "calibration feeds")
    return c.check(model)


def calibrate(an: Analyzed, opts: Options, calib) -> Optional[dict]:
    """Statistics the criterion needs: per consumer input, streaming over the calibration
    batches (synthetic inputs for data-free criteria that need them)."""
    from .calib import ConvSpec, Request, collect, synthetic

    need = criterion_needs(opts.criterion)
    if need not in ("calib", "gram", "synthetic"):
        return None
    if need == "synthetic":
        calib = synthetic(an.model, an.graph, seed=opts.seed)
    reqs = []
    gram = need in ("gram", "synthetic")
    for g in an.groups:
        if not g.prunable:
            continue
        for ci in consumer_inputs(g, an.graph):
            conv = None
            if gram and ci.op == "Conv" and ci.member.member.groups == 1:
                node = an.graph.nodes[ci.node]
                W = an.graph.const(node.input[1])
                try:
                    conv = ConvSpec.of(node, W.shape, an.graph.shape(ci.tensor))
                except ValueError:
                    reqs.append(Request(ci.tensor, ci.axis))
                    continue
            use_gram = gram and (ci.op != "Conv" or conv is not None)
            reqs.append(Request(ci.tensor, ci.axis, use_gram, conv))
    return collect(an.model, calib, reqs, graph=an.graph, threads=opts.threads)


def plan_for(an: Analyzed, model: onnx.ModelProto, opts: Options, calib=None,
             timings: Optional[dict] = None, progress: "Progress" = None) -> Plan:
    """Score every group and allocate: uniform ratio or one global threshold, optionally
    searching for a MACs/params target with the cost model."""
    progress = progress or _noop
    t = timings if timings is not None else {}
    t0 = time.perf_counter()
    kw = {}
    stats = None
    if criterion_needs(opts.criterion) in ("calib", "gram", "synthetic"):
        progress("calib")
        stats = calibrate(an, opts, calib)
        t["calib_s"] = time.perf_counter() - t0
        kw["calib"] = stats
    if criterion_needs(opts.criterion) == "samples":
        kw.update(calib=calib, model=an.model, samples=calib.first(opts.taylor_samples),
                  eps=opts.taylor_eps, threads=opts.threads)
    t1 = time.perf_counter()
    progress("score")
    scores = score(an.groups, an.graph, opts.criterion, opts.reduce, opts.seed, normalize=opts.normalize, **kw)
    t["score_s"] = time.perf_counter() - t1
    t1 = time.perf_counter()
    progress("plan")
    target = opts.target()
    allow = opts.allow_inexact or opts.prune_hidden
    cost = None
    if target is not None:
        from .cost import CostModel
        cost = CostModel(an.model, an.analysis, an.root, count_feed(an.model, opts.seq_len))
    if opts.scope == "global":
        plan = global_plan(an.groups, scores, opts.ratio, opts.rounding(), opts.protect, allow,
                           min_ratio=opts.min_ratio, max_ratio=0.9 if opts.max_ratio is None else opts.max_ratio,
                           normalize=opts.normalize, target=target, cost=cost, per_cost=opts.per_cost)
    elif target is not None:
        plan = uniform_for_target(an.groups, scores, target, cost, opts.rounding(), opts.protect, allow,
                                  min_ratio=opts.min_ratio, max_ratio=opts.max_ratio)
    else:
        plan = make_plan(an.groups, scores, opts.ratio, opts.rounding(), opts.protect, allow,
                         kind_ratios=opts.kind_ratios(), min_ratio=opts.min_ratio, max_ratio=opts.max_ratio)
    t["plan_s"] = time.perf_counter() - t1
    return plan


def prune(model: onnx.ModelProto, opts: Options, progress: Progress = _noop,
          plan_json: Optional[dict] = None) -> Result:
    opts.check()
    t = {}
    t0 = time.perf_counter()
    progress("analyze")
    an = Analyzed(model)
    t["analyze_s"] = time.perf_counter() - t0
    calib = calibration(model, opts)
    if plan_json is None:
        # sparsity only: no structured scoring (nor its calibration) is needed
        popts = opts if opts.structured() or not opts.sparse() else replace(opts, criterion="l2")
        plan = plan_for(an, model, popts, calib, t, progress)
    else:
        t1 = time.perf_counter()
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
                    "prune_hidden": opts.prune_hidden, "round_to": opts.rounding(), "criterion": opts.criterion,
                    "protect": list(opts.protect), "seed": opts.seed},
    }
    if opts.scope != "uniform" or opts.target() is not None or opts.repair != "none" \
            or opts.normalize != "mean" or opts.reduce != "mean" or calib is not None:
        report["summary"]["options"].update(
            {"scope": opts.scope, "normalize": opts.normalize, "reduce": opts.reduce,
             "target_macs": opts.target_macs, "target_params": opts.target_params, "min_ratio": opts.min_ratio,
             "max_ratio": opts.max_ratio, "repair": opts.repair,
             "calibration_samples": calib.samples() if calib is not None else 0})
        if "target" in plan.options:
            report["summary"]["target"] = plan.options["target"]
    if opts.sparse():
        report["summary"]["options"].update({"sparsity": opts.sparsity, "pattern": opts.pattern or "unstructured",
                                             "sparse_kernels": opts.sparse_kernels,
                                             "sparse_criterion": opts.sparse_criterion})
    big = _weight_bytes(model) > AUTO_SKIP_BYTES
    do_verify = opts.verify if opts.verify is not None else not big
    do_bench = opts.bench if opts.bench is not None else not big
    if do_verify:
        t1 = time.perf_counter()
        progress("verify")
        report["verify"] = verify(model, pruned, pj)
        t["verify_s"] = time.perf_counter() - t1
    elif opts.verify is None:
        report["verify"] = {"skipped": f"skipped: weights over {AUTO_SKIP_BYTES >> 30} GiB (use --verify to run it)"}
    structured = pruned
    if opts.repair != "none" and removed:
        from .repair import repair
        t1 = time.perf_counter()
        progress("repair")
        feeds = list(calib)
        repaired, info = repair(an.model, pruned, an, pj, feeds, opts.repair, opts.ridge, opts.threads,
                                prior=opts.ridge_prior)
        probe = feeds[:8]
        info["agreement"] = {"pruned": agreement(model, pruned, probe), "repaired": agreement(model, repaired, probe)}
        if "verify" in report:
            report["verify"]["checked"] = "rewrite, before repair (masked-dense oracle)"
        report["repair"] = info
        pruned = repaired
        t["repair_s"] = time.perf_counter() - t1
    if opts.sparse():
        from .sparsify import sparsify
        t1 = time.perf_counter()
        sopts = replace(opts, verify=do_verify, bench=do_bench)      # auto: off for models over 1 GiB
        pruned, report["sparse"] = sparsify(model, structured, pruned, pj, sopts, calib, progress)
        t["sparsify_s"] = time.perf_counter() - t1
    del structured
    progress("count")
    feed = count_feed(model, opts.seq_len)
    mb, pb = bench.count_macs_params(model, feed)
    ma, pa = bench.count_macs_params(pruned, feed)
    if "sparse" in report and report["sparse"].get("converted"):
        from .sparsify import sparse_counts
        sc = sparse_counts(pruned, feed)       # sparse ops: nonzero MACs, stored bytes
        ma = sc["macs"]
        report["sparse"]["counts"] = {k: sc[k] for k in ("stored_bytes", "dense_bytes", "layers")}
    report["macs"] = {"before": int(mb), "after": int(ma)}
    report["params"] = {"before": int(pb), "after": int(pa)}
    if do_bench:
        progress("bench")
        def timed(size):                      # free dims: the first size the model runs at (see verify)
            feed = bench.random_inputs(model, seed=opts.seed, other=size)
            return bench.measure_latency(model, pruned, feed, threads=opts.threads, repeats=opts.bench_repeats)
        try:
            size, lat = bench.at_free_sizes(model, timed)
            report["latency_ms"] = {"before": lat["before_ms"], "after": lat["after_ms"],
                                    "speedup": lat["speedup"], "threads": opts.threads}
            if bench.free_dims(model):
                report["latency_ms"]["free_dims"] = size
        except Exception as e:  # e.g. custom ops onnxruntime lacks
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
            report["latency_ms"] = {"skipped": f"onnxruntime cannot run the model: {first}"}
    report["timings_s"] = t
    return Result(pruned, plan, report, t)


def _weight_bytes(model: onnx.ModelProto) -> int:
    total = 0
    for t in model.graph.initializer:
        if t.data_location == onnx.TensorProto.EXTERNAL:
            total += int(next((e.value for e in t.external_data if e.key == "length"), 0) or 0)
        else:
            total += len(t.raw_data) or t.ByteSize()
    return total


def count_feed(model: onnx.ModelProto, seq_len: int) -> Optional[dict]:
    """Inputs for run-time MAC counting when the graph has symbolic dims (batch 1, others seq_len)."""
    syms = {d.dim_param for vi in model.graph.input for d in vi.type.tensor_type.shape.dim
            if d.HasField("dim_param") and d.dim_param}
    # with a feed, dims static inference cannot resolve (Swin's window partition) are measured
    # in onnxruntime; never for models whose data stays on disk
    if any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer):
        return None if not syms else bench.random_inputs(model, seed=0, batch=1, dims=_seq_dims(model, syms, seq_len))
    return bench.random_inputs(model, seed=0, batch=1, dims=_seq_dims(model, syms, seq_len))


def _seq_dims(model: onnx.ModelProto, syms, seq_len: int) -> dict:
    """Every symbol but the batch takes seq_len; the batch is a symbol named like one, or, when no
    symbol is, one on the first axis of inputs only (tf2onnx names it ``unk__N``)."""
    named = {s for s in syms if bench.is_batch_symbol(s)}
    batch = named or bench.batch_symbols(model)       # [seq, batch, d] inputs name their batch
    return {s: seq_len for s in syms if s not in batch}


def _unchanged(model: onnx.ModelProto) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    return out


def check_verified(report: dict) -> None:
    sv = report.get("sparse", {}).get("verify")
    if sv is not None and not sv.get("passed", True):
        bad = next(k for k, x in sv.items() if isinstance(x, dict) and not x.get("passed", True))
        x = sv[bad]
        raise VerifyError(f"verification failed: sparse model, {bad.replace('_', ' ')} "
                          f"({x.get('reason') or 'max_rel_diff=%s' % x.get('max_rel_diff')})")
    v = report.get("verify")
    if v is not None and "skipped" not in v and not v.get("passed"):
        why = v.get("reason") or f"max_abs_diff={v.get('max_abs_diff')}"
        raise VerifyError(f"verification failed: pruned model disagrees with the masked-dense oracle ({why})")
