"""The data path as one line (docs/architecture.md):
load -> analyze -> [calibrate] -> score -> plan -> rewrite -> verify -> [repair] -> count -> bench -> save."""

from __future__ import annotations

import gc
import time
from dataclasses import dataclass, field, replace
from typing import Callable, Dict, List, Optional, Sequence

import onnx
from onnx.external_data_helper import uses_external_data

from . import count, inputs, memory, runtime
from .analyze import analyze, consumer_inputs, groups as find_groups
from .errors import UsageError, VerifyError
from .fold import fold_shapes_into, fold_weight_subgraphs, untie_constants
from .graph import Graph
from .plan import Plan, global_plan, make_plan, uniform_for_target
from .rewrite import rewrite
from .score import criterion_name, needs as criterion_needs, score
from .verify import agreement, verify
from .choices import (NORMALIZE, REDUCE, REPAIR, SCOPES, Normalize, Provider, Reduce, RepairMode,  # noqa: F401
                      RidgePrior, Scope)
from .options import Options  # noqa: F401  (defined in options.py; pipeline.Options is the same class)


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


class AnalyzedModel:
    """A model ready to plan: the folded model (``model``), its read-only index (``graph``), the
    engine's raw :class:`~graphprune.analyze.engine.Analysis` (``analysis``), its groups and the
    root atom of every atom (``root``); reusable by several plans. (``Analyzed`` is the old name.)"""

    def __init__(self, model: onnx.ModelProto):
        memory.maybe_lean_heap()      # before the analysis' own large temporaries (see lean_heap)
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



Analyzed = AnalyzedModel

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
            patches = ci.kind(an.graph).patches
            if gram and patches and ci.member.member.groups == 1:
                node = an.graph.nodes[ci.node]
                W = an.graph.const(node.input[ci.kind(an.graph).weight])
                try:
                    conv = ConvSpec.of(node, W.shape, an.graph.shape(ci.tensor))
                except ValueError:
                    reqs.append(Request(ci.tensor, ci.axis))
                    continue
            use_gram = gram and (not patches or conv is not None)
            reqs.append(Request(ci.tensor, ci.axis, use_gram, conv))
    return collect(an.model, calib, reqs, graph=an.graph, threads=opts.threads)


def scores_for(an: Analyzed, opts: Options, calib=None, timings: Optional[dict] = None,
               progress: "Progress" = None) -> dict:
    """Every prunable group's unit scores under the options' criterion (calibration statistics
    collected first when it needs them)."""
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
    return scores


def plan_for(an: Analyzed, model: onnx.ModelProto, opts: Options, calib=None,
             timings: Optional[dict] = None, progress: "Progress" = None) -> Plan:
    """Score every group and allocate: uniform ratio or one global threshold, optionally
    searching for a MACs/params target with the cost model."""
    progress = progress or _noop
    t = timings if timings is not None else {}
    scores = scores_for(an, opts, calib, t, progress)
    t1 = time.perf_counter()
    progress("plan")
    target = opts.target()
    allow = opts.allow_inexact or opts.prune_hidden
    cost = None
    if target is not None:
        from .cost import CostModel
        cost = CostModel(an.model, an.analysis, an.root, count_feed(an.model, opts.seq_len))
    if opts.target_latency is not None:
        from .latency import target_latency_plan
        probe = calib.first(8) if calib is not None else None
        plan = target_latency_plan(an, scores, opts, progress, probe=probe)
    elif opts.scope == "global":
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


def prepare(model: onnx.ModelProto, opts: Options) -> tuple:
    """(model, notes): initializers that are also graph inputs become constants (dropped from the
    inputs of a copy) unless ``opts.keep_initializer_inputs``; the caller's model is untouched."""
    from .io import drop_initializer_inputs, initializer_inputs

    notes = []
    if not opts.keep_initializer_inputs and initializer_inputs(model):
        model = _unchanged(model)
        names = drop_initializer_inputs(model)
        notes.append(initializer_inputs_note(names))
    return model, notes


def initializer_inputs_note(names: Sequence[str]) -> str:
    return (f"{len(names)} initializer{'s are' if len(names) != 1 else ' is'} also listed as graph "
            f"input{'s' if len(names) != 1 else ''} (IR < 4 / old exporters): treated as constants, as "
            "onnxruntime does unless they are fed, and dropped from the inputs (--keep-initializer-inputs "
            "keeps them as inputs, blocked)")


def prune(model: onnx.ModelProto, opts: Options, progress: Progress = _noop,
          plan_json: Optional[dict] = None) -> Result:
    opts.check()
    from .runtime import use_provider
    with use_provider(opts.provider, opts.device):
        return _prune(model, opts, progress, plan_json)


def _prune(model: onnx.ModelProto, opts: Options, progress: Progress, plan_json: Optional[dict]) -> Result:
    model, notes = prepare(model, opts)
    t = {}
    quantized = quantized_reason(model)
    if quantized and plan_json is None:
        return _nothing_to_do(model, opts, quantized, notes)
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
        "prunable_groups": n_prunable(an.groups, opts),
        "pruned_groups": plan.n_pruned_groups(),
        "options": {"ratio": opts.ratio, "head_ratio": opts.head_ratio, "mlp_ratio": opts.mlp_ratio,
                    "prune_hidden": opts.prune_hidden, "round_to": opts.rounding(),
                    "criterion": criterion_name(opts.criterion),
                    "protect": list(opts.protect), "seed": opts.seed},
    }
    if opts.target_latency is not None:
        report["summary"]["options"]["target_latency"] = opts.target_latency
        report["layers"] = plan.options.pop("layers", [])
    elif opts.layer_table:
        from .latency import layer_report
        progress("layers")
        try:
            report["layers"] = layer_report(an, removed, opts)
        except Exception as e:     # a report extra: onnxruntime refusing a layer must not fail the run
            report["layers_skipped"] = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
    if opts.scope != "uniform" or opts.target() is not None or opts.repair != "none" \
            or opts.normalize != "mean" or opts.reduce != "mean" or calib is not None:
        report["summary"]["options"].update(
            {"scope": opts.scope, "normalize": opts.normalize, "reduce": opts.reduce,
             "target_macs": opts.target_macs, "target_params": opts.target_params, "min_ratio": opts.min_ratio,
             "max_ratio": opts.max_ratio, "repair": opts.repair,
             "calibration_samples": calib.samples() if calib is not None else 0})
    if "target" in plan.options:
        report["summary"]["target"] = plan.options["target"]
    if notes:
        report["summary"]["notes"] = notes
    if plan.n_pruned_groups() == 0:
        report["summary"]["reason"] = nothing_pruned_reason(model, an.groups, opts)
    inexact_only = n_inexact_only(an.groups, opts)
    if inexact_only:
        report["summary"]["inexact_groups"] = inexact_only
    if opts.sparse():
        report["summary"]["options"].update({"sparsity": opts.sparsity, "pattern": opts.pattern or "unstructured",
                                             "sparse_kernels": opts.sparse_kernels,
                                             "sparse_criterion": opts.sparse_criterion})
    big = _weight_bytes(model) > AUTO_SKIP_BYTES
    do_verify = opts.verify if opts.verify is not None else not big
    do_bench = opts.bench if opts.bench is not None else not big
    check_feeds = _check_feeds(model, opts, calib)
    if do_verify:
        t1 = time.perf_counter()
        progress("verify")
        report["verify"] = _verify(model, pruned, plan, pj, an, opts, check_feeds)
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
    (mb, pb), feed, seq = count_at(model, opts)
    ma, pa = count.count_macs_params(pruned, feed)
    if "sparse" in report and report["sparse"].get("converted"):
        from .sparsify import sparse_counts
        sc = sparse_counts(pruned, feed)       # sparse ops: nonzero MACs, stored bytes
        ma = sc["macs"]
        report["sparse"]["counts"] = {k: sc[k] for k in ("stored_bytes", "dense_bytes", "layers")}
    report["macs"] = {"before": int(mb), "after": int(ma)}
    if seq != opts.seq_len:
        report["macs"]["free_dims"] = seq
    report["params"] = {"before": int(pb), "after": int(pa)}
    unchanged = not removed and "repair" not in report and "sparse" not in report
    if do_bench and unchanged:
        report["latency_ms"] = {"skipped": "the model is unchanged"}
    elif do_bench:
        progress("bench")
        def timed(size):                      # free dims: the first size the model runs at (see verify)
            if check_feeds:
                feed = _bench_feed(model, check_feeds[0])
            else:
                feed = inputs.random_inputs(model, seed=opts.seed, other=size, ranges=opts.input_ranges)
            return runtime.measure_latency(model, pruned, feed, threads=opts.threads, repeats=opts.bench_repeats,
                                         max_seconds=opts.bench_seconds)
        try:
            size, lat = inputs.at_free_sizes(model, timed)
            report["latency_ms"] = {"before": lat["before_ms"], "after": lat["after_ms"],
                                    "speedup": lat["speedup"], "threads": opts.threads, "pairs": lat["pairs"]}
            if inputs.free_dims(model) and not check_feeds:
                report["latency_ms"]["free_dims"] = size
        except Exception as e:  # e.g. custom ops onnxruntime lacks
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
            report["latency_ms"] = {"skipped": f"onnxruntime cannot run the model: {first}"}
    if not unchanged:
        progress("check")
        ensure_runs(model, pruned, report, opts, check_feeds)
    report["timings_s"] = t
    return Result(pruned, plan, report, t)


# --------------------------------------------------------------------------- models in the wild
# why nothing prunes: explain.py (re-exported here, where they used to be)
from .explain import (CONTROL_FLOW_OPS, QUANTIZED_OPS, control_flow_reason, n_inexact_only,  # noqa: E402,F401
                      n_prunable, nothing_pruned_reason, quantized_reason)


def _nothing_to_do(model: onnx.ModelProto, opts: Options, reason: str, notes: list) -> Result:
    """An unchanged copy and its report, without analysing (quantized models)."""
    out = _unchanged(model)
    feed = count_feed(model, opts.seq_len, opts.input_ranges)
    macs, params = count.count_macs_params(model, feed)
    summary = {"groups": 0, "prunable_groups": 0, "pruned_groups": 0, "reason": reason,
               "options": {"ratio": opts.ratio, "head_ratio": opts.head_ratio, "mlp_ratio": opts.mlp_ratio,
                           "prune_hidden": opts.prune_hidden, "round_to": opts.rounding(),
                           "criterion": opts.criterion, "protect": list(opts.protect), "seed": opts.seed}}
    if notes:
        summary["notes"] = notes
    report = {"groups": [], "summary": summary, "macs": {"before": int(macs), "after": int(macs)},
              "params": {"before": int(params), "after": int(params)},
              "verify": {"max_abs_diff": 0.0, "max_rel_diff": 0.0, "passed": True,
                         "checked": "the model is unchanged (identical by construction)"},
              "timings_s": {}}
    if opts.bench is not False:
        report["latency_ms"] = {"skipped": "the model is unchanged"}
    return Result(out, Plan([], {}), report, {})


def _check_feeds(model: onnx.ModelProto, opts: Options, calib) -> Optional[List[dict]]:
    """Feeds for verify and the benchmark when the user gave data: ``--inputs`` samples, else the
    first two calibration batches (the benchmark uses the first); None: random valid feeds."""
    names = [i.name for i in inputs.graph_inputs(model)]
    for n in opts.input_ranges:
        if n not in names:
            raise UsageError(f"--input {n}: the model has no input {n!r} (inputs: {', '.join(names)})")
    if opts.sample is not None:
        from .calib import Calibration
        c = opts.sample if isinstance(opts.sample, Calibration) else Calibration(opts.sample, "sample inputs")
        return list(c.check(model))
    if calib is not None:
        return list(calib)[:2]
    return None


def _bench_feed(model: onnx.ModelProto, feed: dict) -> dict:
    """The first sample of a feed whose inputs all have a symbolic batch (latency is at batch 1,
    like the random feeds'); the feed as it is otherwise."""
    syms = inputs.batch_symbols(model)
    for vi in inputs.graph_inputs(model):
        dims = vi.type.tensor_type.shape.dim if vi.type.HasField("tensor_type") else []
        if not dims or not (dims[0].HasField("dim_param") and dims[0].dim_param in syms):
            return feed
    return {k: v[:1] for k, v in feed.items()}


def _verify(model, pruned, plan: Plan, pj: dict, an: Analyzed, opts: Options, feeds) -> dict:
    """The masked-dense oracle. When inexact groups lost channels (--allow-inexact,
    --prune-hidden) it checks a rewrite with only the exact groups pruned, and reports the pruned
    model's agreement with the dense model (those groups cannot be checked exactly)."""
    inexact = {g.id for g in plan.groups if not g.exact}
    cut = [gid for gid, mask in plan.keep.items() if gid in inexact and not mask.all()]
    kw = dict(feeds=feeds, ranges=opts.input_ranges)
    if not cut:
        return verify(model, pruned, pj, **kw)
    exact = Plan(plan.groups, {gid: m for gid, m in plan.keep.items() if gid not in inexact}, plan.options)
    removed = exact.removed_units()
    ej = exact.to_json()
    v = verify(model, rewrite(an.model, an.analysis, an.root, removed) if removed else _unchanged(model), ej, **kw)
    if "skipped" in v:
        return v
    probe = feeds if feeds is not None else [inputs.random_inputs(model, seed=s, ranges=opts.input_ranges)
                                             for s in (0, 1)]
    try:
        agree = agreement(model, pruned, probe)
    except Exception as e:
        return {"max_abs_diff": None, "max_rel_diff": None, "passed": False,
                "reason": f"the pruned model does not run: {_first_line(e)}"}
    v["checked"] = (f"exact groups (masked-dense oracle on a rewrite with the {len(cut)} inexact "
                    f"group{'s' if len(cut) > 1 else ''} kept whole); inexact groups: agreement only")
    v["inexact_groups"] = sorted(cut)
    v["inexact_agreement"] = agree
    return v


def _first_line(e: BaseException) -> str:
    lines = [ln.strip() for ln in str(e).strip().splitlines() if ln.strip()]
    return (lines[0] if lines else type(e).__name__)[:300]


def ensure_runs(model: onnx.ModelProto, pruned: onnx.ModelProto, report: dict, opts: Options, feeds) -> None:
    """The output must run whatever the options: the same inputs as the input model, an
    onnxruntime session and one run on a valid feed (skipped when verification already ran it,
    and when onnxruntime cannot run the input model either). Raises GraphpruneError (exit 1)."""
    from .errors import GraphpruneError

    want = [i.name for i in inputs.graph_inputs(model)]
    got = [i.name for i in inputs.graph_inputs(pruned)]
    if set(got) != set(want):
        extra = [n for n in got if n not in want]
        raise GraphpruneError(f"internal error: the pruned model's inputs differ from the input model's "
                              f"({len(got)} vs {len(want)}{': ' + ', '.join(extra[:5]) if extra else ''}); "
                              "nothing written")
    v = report.get("verify") or {}
    if v.get("passed") or _weight_bytes(model) > AUTO_SKIP_BYTES:
        return
    feed = feeds[0] if feeds else None
    try:
        if feed is None:
            feed = inputs.random_inputs(model, seed=opts.seed, other=_size_that_runs(model, opts),
                                       ranges=opts.input_ranges)
        else:
            runtime.Runner(model)(feed)
    except Exception:
        return          # onnxruntime cannot run the input model either: nothing to compare with
    try:
        runtime.Runner(pruned)(feed)
    except Exception as e:
        raise GraphpruneError(f"internal error: the pruned model does not run in onnxruntime "
                              f"({_first_line(e)}); nothing written")


def _size_that_runs(model, opts: Options) -> int:
    size, _ = inputs.at_free_sizes(model, lambda size: runtime.Runner(model)(
        inputs.random_inputs(model, seed=opts.seed, other=size, ranges=opts.input_ranges)))
    return size


def _weight_bytes(model: onnx.ModelProto) -> int:
    total = 0
    for t in model.graph.initializer:
        if uses_external_data(t):
            total += int(next((e.value for e in t.external_data if e.key == "length"), 0) or 0)
        else:
            total += len(t.raw_data) or t.ByteSize()
    return total


def count_feed(model: onnx.ModelProto, seq_len: int, ranges=None) -> Optional[dict]:
    """Inputs for run-time MAC counting when the graph has symbolic dims (batch 1, others seq_len)."""
    syms = {d.dim_param for vi in model.graph.input for d in vi.type.tensor_type.shape.dim
            if d.HasField("dim_param") and d.dim_param}
    # with a feed, dims static inference cannot resolve (Swin's window partition) are measured
    # in onnxruntime; never for models whose data stays on disk
    if any(uses_external_data(t) for t in model.graph.initializer):
        return None if not syms else inputs.random_inputs(model, seed=0, batch=1, dims=_seq_dims(model, syms, seq_len),
                                                         ranges=ranges)
    return inputs.random_inputs(model, seed=0, batch=1, dims=_seq_dims(model, syms, seq_len), ranges=ranges)


def count_at(model: onnx.ModelProto, opts: Options):
    """((MACs, params), feed, size) of ``model`` with free dims at ``opts.seq_len``; when the model
    cannot run there (a dim the weights fix at 32 guessed at 64) at the sizes the graph implies,
    then FREE_SIZES (inputs.free_sizes), before unknown dims are counted as 1."""
    import warnings

    def attempt(size):
        feed = count_feed(model, size, opts.input_ranges)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            res = count.count_macs_params(model, feed)
        failed = [w for w in caught if "could not run the model" in str(w.message)]
        return res, feed, failed, caught

    res, feed, failed, caught = attempt(opts.seq_len)
    sized = failed and not any("not a registered" in str(w.message) for w in failed)    # not a custom op
    if sized and inputs.free_dims(model):
        for size in inputs.free_sizes(model):
            if size == opts.seq_len:
                continue
            r2, f2, failed2, caught2 = attempt(size)
            if not failed2:
                for w in caught2:
                    warnings.warn(w.message)
                return r2, f2, size
    for w in caught:
        warnings.warn(w.message)
    return res, feed, opts.seq_len


def _seq_dims(model: onnx.ModelProto, syms, seq_len: int) -> dict:
    """Every symbol but the batch takes seq_len; the batch is a symbol named like one, or, when no
    symbol is, one on the first axis of inputs only (tf2onnx names it ``unk__N``)."""
    named = {s for s in syms if inputs.is_batch_symbol(s)}
    batch = named or inputs.batch_symbols(model)       # [seq, batch, d] inputs name their batch
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
