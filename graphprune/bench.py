"""Cost counting (MACs, parameters) and latency measurement with onnxruntime.

MACs are counted at batch 1: static dimensions are used as they are, symbolic batch
dimensions (the symbol on the first axis of a graph input, or an unknown first
axis) count as 1, and any other unknown dimension is taken from one run of the
model on ``input_feed`` when one is given (and counts as 1 otherwise).
"""

from __future__ import annotations

import functools
import os
import statistics
import tempfile
import time
import warnings
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import onnx
import onnxruntime as ort

from . import io as gio
from .errors import InputError

# Tensor types counted as parameters: floats, plus the 8-bit-and-narrower
# integers quantized models keep their weights in (never shape constants).
_T = onnx.TensorProto
_PARAM_TYPES = {
    _T.FLOAT, _T.FLOAT16, _T.BFLOAT16, _T.DOUBLE,
    _T.FLOAT8E4M3FN, _T.FLOAT8E4M3FNUZ, _T.FLOAT8E5M2, _T.FLOAT8E5M2FNUZ,
    _T.FLOAT4E2M1, _T.INT8, _T.UINT8, _T.INT4, _T.UINT4,
}
for _n in ("FLOAT8E8M0", "FLOAT6E2M3", "FLOAT6E3M2", "INT2", "UINT2"):
    if hasattr(_T, _n):
        _PARAM_TYPES.add(getattr(_T, _n))


# --------------------------------------------------------------------------- sessions


def _session_options(threads: int, opt_level: Any) -> ort.SessionOptions:
    so = ort.SessionOptions()
    so.intra_op_num_threads = int(threads)
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = opt_level
    so.log_severity_level = 4
    return so


def _as_model(model_or_bytes: onnx.ModelProto | bytes) -> onnx.ModelProto:
    if isinstance(model_or_bytes, onnx.ModelProto):
        return model_or_bytes
    m = onnx.ModelProto()
    m.ParseFromString(bytes(model_or_bytes))
    return m


def release_memory(collect: bool = True) -> None:
    """Hand freed heap memory back to the system: glibc keeps what a dropped session freed,
    and the next session or batch would stack on top of it. ``collect``: run the garbage
    collector first (skip it where many live objects make that slow and nothing is cyclic)."""
    import ctypes
    import gc

    if collect:
        gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


@functools.lru_cache(maxsize=None)
def simd_block() -> int:
    """Channel multiple that onnxruntime's blocked CPU kernels want on this machine: its NCHWc
    convolutions use blocks of 16 floats with AVX-512 and 8 with AVX2 (channel counts off the
    block fall back to slower kernels); 4 elsewhere (128-bit SIMD). From /proc/cpuinfo; 8 where
    that cannot be read."""
    try:
        with open("/proc/cpuinfo") as fh:
            flags = set()
            for line in fh:
                if line.startswith(("flags", "Features")):
                    flags.update(line.split(":", 1)[1].split())
    except OSError:
        return 8
    if "avx512f" in flags:
        return 16
    if "avx2" in flags:
        return 8
    return 4 if flags else 8


# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
LEAN_MMAP_THRESHOLD = 1 << 16
_lean = False


def lean_heap() -> None:
    """Make glibc serve every allocation of LEAN_MMAP_THRESHOLD (64 KB) or more with its own mapping, returned to the
    system as soon as it is freed. By default glibc raises that threshold each time a large
    block is freed, after which activation-sized arrays come from the heap and stay resident
    when freed (fragmented): on MiniLM calibration that was 50-70 MB of the peak. Process-wide
    and permanent (it also turns off glibc's threshold adjustment); a no-op without glibc or
    with the environment variable GRAPHPRUNE_LEAN_HEAP=0."""
    global _lean
    if _lean or os.environ.get("GRAPHPRUNE_LEAN_HEAP", "1") == "0":
        return
    _lean = True
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(_M_MMAP_THRESHOLD, LEAN_MMAP_THRESHOLD)
        libc.mallopt(_M_TRIM_THRESHOLD, 0)
    except (OSError, AttributeError):
        pass


# In-memory models whose large initializers add up to this much are handed to onnxruntime
# as a weight-free graph plus the initializer arrays (see _session_shared).
SHARE_MIN_TOTAL = 8 << 20
SHARE_MIN_TENSOR = 4096


def _session_shared(model: onnx.ModelProto, so: ort.SessionOptions, suffix: onnx.ModelProto,
                    big: Sequence[onnx.TensorProto], weights) -> ort.InferenceSession:
    """Session for ``model`` without serializing its weights: the graph goes over as a
    skeleton whose large initializers point to external data, and the data come as arrays
    through ``add_external_initializers`` (onnxruntime copies them once). Serializing the
    whole model costs two transient copies of the weights (the bytes and onnxruntime's
    parse of them) on top of onnxruntime's own; this costs at most one, and none when
    ``weights`` (name -> array, e.g. ``Graph.const``) already holds the arrays."""
    from onnx import numpy_helper

    skel = onnx.ModelProto()
    _copy_fields(model, skel, skip="graph")
    _copy_fields(model.graph, skel.graph, skip="initializer")
    big_names = {t.name for t in big}
    names, values = [], []
    for t in model.graph.initializer:
        if t.name not in big_names:
            skel.graph.initializer.append(t)
            continue
        a = weights(t.name) if weights is not None else None
        want = onnx.helper.tensor_dtype_to_np_dtype(t.data_type)
        if a is None or a.dtype != want or tuple(a.shape) != tuple(t.dims):
            a = numpy_helper.to_array(t)
        a = np.ascontiguousarray(a)
        if a.nbytes != gio._expected_nbytes(t):
            raise ValueError(f"initializer {t.name!r}: raw data size does not match its shape")
        stub = skel.graph.initializer.add(name=t.name, data_type=t.data_type, dims=t.dims)
        stub.data_location = onnx.TensorProto.EXTERNAL
        for k, v in (("location", "graphprune-in-memory"), ("offset", "0"), ("length", str(a.nbytes))):
            e = stub.external_data.add()
            e.key, e.value = k, v
        names.append(t.name)
        values.append(ort.OrtValue.ortvalue_from_numpy(a))
    skel.MergeFrom(suffix)
    so.add_external_initializers(names, values)
    return ort.InferenceSession(skel.SerializeToString(), sess_options=so, providers=["CPUExecutionProvider"])


def _shareable(model: onnx.ModelProto) -> list:
    """The large embedded initializers of ``model`` when they are worth sharing, else []."""
    # sizes from dims (reading raw_data would copy every tensor once more)
    sized = [(t, gio._expected_nbytes(t) or 0) for t in model.graph.initializer
             if t.data_location != onnx.TensorProto.EXTERNAL and t.HasField("raw_data")]
    big = [(t, n) for t, n in sized if n >= SHARE_MIN_TENSOR]
    return [t for t, _ in big] if sum(n for _, n in big) >= SHARE_MIN_TOTAL else []


def _session(
    model_or_path: Any,
    threads: int = 1,
    extra_outputs: Sequence[str] = (),
    opt_level: Any = ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    weights=None,
    prepack: bool = True,
) -> ort.InferenceSession:
    """onnxruntime CPU session; ``extra_outputs`` are exposed as graph outputs (the model
    itself is never touched). ``weights``: optional name -> array lookup of initializers
    already in memory, reused instead of copied when the model's weights are shared.
    ``prepack=False``: lean memory for sessions that only collect statistics: no pre-packed
    copies of MatMul weights and no memory arena, so that fetched activations go back to the
    system after each run (results may differ from the default in the last bits)."""
    so = _session_options(threads, opt_level)
    if not prepack:
        so.add_session_config_entry("session.disable_prepacking", "1")
        so.enable_cpu_mem_arena = False
    providers = ["CPUExecutionProvider"]
    if isinstance(model_or_path, (str, os.PathLike)):
        path = os.fspath(model_or_path)
        if not extra_outputs:
            try:
                return ort.InferenceSession(path, sess_options=so, providers=providers)
            except Exception:
                pass  # e.g. an IR version onnxruntime does not read: load and pin
        model = gio.load_model(path)
    else:
        model = _as_model(model_or_path)

    present = {o.name for o in model.graph.output}
    extra = [n for n in dict.fromkeys(extra_outputs) if n and n not in present]
    # Overrides are appended as a second serialized ModelProto: protobuf merges it
    # (scalars replaced, repeated fields appended), so ``model`` is never touched.
    suffix = onnx.ModelProto(ir_version=gio.target_ir_version(model))
    if extra:
        suffix.graph.output.extend(onnx.ValueInfoProto(name=n) for n in extra)
    if gio.approx_model_bytes(model) <= gio.EXTERNAL_DATA_THRESHOLD:
        big = _shareable(model)
        if big:
            return _session_shared(model, so, suffix, big, weights)
        data = model.SerializeToString() + suffix.SerializeToString()
        return ort.InferenceSession(data, sess_options=so, providers=providers)

    # Too large for one buffer: write it with external data to a temp folder.
    tmp = tempfile.TemporaryDirectory(prefix="graphprune-")
    n_out = len(model.graph.output)
    ir = model.ir_version
    try:
        model.ir_version = suffix.ir_version
        model.graph.output.extend(suffix.graph.output)
        path = os.path.join(tmp.name, "model.onnx")
        gio.save_model(model, path, external_data=True)
    finally:
        model.ir_version = ir
        del model.graph.output[n_out:]
    sess = ort.InferenceSession(path, sess_options=so, providers=providers)
    sess._graphprune_tmp = tmp  # keep the folder as long as the session lives
    return sess


def make_session(model_or_path: Any, threads: int = 1) -> ort.InferenceSession:
    """CPU onnxruntime session: ``threads`` intra-op threads, 1 inter-op thread,
    sequential execution, all graph optimisations, log severity 3.

    Accepts a ModelProto, serialized bytes, or a path.  In-memory models get their
    IR version pinned (on a copy of the bytes) so that onnxruntime reads them."""
    return _session(model_or_path, threads)


def run_model(
    model: Any, feed: Mapping[str, np.ndarray], outputs: Sequence[str] | None = None,
    threads: int = 1,
) -> dict[str, np.ndarray]:
    """Run ``model`` once on ``feed``; return {output name: array}.

    ``outputs`` may name intermediate tensors too; they are exposed as extra graph
    outputs for this run.  None -> all graph outputs."""
    if outputs is None:
        sess = _session(model, threads)
        names = [o.name for o in sess.get_outputs()]
    else:
        names = list(outputs)
        sess = _session(model, threads, extra_outputs=names)
    inputs = {i.name for i in sess.get_inputs()}
    res = sess.run(names, {k: v for k, v in feed.items() if k in inputs})
    return dict(zip(names, res))


class Runner:
    """One session of ``model`` for several feeds: ``Runner(model)(feed)`` -> {output: array},
    like :func:`run_model` without building a session (for large models: writing and loading
    the weights) per call. The session is created on the first call."""

    def __init__(self, model: Any, threads: int = 1):
        self.model, self.threads, self.sess = model, threads, None

    def __call__(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.sess is None:
            self.sess = _session(self.model, self.threads)
            self.names = [o.name for o in self.sess.get_outputs()]
            self.inputs = {i.name for i in self.sess.get_inputs()}
        res = self.sess.run(self.names, {k: v for k, v in feed.items() if k in self.inputs})
        return dict(zip(self.names, res))


def measure_latency(
    dense_model: Any, pruned_model: Any, feed: Mapping[str, np.ndarray],
    threads: int = 1, warmup: int = 5, repeats: int = 30, max_seconds: float | None = None,
) -> dict[str, float]:
    """Time both models interleaved (A B A B ...) on the same feed: ``repeats`` pairs, or fewer
    (at least 3, warm-up included in the budget) once ``max_seconds`` have passed.

    Returns {"before_ms": median dense time, "after_ms": median pruned time,
    "speedup": median over pairs of dense_i / pruned_i, "pairs": pairs timed}."""
    if repeats < 1:
        raise ValueError("repeats must be >= 1")
    sa = make_session(dense_model, threads)
    sb = make_session(pruned_model, threads)
    fa = {i.name: feed[i.name] for i in sa.get_inputs() if i.name in feed}
    fb = {i.name: feed[i.name] for i in sb.get_inputs() if i.name in feed}
    clock = time.perf_counter
    start = clock()
    late = lambda: max_seconds is not None and clock() - start > max_seconds
    for _ in range(max(0, warmup)):
        sa.run(None, fa)
        sb.run(None, fb)
        if late():
            break
    ta: list[float] = []
    tb: list[float] = []
    for k in range(repeats):
        if k >= 3 and late():
            break
        t0 = clock()
        sa.run(None, fa)
        t1 = clock()
        sb.run(None, fb)
        t2 = clock()
        ta.append(t1 - t0)
        tb.append(t2 - t1)
    ratios = [a / b for a, b in zip(ta, tb) if b > 0]
    return {
        "before_ms": statistics.median(ta) * 1e3,
        "after_ms": statistics.median(tb) * 1e3,
        "speedup": statistics.median(ratios) if ratios else float("nan"),
        "pairs": len(ta),
    }


# --------------------------------------------------------------------------- inputs


def is_batch_symbol(sym: str) -> bool:
    return "batch" in sym.lower() or sym in ("N", "B", "n", "b")


def _graph_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    inits = {t.name for t in model.graph.initializer}
    inits |= {t.values.name for t in model.graph.sparse_initializer}
    return [i for i in model.graph.input if i.name not in inits]


def batch_symbols(model: onnx.ModelProto) -> set[str]:
    """Symbols of the graph inputs that denote the batch: named like "batch", or
    on the first axis of a rank >= 2 input and on no other axis."""
    first_axis: set[str] = set()
    other_axis: set[str] = set()
    every: set[str] = set()
    for ax, d, rank in _input_dims(model):
        if d.HasField("dim_param"):
            every.add(d.dim_param)
            (first_axis if ax == 0 and rank >= 2 else other_axis).add(d.dim_param)
    return {s for s in every if is_batch_symbol(s)} | (first_axis - other_axis)


def _input_dims(model: onnx.ModelProto):
    """(axis, dim, rank) of every dim of every graph input with a shape."""
    for vi in _graph_inputs(model):
        tt = vi.type.tensor_type
        if not vi.type.HasField("tensor_type") or not tt.HasField("shape"):
            continue
        rank = len(tt.shape.dim)
        for ax, d in enumerate(tt.shape.dim):
            yield ax, d, rank


FREE_SIZES = (8, 32, 64, 224)   # sizes tried for free symbolic dims until the model runs (see free_dims)


def free_dims(model: onnx.ModelProto) -> bool:
    """Whether a graph input has a symbolic or unknown dim that is not the batch (random inputs
    then pick its size: 8 first; an FPN/UNet that needs multiples of 32 runs at a larger one)."""
    batch_syms = batch_symbols(model)
    for ax, d, rank in _input_dims(model):
        if d.HasField("dim_value") and d.dim_value >= 0:
            continue
        sym = d.dim_param if d.HasField("dim_param") else ""
        if not (sym and sym in batch_syms) and not (not sym and ax == 0 and rank >= 2):
            return True
    return False


def implied_sizes(model: onnx.ModelProto) -> tuple[list[int], int | None]:
    """(sizes, cap): sizes the graph implies for free input dims, tried before FREE_SIZES' guesses
    (after the first): the non-1, non-channel dims of constants combined element-wise with
    activations (a learned position encoding [1, T, d] fixes T) and the rows of position tables;
    cap: the fewest rows of a table indexed by positions made from shapes (Range, or a slice of a
    constant position_ids buffer), above which the sequence cannot go (None when there is none)."""
    shapes, _, consumers = _consts_and_consumers(model)
    makers = {o: n for n in model.graph.node for o in n.output if o}
    sizes: list[int] = []
    cap = None

    def positions(name: str, depth: int = 0):
        """The length a position-index tensor cannot exceed, when it is made from shapes."""
        n = makers.get(name)
        if n is None or depth > 6:
            return None
        if n.op_type == "Range":
            return -1                                   # as long as the sequence: bounded by the table
        if n.op_type == "Slice" and n.input and n.input[0] in shapes and shapes[n.input[0]]:
            return int(shapes[n.input[0]][-1])          # a slice of a constant position_ids buffer
        if n.op_type in ("Unsqueeze", "Expand", "Cast", "Identity", "Reshape", "Slice", "Add") and n.input:
            return positions(n.input[0], depth + 1)
        return None

    for n in model.graph.node:
        if n.op_type == "Gather" and len(n.input) == 2 and n.input[0] in shapes and len(shapes[n.input[0]]) == 2:
            p = positions(n.input[1])
            if p is not None:
                rows = int(shapes[n.input[0]][0])
                c = rows if p < 0 else min(rows, p)
                cap = c if cap is None else min(cap, c)
                sizes.append(c)
        if n.op_type in ("Add", "Sub", "Mul", "Div") and len(n.input) == 2:
            for k in (0, 1):
                c, other = n.input[k], n.input[1 - k]
                if c in shapes and other not in shapes and len(shapes[c]) >= 3:
                    sizes += [int(d) for d in shapes[c][:-1] if int(d) > 1]
    out = [x for x in dict.fromkeys(sizes) if 1 < x <= 4096 and (cap is None or x <= cap)]
    return out, cap


def free_sizes(model: onnx.ModelProto) -> list[int]:
    """Sizes at_free_sizes tries for free dims: FREE_SIZES' first, those the graph implies
    (implied_sizes), then the rest of FREE_SIZES, none above a position table's rows."""
    if not free_dims(model):
        return list(FREE_SIZES[:1])
    implied, cap = implied_sizes(model)
    sizes = [FREE_SIZES[0]] + implied + list(FREE_SIZES[1:])
    sizes = [x for x in dict.fromkeys(sizes) if cap is None or x <= cap]
    return sizes or [FREE_SIZES[0]]


def at_free_sizes(model: onnx.ModelProto, attempt):
    """``attempt(size)`` with free symbolic dims at each of free_sizes(model) in turn (FREE_SIZES,
    with the sizes the graph implies tried before guesses; only the first when the inputs have no
    free dims), until one returns; the last failure is raised. Returns (size, result)."""
    sizes = free_sizes(model)
    for k, size in enumerate(sizes):
        try:
            return size, attempt(size)
        except Exception:
            if k == len(sizes) - 1:
                raise


def random_inputs(
    model: onnx.ModelProto, seed: int = 0, batch: int = 1,
    dims: Mapping[str, int] | None = None, other: int = 8,
    ranges: Mapping[str, tuple] | None = None,
) -> dict[str, np.ndarray]:
    """A random feed for the graph inputs that are not initializers, valid for the model.

    Floats: standard normal.  Integers: uniform in the range :func:`input_ranges` finds (the
    rows of the embedding tables they index, 0/1 for masks and type ids, positions below the
    sequence length; [0, 10) when nothing bounds them); ``ranges`` ({name: (low, high)}, high
    exclusive) overrides it.  Bools: random.  Inputs whose name contains "mask": ones.
    Symbolic dimensions: a symbol in ``dims`` takes that value; a batch symbol (named like
    "batch", or on the first axis of a rank >= 2 input and on no other axis) takes ``batch``;
    any other symbol or unknown dim takes ``other`` (8)."""
    dims = dict(dims or {})
    rng = np.random.default_rng(seed)
    graph_inputs = _graph_inputs(model)
    batch_syms = batch_symbols(model)
    bounds = input_ranges(model)
    bounds.update(ranges or {})

    def size(sym: str, ax: int, rank: int) -> int:
        if sym and sym in dims:
            return int(dims[sym])
        if sym and sym in batch_syms:
            return batch
        if not sym and ax == 0 and rank >= 2:
            return batch
        return other

    feed: dict[str, np.ndarray] = {}
    for vi in graph_inputs:
        if not vi.type.HasField("tensor_type"):
            raise InputError(f"graph input {vi.name!r} is not a tensor; cannot make random data for it")
        tt = vi.type.tensor_type
        try:
            dtype = onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type)
        except Exception:
            raise InputError(f"graph input {vi.name!r} has an unsupported element type") from None
        shape: list[int] = []
        if tt.HasField("shape"):
            rank = len(tt.shape.dim)
            for ax, d in enumerate(tt.shape.dim):
                if d.HasField("dim_value") and d.dim_value >= 0:
                    shape.append(int(d.dim_value))
                else:
                    shape.append(size(d.dim_param if d.HasField("dim_param") else "", ax, rank))
        if vi.name in (ranges or {}):
            lo, hi = ranges[vi.name]
            arr = _uniform(rng, lo, hi, shape, dtype)
        elif "mask" in vi.name.lower():
            arr = np.ones(shape, dtype=dtype)
        elif dtype == np.bool_:
            arr = np.asarray(rng.random(shape) < 0.5)
        elif np.issubdtype(dtype, np.integer):
            lo, hi = bounds.get(vi.name, (0, 10))
            if _is_position(vi.name) and shape:
                # positions 0, 1, ... along the last axis (wrapped below the bound)
                arr = np.broadcast_to(np.arange(shape[-1]) % max(hi - lo, 1) + lo, shape).astype(dtype)
            else:
                arr = _uniform(rng, lo, hi, shape, dtype)
        elif dtype.kind == "f" or dtype.kind == "V" or dtype.kind == "c":
            arr = rng.standard_normal(shape).astype(dtype)
        elif dtype == object:
            arr = np.full(shape, "a", dtype=object)
        else:
            arr = rng.standard_normal(shape).astype(dtype)
        feed[vi.name] = arr
    return feed


def _uniform(rng, lo, hi, shape, dtype) -> np.ndarray:
    if np.dtype(dtype).kind in "iub":
        return rng.integers(int(lo), max(int(hi), int(lo) + 1), size=shape).astype(dtype)
    return rng.uniform(float(lo), float(hi), size=shape).astype(dtype)


def _is_position(name: str) -> bool:
    return "position" in name.lower() or name.lower() in ("pos", "pos_ids", "positions")


def _is_type_ids(name: str) -> bool:
    n = name.lower()
    return "token_type" in n or "segment" in n or n in ("type_ids", "tt_ids")


# ops whose output holds (a subset or an arrangement of) the values of their data input
_VALUE_PASS = {"Cast": (0,), "Identity": (0,), "Unsqueeze": (0,), "Squeeze": (0,), "Reshape": (0,),
               "Flatten": (0,), "Expand": (0,), "Slice": (0,), "Transpose": (0,), "Tile": (0,),
               "Gather": (0,), "GatherElements": (0,), "GatherND": (0,), "Concat": None, "Split": (0,),
               "Max": None, "Min": None, "Neg": (0,), "Abs": (0,)}
# ops whose input at this position indexes along an axis of their data input (position, axis attr, default)
_INDEXES = {"Gather": (1, "axis", 0), "GatherElements": (1, "axis", 0)}
# com.microsoft EmbedLayerNormalization: input position -> the table it indexes
_EMBED_LN = {0: 2, 1: 4, 8: 3}


def _consts_and_consumers(model: onnx.ModelProto):
    g = model.graph
    shapes = {t.name: list(t.dims) for t in g.initializer}
    small = {t.name: t for t in g.initializer if _numel(t.dims) <= 64}
    for n in g.node:
        if n.op_type == "Constant" and n.output:
            for a in n.attribute:
                if a.name == "value":
                    shapes[n.output[0]] = list(a.t.dims)
                    if _numel(a.t.dims) <= 64:
                        small[n.output[0]] = a.t
    consumers: dict[str, list] = {}
    for n in g.node:
        for k, x in enumerate(n.input):
            if x:
                consumers.setdefault(x, []).append((n, k))
    return shapes, small, consumers


def index_bounds(model: onnx.ModelProto) -> dict[str, list[tuple[int, int, str, str]]]:
    """For every integer graph input, the index ranges it must stay in: a list of
    (low, high exclusive, op type, node name), one per constant table its values reach as
    indices (Gather, GatherElements, EmbedLayerNormalization, OneHot), followed through value
    moves (Cast, Unsqueeze, Reshape, Concat, ...) and shifts by a constant (Add/Sub)."""
    from onnx import numpy_helper

    shapes, small, consumers = _consts_and_consumers(model)
    out: dict[str, list] = {}
    for vi in _graph_inputs(model):
        tt = vi.type.tensor_type
        if not vi.type.HasField("tensor_type"):
            continue
        try:
            if not np.issubdtype(onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type), np.integer):
                continue
        except Exception:
            continue
        found: list = []
        seen: set = set()
        todo = [(vi.name, 0, 0)]           # tensor, min and max constant added so far
        while todo:
            name, cmin, cmax = todo.pop()
            if (name, cmin, cmax) in seen or len(seen) > 10000:
                continue
            seen.add((name, cmin, cmax))
            for n, k in consumers.get(name, []):
                op = n.op_type
                label = n.name or (n.output[0] if n.output else op)
                if n.domain == "com.microsoft" and op == "EmbedLayerNormalization" and k in _EMBED_LN:
                    t = n.input[_EMBED_LN[k]] if len(n.input) > _EMBED_LN[k] else ""
                    if t in shapes and shapes[t]:
                        found.append((max(0, -cmin), shapes[t][0] - cmax, op, label))
                    continue
                if n.domain not in ("", "ai.onnx"):
                    continue
                if op in _INDEXES and k == _INDEXES[op][0]:
                    data = n.input[0]
                    if data in shapes and shapes[data]:
                        ax = int(_attr(n, _INDEXES[op][1], _INDEXES[op][2]))
                        rank = len(shapes[data])
                        if -rank <= ax < rank:
                            found.append((max(0, -cmin), shapes[data][ax] - cmax, op, label))
                    continue
                if op == "OneHot" and k == 0 and len(n.input) > 1 and n.input[1] in small:
                    depth = int(np.asarray(numpy_helper.to_array(small[n.input[1]])).reshape(-1)[0])
                    found.append((max(0, -cmin), depth - cmax, op, label))
                    continue
                if op in ("Add", "Sub") and len(n.input) == 2:
                    other = n.input[1 - k]
                    if other not in small:
                        continue
                    c = np.asarray(numpy_helper.to_array(small[other]))
                    if c.size == 0 or c.dtype.kind not in "iu":
                        continue
                    if op == "Sub":
                        if k != 0:
                            continue
                        c = -c
                    todo.append((n.output[0], cmin + int(c.min()), cmax + int(c.max())))
                    continue
                slots = _VALUE_PASS.get(op, ())
                if slots is None or k in slots:
                    for o in n.output:
                        if o:
                            todo.append((o, cmin, cmax))
        if found:
            out[vi.name] = found
    return out


def input_ranges(model: onnx.ModelProto) -> dict[str, tuple[int, int]]:
    """{integer input: (low, high exclusive)} that random feeds use: the tightest of the index
    bounds (:func:`index_bounds`); type ids (``token_type_ids``, ``segment_ids``) at most
    [0, 2)."""
    out = {}
    for name, found in index_bounds(model).items():
        lo = max(f[0] for f in found)
        hi = min(f[1] for f in found)
        if hi > lo:
            out[name] = (lo, hi)
    for vi in _graph_inputs(model):
        if _is_type_ids(vi.name):
            lo, hi = out.get(vi.name, (0, 2))
            out[vi.name] = (lo, min(hi, lo + 2))
    return out


def explain_run_error(model: onnx.ModelProto, feed: Mapping[str, np.ndarray] | None, err: BaseException) -> str:
    """A sentence naming the input and node behind an onnxruntime failure, when the failure is
    an index out of range at a node some integer input reaches ('' otherwise)."""
    import re

    msg = str(err)
    m = re.search(r"running (\w+) node\. Name:'([^']*)'", msg)
    if not m or not re.search(r"out of (data )?bounds|out of range|must be within", msg):
        return ""
    op, node = m.group(1), m.group(2)
    for name, found in index_bounds(model).items():
        for lo, hi, fop, label in found:
            if label == node:
                got = ""
                if feed is not None and name in feed and np.size(feed[name]):
                    a = np.asarray(feed[name])
                    got = f" (fed values in [{a.min()}, {a.max()}])"
                return (f"input {name!r}{got} indexes {fop} {node!r}, which takes [{lo}, {hi - 1}]: "
                        f"pass --input {name}={lo}:{hi} or --inputs SAMPLE.npz")
    return f"an input value is out of range at {op} {node!r}: pass --input NAME=LOW:HIGH or --inputs SAMPLE.npz"


def parse_input_range(text: str) -> tuple[str, tuple]:
    """``NAME=LOW:HIGH`` (high exclusive) -> (name, (low, high)); ValueError when malformed."""
    name, sep, rng = text.rpartition("=")
    lo, sep2, hi = rng.partition(":")
    if not sep or not name or not sep2:
        raise ValueError(f"--input {text!r}: expected NAME=LOW:HIGH")
    try:
        low, high = (int(lo), int(hi)) if "." not in rng and "e" not in rng.lower() else (float(lo), float(hi))
    except ValueError:
        raise ValueError(f"--input {text!r}: LOW and HIGH must be numbers") from None
    if not high > low:
        raise ValueError(f"--input {text!r}: HIGH must be greater than LOW (HIGH is exclusive)")
    return name, (low, high)


# --------------------------------------------------------------------------- counting


def _numel(dims: Iterable[int]) -> int:
    n = 1
    for d in dims:
        n *= int(d)
    return n


def _constant_of_shape_params(graph: onnx.GraphProto) -> int:
    """Elements of float ``ConstantOfShape`` outputs whose shape is an initializer: constant
    tensors too (onnx's IR-3 'light' models make every weight this way; graphprune folds them
    into initializers, so counting them keeps before/after comparable)."""
    from onnx import numpy_helper

    inits = {t.name: t for t in graph.initializer}
    total = 0
    for node in graph.node:
        if node.op_type != "ConstantOfShape" or node.domain not in ("", "ai.onnx") or not node.input:
            continue
        t = inits.get(node.input[0])
        if t is None or t.data_type != _T.INT64 or _numel(t.dims) > 8:
            continue
        dtype = _T.FLOAT
        for a in node.attribute:
            if a.name == "value":
                dtype = a.t.data_type
        if dtype in _PARAM_TYPES:
            total += _numel(numpy_helper.to_array(t).reshape(-1).tolist())
    return total


def _count_params_graph(graph: onnx.GraphProto) -> int:
    total = 0
    for t in graph.initializer:
        if t.data_type in _PARAM_TYPES:
            total += _numel(t.dims)
    for sp in graph.sparse_initializer:
        if sp.values.data_type in _PARAM_TYPES:
            total += _numel(sp.dims)
    total += _constant_of_shape_params(graph)
    for node in graph.node:
        for a in node.attribute:
            if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
                if a.name == "value" and a.t.data_type in _PARAM_TYPES:
                    total += _numel(a.t.dims)
                elif a.name == "sparse_value" and a.sparse_tensor.values.data_type in _PARAM_TYPES:
                    total += _numel(a.sparse_tensor.dims)
                elif a.name == "value_float":
                    total += 1
                elif a.name == "value_floats":
                    total += len(a.floats)
            if a.HasField("g"):
                total += _count_params_graph(a.g)
            for g in a.graphs:
                total += _count_params_graph(g)
    return total


def _copy_fields(src: Any, dst: Any, skip: str) -> None:
    """Copy every set field of message ``src`` into ``dst`` except ``skip``."""
    for fd, val in src.ListFields():
        if fd.name == skip:
            continue
        if hasattr(val, "extend"):  # repeated field
            getattr(dst, fd.name).extend(val)
        elif hasattr(val, "CopyFrom"):  # message field
            getattr(dst, fd.name).CopyFrom(val)
        else:
            setattr(dst, fd.name, val)


def _skeleton(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` for shape inference: large float initializers keep
    their type and dims but not their data (integer data stays for data_prop)."""
    sk = onnx.ModelProto()
    _copy_fields(model, sk, skip="graph")
    g, sg = model.graph, sk.graph
    _copy_fields(g, sg, skip="initializer")
    for t in g.initializer:
        nt = sg.initializer.add()
        if t.data_type in _PARAM_TYPES and _numel(t.dims) > 64:
            nt.name, nt.data_type = t.name, t.data_type
            nt.dims.extend(t.dims)
        else:
            nt.CopyFrom(t)
    return sk


def _shape_of(vi: onnx.ValueInfoProto) -> list[int | str | None] | None:
    t = vi.type
    if not t.HasField("tensor_type") or not t.tensor_type.HasField("shape"):
        return None
    out: list[int | str | None] = []
    for d in t.tensor_type.shape.dim:
        if d.HasField("dim_value"):
            out.append(int(d.dim_value))
        elif d.HasField("dim_param"):
            out.append(d.dim_param)
        else:
            out.append(None)
    return out


def _collect_shapes(graph: onnx.GraphProto, shapes: dict) -> None:
    for t in graph.initializer:
        shapes[t.name] = [int(d) for d in t.dims]
    for vi in list(graph.input) + list(graph.output) + list(graph.value_info):
        s = _shape_of(vi)
        if s is not None and vi.name not in shapes:
            shapes[vi.name] = s
    for node in graph.node:
        if node.op_type == "Constant" and node.output:
            for a in node.attribute:
                if a.name == "value":
                    shapes.setdefault(node.output[0], [int(d) for d in a.t.dims])
        for a in node.attribute:
            if a.HasField("g"):
                _collect_shapes(a.g, shapes)
            for g in a.graphs:
                _collect_shapes(g, shapes)


def _attr(node: onnx.NodeProto, name: str, default: Any) -> Any:
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def _einsum_macs(node: onnx.NodeProto, shp: list) -> int | None:
    """Product of the sizes of every index letter (for >= 2 operands)."""
    if len(shp) < 2:
        return 0
    eq = _attr(node, "equation", b"")
    eq = eq.decode() if isinstance(eq, bytes) else str(eq)
    eq = eq.replace(" ", "")
    lhs = eq.split("->")[0]
    terms = lhs.split(",")
    if len(terms) != len(shp):
        return None
    sizes: dict[str, int] = {}
    for term, s in zip(terms, shp):
        if s is None:
            return None
        if "..." in term:
            pre, post = term.split("...")
            n_ell = len(s) - len(pre) - len(post)
            if n_ell < 0:
                return None
            labels = list(pre) + [f".{n_ell - i}" for i in range(n_ell)] + list(post)
        else:
            labels = list(term)
        if len(labels) != len(s):
            return None
        for lab, d in zip(labels, s):
            sizes[lab] = max(sizes.get(lab, 1), int(d))
    return _numel(sizes.values())


# op type -> positions of the tensors whose shapes the count needs
_CONV_OPS = {"Conv": (0, 1), "ConvInteger": (0, 1), "QLinearConv": (0, 3)}
_MATMUL_OPS = {"MatMul": (0, 1), "MatMulInteger": (0, 1), "QLinearMatMul": (0, 3)}
_RNN_OPS = {"RNN", "GRU", "LSTM"}


def _needed(node: onnx.NodeProto) -> list[str] | None:
    """Names of the tensors whose shapes are needed to count ``node``'s MACs."""
    if node.domain not in ("", "ai.onnx"):
        return None
    op = node.op_type
    ins = list(node.input)

    def at(i: int) -> str:
        return ins[i] if i < len(ins) else ""

    if op in _CONV_OPS:
        return [node.output[0], at(_CONV_OPS[op][1])]
    if op == "ConvTranspose":
        return [at(0), at(1)]
    if op == "Gemm":
        return [at(0), at(1)]
    if op in _MATMUL_OPS:
        a, b = _MATMUL_OPS[op]
        return [at(a), at(b)]
    if op == "Einsum":
        return ins
    if op in _RNN_OPS:
        return [at(0), at(1), at(2)]
    return None


def _node_macs(node: onnx.NodeProto, shp: list) -> int | None:
    """MACs of ``node`` given the resolved shapes of ``_needed(node)``."""
    op = node.op_type
    if op != "Einsum" and any(s is None for s in shp):
        return None
    if op in _CONV_OPS:
        y, w = shp
        return _numel(y) * _numel(w[1:])
    if op == "ConvTranspose":
        x, w = shp
        return _numel(x[1:]) * _numel(w[1:]) * (x[0] if x else 1)
    if op == "Gemm":
        a, b = shp
        if len(a) != 2 or len(b) != 2:
            return None
        m, k = (a[1], a[0]) if _attr(node, "transA", 0) else (a[0], a[1])
        n = b[0] if _attr(node, "transB", 0) else b[1]
        return m * k * n
    if op in _MATMUL_OPS:
        a, b = shp
        if not a or not b:
            return None
        a2 = [1] + list(a) if len(a) == 1 else list(a)
        b2 = list(b) + [1] if len(b) == 1 else list(b)
        m, k, n = a2[-2], a2[-1], b2[-1]
        batch = np.broadcast_shapes(tuple(a2[:-2]), tuple(b2[:-2])) if (len(a2) > 2 or len(b2) > 2) else ()
        return _numel(batch) * m * k * n
    if op == "Einsum":
        return _einsum_macs(node, shp)
    if op in _RNN_OPS:
        x, w, r = shp
        if len(x) != 3:
            return None
        seq, bat = (x[1], x[0]) if _attr(node, "layout", 0) else (x[0], x[1])
        return seq * bat * (_numel(w) + _numel(r))
    return None


def _walk_nodes(graph: onnx.GraphProto, top: bool = True):
    for node in graph.node:
        yield node, top
        for a in node.attribute:
            if a.HasField("g"):
                yield from _walk_nodes(a.g, False)
            for g in a.graphs:
                yield from _walk_nodes(g, False)


def count_macs_params(
    model: onnx.ModelProto, input_feed: Mapping[str, np.ndarray] | None = None, _per_node: list | None = None
) -> tuple[int, int]:
    """(MACs at batch 1, parameter count) of ``model``.

    MACs: Conv / ConvInteger / QLinearConv (output elements x Cin/group x kernel
    size), ConvTranspose, Gemm, MatMul / MatMulInteger / QLinearMatMul (batch x
    M x K x N), Einsum (product of all index sizes), RNN / GRU / LSTM (seq x batch
    x weight elements).  Nodes in subgraphs count once; model-local functions are
    inlined first.  Shapes come from ONNX shape inference; a symbolic batch dim is
    1; other unknown dims are read from one onnxruntime run on ``input_feed``
    (top-level graph only) when given, else count as 1.

    Params: elements of float (and <= 8-bit integer, i.e. quantized) initializers
    and Constant-node tensors, subgraphs included; integer shape constants
    (int32/int64) are not counted.
    """
    params = _count_params_graph(model.graph)

    work = model
    if len(model.functions):
        try:
            from onnx import inliner

            work = inliner.inline_local_functions(model)
        except Exception as e:  # pragma: no cover - depends on the model
            warnings.warn(f"could not inline local functions: {gio._first_line(e)}")
    sk = _skeleton(work)
    if input_feed is not None:
        # concrete input dims let static inference resolve most shapes without running the
        # model (which may be huge, or have its data on disk)
        for vi in sk.graph.input:
            if vi.name in input_feed and vi.type.HasField("tensor_type"):
                shp = np.shape(input_feed[vi.name])
                dims = vi.type.tensor_type.shape.dim
                if len(dims) == len(shp):
                    for d, v in zip(dims, shp):
                        d.Clear()
                        d.dim_value = int(v)
        del sk.graph.value_info[:]
    try:
        inferred = onnx.shape_inference.infer_shapes(
            sk, check_type=False, strict_mode=False, data_prop=True
        )
    except Exception as e:
        warnings.warn(f"shape inference failed, using declared shapes: {gio._first_line(e)}")
        inferred = work

    shapes: dict[str, list] = {}
    _collect_shapes(inferred.graph, shapes)
    inits = {t.name for t in work.graph.initializer}
    batch_syms = batch_symbols(work)

    def resolve(name: str, runtime: Mapping[str, tuple]) -> tuple[list | None, bool]:
        """(dims with None where unknown, every dim known?)"""
        if not name:
            return None, True
        s = shapes.get(name)
        rt = runtime.get(name)
        if s is None:
            return (list(rt), True) if rt is not None else (None, False)
        out, ok = [], True
        for ax, d in enumerate(s):
            if isinstance(d, int) and d >= 0:
                out.append(d)
            elif isinstance(d, str) and d in batch_syms:
                out.append(1)
            elif rt is not None and len(rt) == len(s):
                out.append(int(rt[ax]))
            else:
                out.append(None)  # counts as 1 (batch-like first axis, or unknown)
                ok = False
        return out, ok

    nodes = [(n, top, _needed(n)) for n, top in _walk_nodes(work.graph)]
    nodes = [(n, top, need) for n, top, need in nodes if need is not None]

    runtime: dict[str, tuple] = {}
    if input_feed is not None:
        missing = []
        for n, top, need in nodes:
            if top:
                missing += [x for x in need if x and not resolve(x, {})[1]]
        missing = [x for x in dict.fromkeys(missing) if x not in inits]
        if missing:
            feed_names = set(input_feed)
            runtime.update({k: tuple(np.shape(v)) for k, v in input_feed.items()})
            ask = [x for x in missing if x not in feed_names]
            if ask:
                try:
                    res = _run_for_shapes(work, input_feed, ask)
                    runtime.update({k: tuple(v.shape) for k, v in res.items()})
                except Exception as e:
                    warnings.warn(
                        f"could not run the model to measure shapes; unknown dims count as 1: {gio._first_line(e)}"
                    )

    per_node = []
    for n, top, need in nodes:
        shp = []
        for x in need:
            dims, _ = resolve(x, runtime if top else {})
            shp.append(None if dims is None else [1 if d is None else d for d in dims])
        m = _node_macs(n, shp)
        if m is not None:
            per_node.append((n, top, int(m)))
    if _per_node is not None:
        _per_node.extend(per_node)
    return int(sum(m for _, _, m in per_node)), int(params)


def macs_by_node(model: onnx.ModelProto, input_feed: Mapping[str, np.ndarray] | None = None) -> dict[str, int]:
    """MACs of every top-level node (counted as in :func:`count_macs_params`), keyed by the
    node's first output name."""
    per: list = []
    count_macs_params(model, input_feed, _per_node=per)
    out: dict[str, int] = {}
    for n, top, m in per:
        if top and n.output:
            out[n.output[0]] = out.get(n.output[0], 0) + m
    return out


def _run_for_shapes(model: onnx.ModelProto, feed: Mapping[str, np.ndarray], names: list[str]) -> dict:
    sess = _session(model, 1, extra_outputs=names,
                    opt_level=ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    outs = {o.name for o in sess.get_outputs()}
    want = [n for n in names if n in outs]
    inputs = {i.name for i in sess.get_inputs()}
    res = sess.run(want, {k: v for k, v in feed.items() if k in inputs})
    return dict(zip(want, res))
