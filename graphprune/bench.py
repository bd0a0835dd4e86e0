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

    _register_kernels(model, threads, so)
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


def _register_kernels(model: onnx.ModelProto, threads: int, so: ort.SessionOptions) -> None:
    """Sparse layers (sparsify.py) run on graphprune's custom-op library: load it for models
    that use its domain."""
    from .sparsify import load_kernels, uses_kernels

    if uses_kernels(model):
        load_kernels(threads, so)


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
    threads: int = 1, warmup: int = 5, repeats: int = 30,
) -> dict[str, float]:
    """Time both models interleaved (A B A B ...) on the same feed.

    Returns {"before_ms": median dense time, "after_ms": median pruned time,
    "speedup": median over pairs of dense_i / pruned_i}."""
    if repeats < 1:
        raise ValueError("repeats must be >= 1")
    sa = make_session(dense_model, threads)
    sb = make_session(pruned_model, threads)
    fa = {i.name: feed[i.name] for i in sa.get_inputs() if i.name in feed}
    fb = {i.name: feed[i.name] for i in sb.get_inputs() if i.name in feed}
    for _ in range(max(0, warmup)):
        sa.run(None, fa)
        sb.run(None, fb)
    ta: list[float] = []
    tb: list[float] = []
    clock = time.perf_counter
    for _ in range(repeats):
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


def at_free_sizes(model: onnx.ModelProto, attempt):
    """``attempt(size)`` with free symbolic dims at each of FREE_SIZES in turn (only the first
    when the inputs have none), until one returns; the last failure is raised. Returns
    (size, result)."""
    sizes = FREE_SIZES if free_dims(model) else FREE_SIZES[:1]
    for k, size in enumerate(sizes):
        try:
            return size, attempt(size)
        except Exception:
            if k == len(sizes) - 1:
                raise


def random_inputs(
    model: onnx.ModelProto, seed: int = 0, batch: int = 1,
    dims: Mapping[str, int] | None = None, other: int = 8,
) -> dict[str, np.ndarray]:
    """A random feed for the graph inputs that are not initializers.

    Floats: standard normal.  Integers: uniform in [0, 10).  Bools: random.
    Inputs whose name contains "mask": ones.  Symbolic dimensions: a symbol in
    ``dims`` takes that value; a batch symbol (named like "batch", or on the
    first axis of a rank >= 2 input and on no other axis) takes ``batch``; any
    other symbol or unknown dim takes ``other`` (8)."""
    dims = dict(dims or {})
    rng = np.random.default_rng(seed)
    graph_inputs = _graph_inputs(model)
    batch_syms = batch_symbols(model)

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
        if "mask" in vi.name.lower():
            arr = np.ones(shape, dtype=dtype)
        elif dtype == np.bool_:
            arr = np.asarray(rng.random(shape) < 0.5)
        elif np.issubdtype(dtype, np.integer):
            arr = rng.integers(0, 10, size=shape).astype(dtype)
        elif dtype.kind == "f" or dtype.kind == "V" or dtype.kind == "c":
            arr = rng.standard_normal(shape).astype(dtype)
        elif dtype == object:
            arr = np.full(shape, "a", dtype=object)
        else:
            arr = rng.standard_normal(shape).astype(dtype)
        feed[vi.name] = arr
    return feed


# --------------------------------------------------------------------------- counting


def _numel(dims: Iterable[int]) -> int:
    n = 1
    for d in dims:
        n *= int(d)
    return n


def _count_params_graph(graph: onnx.GraphProto) -> int:
    total = 0
    for t in graph.initializer:
        if t.data_type in _PARAM_TYPES:
            total += _numel(t.dims)
    for sp in graph.sparse_initializer:
        if sp.values.data_type in _PARAM_TYPES:
            total += _numel(sp.dims)
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
