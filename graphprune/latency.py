"""Plan by measured latency: a per-layer latency model, and ``--target-latency F``.

**The latency model.** Every Conv, Gemm and MatMul with a constant weight is timed alone in
onnxruntime (a one-node model with random weights, the node's attributes and its input's
shape) at candidate widths of its input and output channels: the multiples of this machine's
SIMD block (``bench.simd_block``, where onnxruntime's blocked kernels run) and a few widths off
the block, which fall back to slower kernels (the *staircase*). A node's time at input width
``a`` and output width ``b`` is ``t(a, C_out) * t(C_in, b) / t(C_in, C_out)``; a depthwise
conv, whose input and output channels are the same units, has one curve. Widths between
samples are interpolated, aligned widths from aligned samples, others from the unaligned ones.
What the layers do not explain (activations, pooling, residual adds: memory-bound work that
shrinks with width) is the dense model's measured time minus the layers' sum, scaled by the
kept fraction of the elements those ops write.

Timings are cached (JSON) per machine (CPU model, SIMD block, onnxruntime version, execution
provider, threads), one entry per layer configuration, in ``$GRAPHPRUNE_CACHE_DIR`` or
``~/.cache/graphprune/latency``; a model whose layers were all timed before costs no timing.

**Allocation.** Units are ranked over all groups by importance per millisecond saved (the
group's normalised score divided by its latency slope), one threshold removes those below it,
and each group's kept count is snapped to the fastest step of its own staircase within one
SIMD block above it (ties: the wider). The threshold is bisected until the model predicts the
target; then the pruned model is built and its latency measured against the dense model
(interleaved, median of per-pair ratios) and the predicted target corrected (secant, inside a
bracket) until the measured fraction is within ``tolerance`` of the target. ``--scope uniform``
bisects one ratio for all groups instead (the baseline the benchmark compares with).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import tempfile
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
import onnx
from onnx import TensorProto, helper

from . import bench

CACHE_VERSION = 2
ALIGNED_POINTS = 8          # aligned widths sampled per axis (plus the dense width)
UNALIGNED_POINTS = 3        # widths off the SIMD block sampled per axis


# --------------------------------------------------------------------------- machine and cache


def current_provider_name() -> str:
    """The execution provider sessions run on now, with its device for the GPU ones."""
    from .runtime import PROVIDERS, current_provider

    name, dev = current_provider()
    return PROVIDERS[name] if name == "cpu" else f"{PROVIDERS[name]}:{dev}"


def machine_key(threads: int, provider: str | None = None) -> str:
    """CPU model, SIMD block, onnxruntime version, provider (default: the current one,
    ``runtime.use_provider``) and threads, as one string."""
    import onnxruntime as ort

    provider = provider or current_provider_name()

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{cpu}|simd{bench.simd_block()}|ort{ort.__version__}|{provider}|t{int(threads)}"


def cache_dir() -> str:
    d = os.environ.get("GRAPHPRUNE_CACHE_DIR")
    if d:
        return os.path.join(d, "latency")
    return os.path.join(os.path.expanduser("~"), ".cache", "graphprune", "latency")


class TimingCache:
    """Layer-configuration -> milliseconds, one JSON file per machine key."""

    def __init__(self, key: str, directory: Optional[str] = None, enabled: bool = True):
        self.key = key
        self.enabled = enabled
        self.dir = directory or cache_dir()
        self.path = os.path.join(self.dir, hashlib.sha1(key.encode()).hexdigest()[:16] + ".json")
        self.data: Dict[str, float] = {}
        self.hits = self.misses = 0
        self._dirty = False
        if enabled and os.path.exists(self.path):
            try:
                with open(self.path) as fh:
                    blob = json.load(fh)
                if blob.get("version") == CACHE_VERSION and blob.get("machine") == key:
                    self.data = {k: float(v) for k, v in blob.get("timings", {}).items()}
            except (OSError, ValueError, AttributeError):
                self.data = {}

    def get(self, k: str) -> Optional[float]:
        v = self.data.get(k)
        if v is None:
            self.misses += 1
        else:
            self.hits += 1
        return v

    def put(self, k: str, ms: float) -> None:
        self.data[k] = float(ms)
        self._dirty = True

    def save(self) -> None:
        if not (self.enabled and self._dirty):
            return
        try:
            os.makedirs(self.dir, exist_ok=True)
            merged = {}
            if os.path.exists(self.path):          # another process may have added entries
                try:
                    with open(self.path) as fh:
                        blob = json.load(fh)
                    if blob.get("machine") == self.key:
                        merged.update(blob.get("timings", {}))
                except (OSError, ValueError, AttributeError):
                    pass
            merged.update(self.data)
            fd, tmp = tempfile.mkstemp(dir=self.dir, suffix=".tmp")
            with os.fdopen(fd, "w") as fh:
                json.dump({"version": CACHE_VERSION, "machine": self.key, "timings": merged}, fh, sort_keys=True)
            os.replace(tmp, self.path)
            self._dirty = False
        except OSError:
            pass                                    # a cache only: timing again next time is fine


# --------------------------------------------------------------------------- one-node models


@dataclass
class Layer:
    """One timed node: how its time depends on its input (``a``) and output (``b``) width."""
    name: str
    op: str
    cin: int
    cout: int
    in_units: Optional[np.ndarray]      # unit of every input-channel position (None: not prunable)
    out_units: Optional[np.ndarray]     # unit of every output-channel position
    shared: bool                        # depthwise: input and output are the same units
    spec: dict                          # what the one-node model is built from
    a_curve: Dict[bool, Tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    b_curve: Dict[bool, Tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    dense_ms: float = 0.0
    macs: int = 0

    def widths(self, dead: np.ndarray) -> Tuple[int, int]:
        a = self.cin if self.in_units is None else int((~dead[self.in_units]).sum())
        b = self.cout if self.out_units is None else int((~dead[self.out_units]).sum())
        return a, b

    def time(self, a: int, b: int) -> float:
        if self.shared:                 # one curve, over the input width
            return _interp(self.a_curve, a, self.dense_ms) if a != self.cin else self.dense_ms
        ta = _interp(self.a_curve, a, self.dense_ms) if a != self.cin else self.dense_ms
        tb = _interp(self.b_curve, b, self.dense_ms) if b != self.cout else self.dense_ms
        return ta * tb / self.dense_ms if self.dense_ms > 0 else 0.0


def _interp(curves: Dict[bool, Tuple[np.ndarray, np.ndarray]], k: int, default: float) -> float:
    """Time at width ``k``: from the samples of the same alignment class when there are any."""
    if not curves:
        return default
    if k in curves["exact"]:
        return curves["exact"][k]
    blk = curves["block"]
    al = curves.get(True)
    if al is None:
        return float(np.interp(k, *curves[False]))
    if k % blk == 0:
        return float(np.interp(k, *al))
    # off the block: the time of the step above (kernels pad to the block) times the penalty
    # of the slow path, interpolated from the widths off the block that were timed
    base = float(np.interp(int(math.ceil(k / blk)) * blk, *al))
    pen = curves.get("penalty")
    return base * (float(np.interp(k, *pen)) if pen is not None else 1.0)


def sample_widths(n: int, block: int, aligned: int = ALIGNED_POINTS, unaligned: int = UNALIGNED_POINTS) -> List[int]:
    """Widths to time for an axis of ``n`` channels: up to ``aligned`` multiples of ``block``
    (evenly spread), up to ``unaligned`` widths just below a multiple, and ``n`` itself."""
    mult = list(range(block, n + 1, block))
    if len(mult) > aligned:
        idx = np.unique(np.round(np.linspace(0, len(mult) - 1, aligned)).astype(int))
        mult = [mult[i] for i in idx]
    off = []
    if block > 1 and n > block:
        cands = [m - 1 for m in range(2 * block, n + 1, block)] or [n - 1]
        if len(cands) > unaligned:
            idx = np.unique(np.round(np.linspace(0, len(cands) - 1, unaligned)).astype(int))
            cands = [cands[i] for i in idx]
        off = [c for c in cands if 0 < c < n]
    out = sorted(set(mult) | set(off) | {n})
    if block > 1 and n < block:
        out = sorted(set(out) | {max(1, n // 2)})
    return out


def _ints(node: onnx.NodeProto, name: str, default=None):
    for a in node.attribute:
        if a.name == name:
            return list(a.ints) if a.ints else (a.i if a.type == onnx.AttributeProto.INT else a.s.decode())
    return default


def _static(shape, other: int) -> Optional[List[int]]:
    if shape is None:
        return None
    out = []
    for ax, d in enumerate(shape):
        if isinstance(d, (int, np.integer)) and d > 0:
            out.append(int(d))
        else:
            out.append(1 if ax == 0 else other)
    return out


def micro_model(spec: dict, a: int, b: int) -> Tuple[onnx.ModelProto, Dict[str, np.ndarray]]:
    """A one-node model of ``spec`` at input width ``a`` and output width ``b``, and its feed."""
    rng = np.random.default_rng(0)
    op = spec["op"]
    if op == "Conv":
        group = spec["group"]
        if spec["depthwise"]:           # one filter group per input channel (times a multiplier)
            group = a
            b = a * (spec["cout"] // spec["cin"])
        xs = [1, a] + spec["spatial"]
        ws = [b, a // group] + spec["kernel"]
        attrs = {k: v for k, v in spec["attrs"].items()}
        attrs["group"] = group
        x = helper.make_tensor_value_info("x", TensorProto.FLOAT, xs)
        y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
        w = onnx.numpy_helper.from_array(rng.standard_normal(ws).astype(np.float32), "w")
        bias = onnx.numpy_helper.from_array(rng.standard_normal([b]).astype(np.float32), "bias")
        node = helper.make_node("Conv", ["x", "w", "bias"], ["y"], **attrs)
        g = helper.make_graph([node], "layer", [x], [y], [w, bias])
        feed = {"x": rng.standard_normal(xs).astype(np.float32)}
    else:                                   # Gemm / MatMul: [M, a] x [a, b]
        xs = spec["lead"] + [a]
        x = helper.make_tensor_value_info("x", TensorProto.FLOAT, xs)
        y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
        w = onnx.numpy_helper.from_array(rng.standard_normal([a, b]).astype(np.float32), "w")
        bias = onnx.numpy_helper.from_array(rng.standard_normal([b]).astype(np.float32), "bias")
        n1 = helper.make_node("MatMul", ["x", "w"], ["t"])
        n2 = helper.make_node("Add", ["t", "bias"], ["y"])
        g = helper.make_graph([n1, n2], "layer", [x], [y], [w, bias])
        feed = {"x": rng.standard_normal(xs).astype(np.float32)}
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m, feed


def time_model(model: onnx.ModelProto, feed: Dict[str, np.ndarray], threads: int = 1,
               min_runs: int = 7, budget_s: float = 0.02) -> float:
    """Milliseconds per run of ``model``: the minimum over runs (robust to other processes
    taking the core), at least ``min_runs`` runs and about ``budget_s`` seconds."""
    sess = bench.make_session(model, threads)
    sess.run(None, feed)
    best = math.inf
    n, t_start = 0, time.perf_counter()
    clock = _clock(threads)
    while n < min_runs or (time.perf_counter() - t_start < budget_s and n < 200):
        t0 = clock()
        sess.run(None, feed)
        best = min(best, clock() - t0)
        n += 1
    return best * 1e3


def _overhead_ms(threads: int) -> float:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    g = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "id", [x], [y])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return time_model(m, {"x": np.zeros([1, 8], np.float32)}, threads, min_runs=20)


Timer = Callable[[dict, int, int], float]


# --------------------------------------------------------------------------- the model


class LatencyModel:
    """Predicted latency (ms) of the model a set of removed units would produce."""

    def __init__(self, an, dense_ms: float, threads: int = 1, feed=None, cache: Optional[TimingCache] = None,
                 timer: Optional[Timer] = None, block: Optional[int] = None,
                 in_graph: Optional[Dict[str, float]] = None):
        self.threads = threads
        self.block = int(block or bench.simd_block())
        self.cache = cache if cache is not None else TimingCache(machine_key(threads))
        self.n_atoms = len(an.root)
        self.layers: List[Layer] = []
        self.timed = 0
        t0 = time.perf_counter()
        overhead = None
        g = an.graph
        root = an.root
        macs = bench.macs_by_node(an.model, feed)
        mac_nodes = set()
        for i, node in enumerate(g.nodes):
            if node.op_type not in ("Conv", "Gemm", "MatMul") or not node.output:
                continue
            spec = self._spec(node, g)
            if spec is None:
                continue
            out = node.output[0]
            out_atoms = an.analysis.descs.get(out, {}).get(spec["out_axis"])
            in_atoms = an.analysis.descs.get(node.input[0], {}).get(spec["in_axis"])
            out_units = None if out_atoms is None or len(out_atoms) != spec["cout"] else root[out_atoms]
            in_units = None if in_atoms is None or len(in_atoms) != spec["cin"] else root[in_atoms]
            shared = bool(spec.get("depthwise") and out_units is not None and in_units is not None
                          and np.array_equal(np.unique(in_units), np.unique(out_units)))
            if spec.get("depthwise") and not shared and not (in_units is None and out_units is None):
                continue                     # a depthwise conv whose sides differ: leave it to the residual
            spec["shared"] = shared
            lay = Layer(node.name or out, node.op_type, spec["cin"], spec["cout"], in_units, out_units, shared, spec,
                        macs=int(macs.get(out, 0)))
            mac_nodes.add(i)
            self.layers.append(lay)
        for lay in self.layers:
            if lay.in_units is None and lay.out_units is None:
                lay.dense_ms = self._time(lay.spec, lay.cin, lay.cout, timer)
                continue
            if lay.out_units is not None and not lay.shared:
                lay.b_curve = self._sweep(lay, "b", timer)
            if lay.in_units is not None:
                lay.a_curve = self._sweep(lay, "a", timer)
            lay.dense_ms = (lay.a_curve or lay.b_curve)["exact"][lay.cin if lay.a_curve else lay.cout]
        if timer is None:           # cached timings are raw: the empty session's cost comes off every one
            overhead = self.cache.get(f"overhead|{threads}")
            if overhead is None:
                overhead = _overhead_ms(threads)
                self.cache.put(f"overhead|{threads}", overhead)
        self.cache.save()
        self.overhead_ms = float(overhead or 0.0)
        if self.overhead_ms:
            for lay in self.layers:
                _shift(lay, self.overhead_ms)
        self.timing_s = time.perf_counter() - t0
        # memory-bound ops: their elements, and the units of their channel axes
        self.elem: List[Tuple[float, List[np.ndarray]]] = []
        fixed = 0.0
        for i, node in enumerate(g.nodes):
            if i in mac_nodes or node.op_type in ("Constant", "Shape"):
                continue
            for out in node.output:
                s = _static(g.shape(out), 8)
                if not s:
                    continue
                n = float(np.prod(s))
                axes = [root[a] for a in an.analysis.descs.get(out, {}).values()]
                if axes:
                    self.elem.append((n, axes))
                else:
                    fixed += n
        self.elem_total = fixed + sum(n for n, _ in self.elem)
        self.elem_fixed = fixed
        # each layer's own time in the whole graph (onnxruntime's profiler), where known: its
        # curve keeps its shape and takes that scale (a layer timed alone pays layout reorders
        # and misses fusions the whole graph has)
        self.in_graph = 0
        for lay in self.layers:
            t = (in_graph or {}).get(lay.name)
            if t is not None and t > 0 and lay.dense_ms > 0:
                _rescale(lay, t / lay.dense_ms)
                self.in_graph += 1
        self.layers_ms = sum(l.dense_ms for l in self.layers)
        self.calibrate(self.layers_ms if dense_ms is None else dense_ms)

    def calibrate(self, dense_ms: float) -> None:
        """Scale to the dense model's measured time: layers keep their share, the rest is the
        memory-bound remainder (at least 5 % of the total)."""
        self.dense_measured = float(dense_ms)
        rest = dense_ms - self.layers_ms
        if rest < 0.05 * dense_ms or self.layers_ms <= 0:
            self.scale = 0.95 * dense_ms / max(self.layers_ms, 1e-9)
            rest = 0.05 * dense_ms
        else:
            self.scale = 1.0
        self.rest_ms = rest

    # ----------------------------------------------------------------- timing
    def _key(self, spec: dict, a: int, b: int) -> str:
        s = {k: v for k, v in spec.items() if k not in ("out_axis", "in_axis")}
        return json.dumps([s, a, b], sort_keys=True)

    def _time(self, spec: dict, a: int, b: int, timer: Optional[Timer]) -> float:
        k = self._key(spec, a, b)
        v = self.cache.get(k)
        if v is None:
            if timer is not None:
                v = float(timer(spec, a, b))
            else:
                m, feed = micro_model(spec, a, b)
                v = time_model(m, feed, self.threads)
            self.timed += 1
            self.cache.put(k, v)
        return v

    def _sweep(self, lay: Layer, side: str, timer) -> dict:
        n = lay.cout if side == "b" else lay.cin
        groups = lay.spec.get("group", 1) if lay.op == "Conv" and not lay.spec.get("depthwise") else 1
        if groups > 1:              # a grouped conv keeps equal widths per group: multiples of the count
            steps = sample_widths(n // groups, 1)
            if len(steps) > ALIGNED_POINTS:
                idx = np.unique(np.round(np.linspace(0, len(steps) - 1, ALIGNED_POINTS)).astype(int))
                steps = [steps[i] for i in idx]
            pts = sorted({k * groups for k in steps} | {n})
        else:
            pts = sample_widths(n, self.block)
        exact = {}
        for k in pts:
            if side == "b":
                exact[k] = self._time(lay.spec, lay.cin, k, timer)
            else:
                b = k * (lay.cout // lay.cin) if lay.shared else lay.cout
                exact[k] = self._time(lay.spec, k, b, timer)
        curves: dict = {"block": self.block, "exact": exact}
        _fit(curves)
        return curves

    @staticmethod
    def _spec(node: onnx.NodeProto, g) -> Optional[dict]:
        if node.op_type == "Conv":
            if len(node.input) < 2 or not g.is_const(node.input[1]):
                return None
            x = _static(g.shape(node.input[0]), 32)
            W = g.const(node.input[1])
            if x is None or W is None or len(x) < 3 or W.ndim != len(x):
                return None
            group = int(_ints(node, "group", 1))
            cin, cout = int(x[1]), int(W.shape[0])
            attrs = {}
            for k in ("strides", "pads", "dilations", "kernel_shape"):
                v = _ints(node, k)
                if v is not None:
                    attrs[k] = v
            ap = _ints(node, "auto_pad")
            if ap and ap != "NOTSET":
                attrs["auto_pad"] = ap
            return {"op": "Conv", "cin": cin, "cout": cout, "group": group, "depthwise": group == cin and group > 1,
                    "spatial": [int(d) for d in x[2:]], "kernel": [int(d) for d in W.shape[2:]], "attrs": attrs,
                    "out_axis": 1, "in_axis": 1}
        if node.op_type in ("Gemm", "MatMul"):
            if len(node.input) < 2 or not g.is_const(node.input[1]):
                return None
            x = _static(g.shape(node.input[0]), 8)
            W = g.const(node.input[1])
            if x is None or W is None or W.ndim != 2 or len(x) < 1:
                return None
            if node.op_type == "Gemm":
                ta = int(_ints(node, "transA", 0) or 0)
                tb = int(_ints(node, "transB", 0) or 0)
                if ta:
                    return None
                k, n = (W.shape[1], W.shape[0]) if tb else (W.shape[0], W.shape[1])
            else:
                k, n = W.shape
            lead = [int(np.prod(x[:-1]))] if len(x) > 1 else [1]
            return {"op": "MatMul", "cin": int(k), "cout": int(n), "lead": lead, "out_axis": len(x) - 1,
                    "in_axis": len(x) - 1}
        return None

    # ----------------------------------------------------------------- prediction
    def dead(self, removed) -> np.ndarray:
        dead = np.zeros(self.n_atoms, bool)
        rem = np.fromiter((int(u) for u in removed), dtype=np.int64)
        if rem.size:
            dead[rem] = True
        return dead

    def predict(self, removed=(), dead: Optional[np.ndarray] = None) -> float:
        d = self.dead(removed) if dead is None else dead
        ms = 0.0
        for lay in self.layers:
            ms += lay.time(*lay.widths(d))
        ms *= self.scale
        if self.elem_total > 0:
            kept = self.elem_fixed
            for n, axes in self.elem:
                f = 1.0
                for u in axes:
                    f *= 1.0 - d[u].mean()
                kept += n * f
            ms += self.rest_ms * kept / self.elem_total
        return ms

    def dense_predicted(self) -> float:
        return self.predict(())

    def fraction(self, removed, what: str = "latency") -> float:
        return self.predict(removed) / max(self.dense_predicted(), 1e-12)

    def macs_fraction(self, removed=()) -> float:
        """Kept fraction of the timed layers' MACs."""
        rows = self.layer_table(removed)
        return sum(r["macs_after"] for r in rows) / max(sum(r["macs"] for r in rows), 1)

    def layer_table(self, removed=()) -> List[dict]:
        """Per timed layer: widths and predicted milliseconds before and after."""
        d = self.dead(removed)
        rows = []
        for lay in self.layers:
            a, b = lay.widths(d)
            frac = (b / max(lay.cout, 1)) if lay.shared else (a / max(lay.cin, 1)) * (b / max(lay.cout, 1))
            rows.append({"name": lay.name, "op": lay.op, "cin": [lay.cin, a], "cout": [lay.cout, b],
                         "ms": [round(lay.dense_ms * self.scale, 5), round(lay.time(a, b) * self.scale, 5)],
                         "macs": lay.macs, "macs_after": int(round(lay.macs * frac))})
        return rows


def _fit(curves: dict) -> None:
    """Aligned and off-block sample curves, and the off-block penalty (time over the time of
    the step above), from ``curves["exact"]``."""
    ex, blk = curves["exact"], curves["block"]
    pts = sorted(ex)
    for cls in (True, False):
        xs = [k for k in pts if (k % blk == 0) == cls]
        if xs:
            curves[cls] = (np.array(xs, float), np.array([ex[k] for k in xs]))
        else:
            curves.pop(cls, None)
    curves.pop("penalty", None)
    if True in curves and False in curves:
        xs = curves[False][0]
        up = [float(np.interp(int(math.ceil(x / blk)) * blk, *curves[True])) for x in xs]
        curves["penalty"] = (xs, np.array([ex[int(x)] / max(u, 1e-12) for x, u in zip(xs, up)]))


def _rescale(lay: Layer, f: float) -> None:
    for curves in (lay.a_curve, lay.b_curve):
        if curves:
            for k in curves["exact"]:
                curves["exact"][k] *= f
            _fit(curves)
    lay.dense_ms *= f


def profile_layers(model: onnx.ModelProto, feed, threads: int = 1, runs: int = 15) -> Dict[str, float]:
    """Milliseconds of every Conv/Gemm/MatMul node of ``model`` inside the whole graph, from
    onnxruntime's profiler: per kernel the fastest of ``runs`` runs (the profiler's clock is
    the wall clock; the fastest run is the one no other process interrupted). Fused kernels are
    credited to the layer they start from: onnxruntime names a layout-transformed node after
    its output tensor (``<tensor>_nchwc``), whose producer chain (activation, norm) leads back
    to the layer."""
    import onnxruntime as ort

    so = ort.SessionOptions()               # as bench.make_session's, plus the profiler
    so.intra_op_num_threads = int(threads)
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 4
    tmp = tempfile.mkdtemp(prefix="graphprune-prof-")
    so.enable_profiling = True
    so.profile_file_prefix = os.path.join(tmp, "p")
    m = onnx.ModelProto()
    m.CopyFrom(model)
    from .io import pin_ir_version
    pin_ir_version(m)                       # an IR version this onnxruntime reads
    from .runtime import open_session
    sess = open_session(m.SerializeToString(), so)
    f = {i.name: feed[i.name] for i in sess.get_inputs() if i.name in feed}
    sess.run(None, f)
    for _ in range(runs):
        sess.run(None, f)
    path = sess.end_profiling()
    try:
        with open(path) as fh:
            events = json.load(fh)
    finally:
        import shutil
        shutil.rmtree(tmp, ignore_errors=True)
    best: Dict[str, float] = {}
    for e in events:
        name = e.get("name", "")
        if e.get("cat") != "Node" or not name.endswith("_kernel_time"):
            continue
        k = name[: -len("_kernel_time")]
        d = float(e.get("dur", 0)) / 1e3
        best[k] = min(best.get(k, math.inf), d)
    producer = {o: n for n in model.graph.node for o in n.output}
    by_name = {n.name: n for n in model.graph.node if n.name}
    out: Dict[str, float] = {}
    for k, ms in best.items():
        node = by_name.get(k)
        if node is None and k.endswith("_nchwc"):
            node = producer.get(k[: -len("_nchwc")])
        for _ in range(4):                  # activation / norm / bias add after the layer
            if node is None or node.op_type in ("Conv", "Gemm", "MatMul"):
                break
            ins = [i for i in node.input if i in producer and producer[i].op_type != "Constant"]
            node = producer.get(ins[0]) if len(ins) == 1 else None
        if node is not None and node.op_type in ("Conv", "Gemm", "MatMul"):
            key = node.name or node.output[0]
            out[key] = out.get(key, 0.0) + ms
    return out


def _profile(model, feed, threads: int) -> Optional[Dict[str, float]]:
    """profile_layers, or None where it cannot run (a model over 2 GiB, a profiler refusing):
    the layers then keep their own timings."""
    from .io import approx_model_bytes

    if approx_model_bytes(model) > (1 << 30):
        return None
    try:
        return profile_layers(model, feed, threads)
    except Exception:
        return None


def _shift(lay: Layer, overhead: float) -> None:
    """Take the per-run overhead of an empty session out of every sample (kept >= 10 %)."""
    def fix(curves):
        if not curves:
            return
        ex = curves["exact"]
        for k in list(ex):
            ex[k] = max(ex[k] - overhead, 0.1 * ex[k])
        _fit(curves)
    fix(lay.b_curve)
    fix(lay.a_curve)
    if lay.a_curve:
        lay.dense_ms = lay.a_curve["exact"][lay.cin]
    elif lay.b_curve:
        lay.dense_ms = lay.b_curve["exact"][lay.cout]
    else:
        lay.dense_ms = max(lay.dense_ms - overhead, 0.1 * lay.dense_ms)


# --------------------------------------------------------------------------- allocation


class _Alloc:
    """Plans at a predicted latency fraction: global (importance per ms saved, per-group
    staircase snapping) or uniform (one ratio, rounded to ``round_to``)."""

    def __init__(self, lm: LatencyModel, groups, scores, scope: str, normalize: str, protect, allow_inexact: bool,
                 min_ratio: float, max_ratio: Optional[float], round_to: int, min_keep: int = 1,
                 objective: str = "importance"):
        from .plan import kept_bounds, eligible, normalize_scores

        self.lm, self.groups, self.scope = lm, groups, scope
        self.scores = scores
        self.protect, self.allow = protect, allow_inexact
        self.min_ratio, self.max_ratio, self.round_to = min_ratio, max_ratio, max(1, int(round_to))
        self.elig = [g for g in groups if eligible(g, scores, protect, allow_inexact)]
        self.norm = {g.id: normalize_scores(scores[g.id], normalize) for g in self.elig}
        mr = 0.9 if max_ratio is None and scope == "global" else max_ratio
        self.bounds = {g.id: kept_bounds(len(g.units), min_ratio, mr, min_keep) for g in self.elig}
        self.dense = lm.dense_predicted()
        self.base_dead = lm.dead(())
        self._snapped: Dict[Tuple[int, int], int] = {}
        self._fast: Dict[int, int] = {}
        # importance per millisecond: a group's scores over its latency slope (others dense)
        self.value: Dict[int, np.ndarray] = {}
        for g in self.elig:
            s = self.norm[g.id]
            lo, _ = self.bounds[g.id]
            saved = self.dense - self._group_ms(g, lo)
            slope = max(saved, 1e-6 * self.dense) / max(len(g.units) - lo, 1)
            if objective == "macs":     # a unit is worth the MACs it does: MACs per ms saved
                mask = self._mask(g, lo)
                gone = [] if mask is None else g.units[~mask].tolist()
                slope /= max(1.0 - lm.macs_fraction(gone), 1e-9) / max(len(g.units) - lo, 1)
            v = s / slope if normalize != "std" else s - math.log(slope)
            self.value[g.id] = v

    def _mask(self, g, k: int) -> Optional[np.ndarray]:
        from .plan import select_units
        return select_units(g, self.norm[g.id], k, 1)

    def _group_ms(self, g, k: int) -> float:
        """Predicted model latency with only group ``g`` pruned to ``k`` units."""
        mask = self._mask(g, k)
        if mask is None:
            return self.dense
        d = self.base_dead.copy()
        d[g.units[~mask]] = True
        return self.lm.predict(dead=d)

    def snap(self, g, k: int) -> int:
        """The kept count in [k, k + block) (multiples of round_to) the model runs fastest at;
        among equally fast ones (within 1 %), the widest."""
        n = len(g.units)
        if k >= n or g.kind == "heads":
            return k
        hit = self._snapped.get((g.id, k))
        if hit is not None:
            return hit
        step = self.round_to
        fast = self.fast_step(g)
        hi = min(n, k + max(self.lm.block, step, fast) - 1)
        cands = [c for c in range(k, hi + 1) if (c % step == 0 and c % fast == 0) or c == n]
        if not cands:
            cands = [min(n, int(math.ceil(k / step)) * step)]
        times = {c: self._group_ms(g, c) for c in cands}
        best = min(times.values())
        out = max(c for c, t in times.items() if t <= best + 0.01 * abs(best) + 1e-12)
        self._snapped[(g.id, k)] = out
        return out

    def fast_step(self, g) -> int:
        """Width multiple a group must keep to stay on onnxruntime's blocked (NCHWc) path: the
        SIMD block when a Conv reads or writes its channels (a Conv whose channel counts are off
        the block falls back to plain kernels and costs layout reorders around it in the whole
        graph, which a layer timed alone does not show); 1 otherwise (Gemm/MatMul widths are
        snapped by their timed staircase alone)."""
        hit = self._fast.get(g.id)
        if hit is None:
            units = set(g.units.tolist())
            conv = any(lay.op == "Conv" and ((lay.out_units is not None and units & set(lay.out_units.tolist()))
                                             or (lay.in_units is not None and units & set(lay.in_units.tolist())))
                       for lay in self.lm.layers)
            hit = self.lm.block if conv and len(g.units) >= self.lm.block else 1
            self._fast[g.id] = hit
        return hit

    def keep_at(self, t: float) -> Dict[int, np.ndarray]:
        keep = {}
        for g in self.elig:
            forced = np.array([u in g.blocked for u in g.units.tolist()])
            k = int(((self.value[g.id] >= t) | forced).sum())
            lo, hi = self.bounds[g.id]
            k = min(max(k, lo), hi)
            if k >= len(g.units):
                continue
            k = self.snap(g, k)
            mask = self._mask(g, k)
            if mask is not None:
                keep[g.id] = mask
        return keep

    def keep_uniform(self, r: float) -> Dict[int, np.ndarray]:
        from .plan import make_plan
        p = make_plan(self.groups, self.scores, r, self.round_to, self.protect, self.allow, min_ratio=self.min_ratio,
                      max_ratio=self.max_ratio)
        return {gid: m for gid, m in p.keep.items() if not m.all()}

    def removed(self, keep: Dict[int, np.ndarray]) -> List[int]:
        by_id = {g.id: g for g in self.groups}
        out: List[int] = []
        for gid, mask in keep.items():
            out.extend(by_id[gid].units[~mask].tolist())
        return out

    def fraction(self, keep) -> float:
        return self.lm.predict(self.removed(keep)) / max(self.dense, 1e-12)

    def at(self, frac: float) -> Tuple[Dict[int, np.ndarray], float]:
        """The plan with the most kept whose predicted latency is at most ``frac`` of the dense
        model's (the most pruned plan when none is)."""
        if self.scope == "uniform":
            cap = self.max_ratio if self.max_ratio is not None else 0.95
            lo, hi = 0.0, cap
            best = self.keep_uniform(hi)
            bf = self.fraction(best)
            if bf > frac:
                return best, bf
            for _ in range(20):
                mid = (lo + hi) / 2
                keep = self.keep_uniform(mid)
                f = self.fraction(keep)
                if f <= frac:
                    best, bf, hi = keep, f, mid
                else:
                    lo = mid
                if hi - lo < 1e-3:
                    break
            return best, bf
        values = np.unique(np.concatenate([self.value[g.id] for g in self.elig])) if self.elig else np.zeros(0)
        if values.size == 0:
            return {}, 1.0
        top = values[-1] + abs(values[-1]) + 1.0
        best = self.keep_at(top)
        bf = self.fraction(best)
        if bf > frac:
            return best, bf
        lo, hi = 0, len(values)              # smallest threshold index with fraction <= frac
        while lo < hi:
            mid = (lo + hi) // 2
            keep = self.keep_at(values[mid] if mid < len(values) else top)
            f = self.fraction(keep)
            if f <= frac:
                best, bf, hi = keep, f, mid
            else:
                lo = mid + 1
        return best, bf


def _search(alloc: "_Alloc", lm: LatencyModel, F: float, tol: float, max_steps: int, measure):
    """Measured bisection on the predicted target: returns (|error|, chosen step, keep, measured,
    steps). Stops when a plan lands within half the tolerance (within it counts as converged; the
    aim is the middle, so the result stays in when it is timed again), when the steps run out or
    when the bracket closes; the plan closest to the target is kept."""
    iters = []
    lo_b, hi_b = None, None              # (predicted, measured) of plans too fast / too slow
    fp = F
    best = None
    measured: Dict[frozenset, Tuple[float, int]] = {}
    it = -1
    for _ in range(4 * int(max_steps)):
        if len(measured) >= int(max_steps):
            break
        keep, pred = alloc.at(fp)
        removed = alloc.removed(keep)
        key = frozenset(removed)
        if key in measured:                  # the same plan again: its measurement stands
            meas, idx = measured[key]
        else:
            meas = 1.0 if not removed else float(measure(removed)[0])
            it += 1
            idx = it
            measured[key] = (meas, idx)
            iters.append({"predicted_target": round(float(fp), 5), "predicted": round(float(pred), 5),
                          "measured": round(meas, 5), "removed_units": len(removed),
                          "macs_kept": round(lm.macs_fraction(removed), 5)})
        err = abs(meas / F - 1.0)
        if best is None or err < best[0]:
            best = (err, idx, keep, meas)
        if err <= tol / 2:
            break
        if meas > F:
            hi_b = (fp, meas) if hi_b is None or fp < hi_b[0] else hi_b      # too slow: predict lower
        else:
            lo_b = (fp, meas) if lo_b is None or fp > lo_b[0] else lo_b      # too fast: predict higher
        if hi_b is not None and lo_b is not None:
            (p1, m1), (p2, m2) = lo_b, hi_b          # p1 too fast, p2 too slow: p1 < p2 normally
            nxt = p1 + (F - m1) * (p2 - p1) / (m2 - m1) if m1 != m2 else (p1 + p2) / 2
            a, b = min(p1, p2), max(p1, p2)
            nxt = min(max(nxt, a + 0.1 * (b - a)), b - 0.1 * (b - a))      # secant, kept inside
        else:
            nxt = fp * F / max(meas, 1e-6)
        nxt = min(max(nxt, 0.02), 1.0)
        if abs(nxt - fp) < 1e-5:
            break
        fp = nxt
    return best + (iters,)


OBJECTIVES = ("auto", "importance", "macs")


def target_latency_plan(an, scores, opts, progress=None, measure=None, probe=None):
    """The plan whose pruned model's measured latency is ``opts.target_latency`` of the dense
    model's (within ``opts.latency_tolerance``, relative). ``opts.latency_objective`` ``auto``
    searches with both rankings (importance per ms, MACs per ms) and keeps the plan whose outputs
    agree best with the dense model's on ``probe`` (feed dicts: calibration samples, else random
    inputs), among those within tolerance. ``measure(removed) -> (fraction, dense ms)`` replaces
    the real measurement (tests)."""
    from .plan import Plan
    from .rewrite import rewrite
    from .verify import agreement

    progress = progress or (lambda s: None)
    F = float(opts.target_latency)
    tol = float(opts.latency_tolerance)
    threads = opts.threads
    model = an.model
    size, feed = _feed(model, opts.seed)
    confirm = None
    if measure is None:
        dense_sess = []

        def measure(removed):
            pruned = rewrite(an.model, an.analysis, an.root, removed)
            if not dense_sess:
                dense_sess.append(bench.make_session(model, threads))
            return measure_fraction(dense_sess[0], bench.make_session(pruned, threads), feed,
                                    repeats=max(opts.bench_repeats, 20), threads=threads)

        def confirm(removed):               # fresh sessions of both: what a user timing it would see
            pruned = rewrite(an.model, an.analysis, an.root, removed)
            return measure_fraction(bench.make_session(model, threads), bench.make_session(pruned, threads), feed,
                                    repeats=max(opts.bench_repeats, 20), threads=threads)[0]
    progress("latency")
    t0 = time.perf_counter()
    dense_ms = _dense_ms(model, feed, threads) if opts.latency_timer is None else None
    cache = TimingCache(machine_key(threads), opts.latency_cache, enabled=opts.latency_cache != "")
    from .pipeline import count_feed
    prof = _profile(model, feed, threads) if opts.latency_timer is None else None
    lm = LatencyModel(an, dense_ms, threads, count_feed(model, opts.seq_len), cache=cache, timer=opts.latency_timer,
                      in_graph=prof)
    model_s = time.perf_counter() - t0
    objectives = ["importance", "macs"] if opts.latency_objective == "auto" else [opts.latency_objective]
    found = {}
    for obj in objectives:
        progress(f"search{'-' + obj if len(objectives) > 1 else ''}")
        alloc = _Alloc(lm, an.groups, scores, opts.scope, opts.normalize, opts.protect,
                       opts.allow_inexact or opts.prune_hidden, opts.min_ratio, opts.max_ratio,
                       opts.rounding() if opts.scope == "uniform"
                       else (1 if opts.round_to == "auto" else int(opts.round_to)), objective=obj)
        found[obj] = (alloc,) + _search(alloc, lm, F, tol, opts.latency_iterations, measure)
        if opts.scope == "uniform":
            break                           # one ratio for all: the ranking does not matter
    choice = next(iter(found))
    summary = {}
    if len(found) > 1:
        progress("compare")
        if probe is None:
            probe = [bench.random_inputs(model, seed=opts.seed + 1 + i, other=size) for i in range(4)]
        for obj, (alloc, err, _, keep, meas, _) in found.items():
            pruned = rewrite(an.model, an.analysis, an.root, alloc.removed(keep))
            summary[obj] = {"measured": round(meas, 5), "converged": bool(err <= tol),
                            "cosine": agreement(model, pruned, probe)["cosine"]}
        ok = [o for o in found if summary[o]["converged"]] or list(found)
        choice = max(ok, key=lambda o: (summary[o]["cosine"] or -2.0, -found[o][1]))
    alloc, err, it, keep, meas, iters = found[choice]
    full = {g.id: np.ones(len(g.units), bool) for g in an.groups}
    full.update(keep)
    removed = alloc.removed(keep)
    info = {"scope": opts.scope, "normalize": opts.normalize, "objective": choice,
            "round_to": "per-layer staircase" if opts.scope == "global" else alloc.round_to,
            "protect": list(opts.protect)}
    info["target"] = {
        "latency": F, "measured": round(meas, 5), "tolerance": tol, "converged": bool(err <= tol),
        "objective": choice, "iterations": iters, "chosen": it, "predicted": round(float(alloc.fraction(keep)), 5),
        "dense_ms": round(lm.dense_measured, 4), "threads": threads, "provider": current_provider_name(), "simd_block": lm.block,
        "free_dims": size if bench.free_dims(model) else None,
        "model": {"layers": len(lm.layers), "timed": lm.timed, "cache_hits": cache.hits, "in_graph": lm.in_graph,
                  "cache": cache.path if cache.enabled else None, "build_s": round(model_s, 3)},
    }
    if summary:
        info["target"]["objectives"] = summary
    if confirm is not None and removed:
        progress("confirm")
        info["target"]["remeasured"] = round(float(confirm(removed)), 5)
    info["layers"] = lm.layer_table(removed)
    return Plan(an.groups, full, info)


def _clock(threads: int):
    """With one onnxruntime thread the model runs on the calling thread: its CPU time
    (``time.thread_time``) is the latency without the time other processes took the core
    from it, which on a shared machine is most of the noise (a long run is preempted more
    often than a short one, which biases wall-clock ratios). Wall clock with more threads."""
    return time.thread_time if int(threads) == 1 else time.perf_counter


def measure_fraction(dense_sess, pruned_sess, feed, repeats: int = 30, warmup: int = 3,
                     threads: int = 1) -> Tuple[float, float]:
    """(pruned / dense latency, dense ms): both sessions interleaved (A B A B ...), the ratio
    of their median times (thread CPU time with one thread, see _clock)."""
    from .runtime import time_pairs

    ta, tb = time_pairs(dense_sess, pruned_sess, feed, warmup=warmup, repeats=repeats, clock=_clock(threads))
    qa, qb = float(np.median(ta)), float(np.median(tb))
    return qb / max(qa, 1e-12), qa * 1e3


def _feed(model, seed: int):
    def attempt(size):
        feed = bench.random_inputs(model, seed=seed, other=size)
        bench.run_model(model, feed)
        return feed
    return bench.at_free_sizes(model, attempt)


def _dense_ms(model, feed, threads: int, repeats: int = 15) -> float:
    sess = bench.make_session(model, threads)
    f = {i.name: feed[i.name] for i in sess.get_inputs() if i.name in feed}
    for _ in range(3):
        sess.run(None, f)
    ts = []
    clock = _clock(threads)
    for _ in range(repeats):
        t0 = clock()
        sess.run(None, f)
        ts.append(clock() - t0)
    return float(np.median(ts)) * 1e3


def layer_report(an, removed, opts) -> List[dict]:
    """The per-layer table (widths, MACs, latency before/after) of a plan, from the layer model
    (timed now or read from the cache)."""
    from .pipeline import count_feed

    size, feed = _feed(an.model, opts.seed)
    cache = TimingCache(machine_key(opts.threads), opts.latency_cache, enabled=opts.latency_cache != "")
    dense_ms = _dense_ms(an.model, feed, opts.threads) if opts.latency_timer is None else None
    prof = _profile(an.model, feed, opts.threads) if opts.latency_timer is None else None
    lm = LatencyModel(an, dense_ms, opts.threads, count_feed(an.model, opts.seq_len), cache=cache,
                      timer=opts.latency_timer, in_graph=prof)
    return lm.layer_table(removed)
