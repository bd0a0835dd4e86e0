"""Running models in onnxruntime: sessions, one-off runs, a reusable runner, latency.

``session`` builds a CPU session without touching the model (extra outputs are appended as a
second serialized message; large in-memory weights go over as arrays, very large models
through a temporary external-data file); ``make_session`` / ``run_model`` / ``Runner`` are the
simple forms; ``measure_latency`` times two models interleaved (A B A B ...) and reports the
median of the per-pair ratios; ``simd_block`` is the channel multiple onnxruntime's blocked CPU
kernels want on this machine.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import os
import statistics
import tempfile
import time
from typing import Any, Mapping, Sequence

import numpy as np
import onnx
import onnxruntime as ort

from . import io as gio
from .errors import UsageError
from .graph import copy_fields

# --------------------------------------------------------------------------- execution providers

PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider",
             "tensorrt": "TensorrtExecutionProvider"}
_provider: contextvars.ContextVar = contextvars.ContextVar("graphprune_provider", default=("cpu", 0))


def check_provider(name: str, device: int = 0) -> None:
    """Raise a one-line UsageError unless onnxruntime here offers the provider ``name``
    (``cpu``, ``cuda`` or ``tensorrt``) and ``device`` is a valid index."""
    if name not in PROVIDERS:
        raise UsageError(f"unknown provider {name!r}; choose from {', '.join(PROVIDERS)}")
    if int(device) < 0:
        raise UsageError(f"--device must be >= 0, got {device}")
    have = ort.get_available_providers()
    if PROVIDERS[name] not in have:
        raise UsageError(f"--provider {name}: onnxruntime {ort.__version__} here has no {PROVIDERS[name]} "
                         f"(available: {', '.join(have)}); install onnxruntime-gpu (pip install "
                         f"'graphprune[gpu]') on a machine with an NVIDIA GPU")


@contextlib.contextmanager
def use_provider(name: str = "cpu", device: int = 0):
    """Every session graphprune builds inside this block runs on ``name`` (device ``device``):
    verify, the benchmark, calibration and the latency model alike. Checked first
    (:func:`check_provider`); a session onnxruntime builds without that provider is an error,
    never a silent fall back to the CPU."""
    check_provider(name, device)
    token = _provider.set((name, int(device)))
    try:
        yield
    finally:
        _provider.reset(token)


def current_provider() -> tuple:
    """(name, device) of the provider sessions are built for now."""
    return _provider.get()


def provider_list() -> list:
    """onnxruntime's ``providers`` argument for the current provider: the GPU ones keep the CPU
    provider last for the nodes they do not implement (onnxruntime's own partitioning)."""
    name, dev = _provider.get()
    if name == "cpu":
        return ["CPUExecutionProvider"]
    cuda = ("CUDAExecutionProvider", {"device_id": dev})
    if name == "cuda":
        return [cuda, "CPUExecutionProvider"]
    # TensorRT with its structured-sparsity switch: 2:4 zeros in a densified model use sparse tactics
    trt = ("TensorrtExecutionProvider", {"device_id": dev, "trt_sparsity_enable": True})
    return [trt, cuda, "CPUExecutionProvider"]


def open_session(model: Any, so: ort.SessionOptions) -> ort.InferenceSession:
    """``ort.InferenceSession`` on the current provider (a path or serialized bytes), checked
    to really use it."""
    sess = ort.InferenceSession(model, sess_options=so, providers=provider_list())
    name, _ = _provider.get()
    if name != "cpu" and PROVIDERS[name] not in sess.get_providers():
        raise UsageError(f"onnxruntime did not enable {PROVIDERS[name]} for this model "
                         f"(it chose {', '.join(sess.get_providers())}); not falling back to the CPU")
    return sess


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
    copy_fields(model, skel, skip="graph")
    copy_fields(model.graph, skel.graph, skip="initializer")
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
        if a.nbytes != gio.expected_nbytes(t):
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
    return open_session(skel.SerializeToString(), so)


def shareable(model: onnx.ModelProto) -> list:
    """The large embedded initializers of ``model`` when they are worth sharing, else []."""
    # sizes from dims (reading raw_data would copy every tensor once more)
    sized = [(t, gio.expected_nbytes(t) or 0) for t in model.graph.initializer
             if t.data_location != onnx.TensorProto.EXTERNAL and t.HasField("raw_data")]
    big = [(t, n) for t, n in sized if n >= SHARE_MIN_TENSOR]
    return [t for t, _ in big] if sum(n for _, n in big) >= SHARE_MIN_TOTAL else []


def session(
    model_or_path: Any,
    threads: int = 1,
    extra_outputs: Sequence[str] = (),
    opt_level: Any = ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    weights=None,
    prepack: bool = True,
) -> ort.InferenceSession:
    """onnxruntime session on the current provider (CPU unless :func:`use_provider`); ``extra_outputs`` are exposed as graph outputs (the model
    itself is never touched). ``weights``: optional name -> array lookup of initializers
    already in memory, reused instead of copied when the model's weights are shared.
    ``prepack=False``: lean memory for sessions that only collect statistics: no pre-packed
    copies of MatMul weights and no memory arena, so that fetched activations go back to the
    system after each run (results may differ from the default in the last bits)."""
    so = _session_options(threads, opt_level)
    if not prepack:
        so.add_session_config_entry("session.disable_prepacking", "1")
        so.enable_cpu_mem_arena = False
    if isinstance(model_or_path, (str, os.PathLike)):
        path = os.fspath(model_or_path)
        if not extra_outputs:
            try:
                return open_session(path, so)
            except Exception:
                pass  # e.g. an IR version onnxruntime does not read: load and pin
        model = gio.load_model(path)
    else:
        model = _as_model(model_or_path)

    register_kernels(model, threads, so)
    present = {o.name for o in model.graph.output}
    extra = [n for n in dict.fromkeys(extra_outputs) if n and n not in present]
    # Overrides are appended as a second serialized ModelProto: protobuf merges it
    # (scalars replaced, repeated fields appended), so ``model`` is never touched.
    suffix = onnx.ModelProto(ir_version=gio.target_ir_version(model))
    if extra:
        suffix.graph.output.extend(onnx.ValueInfoProto(name=n) for n in extra)
    if gio.approx_model_bytes(model) <= gio.EXTERNAL_DATA_THRESHOLD:
        big = shareable(model)
        if big:
            return _session_shared(model, so, suffix, big, weights)
        data = model.SerializeToString() + suffix.SerializeToString()
        return open_session(data, so)

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
    sess = open_session(path, so)
    sess._graphprune_tmp = tmp  # keep the folder as long as the session lives
    return sess


def register_kernels(model: onnx.ModelProto, threads: int, so: ort.SessionOptions) -> None:
    """Sparse layers (sparsify.py) run on graphprune's custom-op library: load it into ``so``
    for models that use its domain."""
    from .sparsify import load_kernels, uses_kernels

    if uses_kernels(model):
        load_kernels(threads, so)


def make_session(model_or_path: Any, threads: int = 1, **options) -> ort.InferenceSession:
    """CPU onnxruntime session: ``threads`` intra-op threads, 1 inter-op thread,
    sequential execution, all graph optimisations, log severity 3.

    Accepts a ModelProto, serialized bytes, or a path.  In-memory models get their
    IR version pinned (on a copy of the bytes) so that onnxruntime reads them.
    ``options``: ``extra_outputs``, ``opt_level``, ``weights``, ``prepack`` as in :func:`session`."""
    return session(model_or_path, threads, **options)


def run_model(
    model: Any, feed: Mapping[str, np.ndarray], outputs: Sequence[str] | None = None,
    threads: int = 1,
) -> dict[str, np.ndarray]:
    """Run ``model`` once on ``feed``; return {output name: array}.

    ``outputs`` may name intermediate tensors too; they are exposed as extra graph
    outputs for this run.  None -> all graph outputs."""
    if outputs is None:
        sess = session(model, threads)
        names = [o.name for o in sess.get_outputs()]
    else:
        names = list(outputs)
        sess = session(model, threads, extra_outputs=names)
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
            self.sess = session(self.model, self.threads)
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
    ta, tb = time_pairs(sa, sb, feed, warmup=warmup, repeats=repeats, max_seconds=max_seconds)
    ratios = [a / b for a, b in zip(ta, tb) if b > 0]
    return {
        "before_ms": statistics.median(ta) * 1e3,
        "after_ms": statistics.median(tb) * 1e3,
        "speedup": statistics.median(ratios) if ratios else float("nan"),
        "pairs": len(ta),
    }


def time_pairs(sa: ort.InferenceSession, sb: ort.InferenceSession, feed: Mapping[str, np.ndarray],
               warmup: int = 5, repeats: int = 30, max_seconds: float | None = None,
               clock=time.perf_counter) -> tuple[list[float], list[float]]:
    """Run two sessions interleaved (A B A B ...) on ``feed`` (each gets the inputs it has):
    ``warmup`` untimed pairs, then ``repeats`` timed ones, or fewer (at least 3, warm-up
    included in the budget) once ``max_seconds`` of wall time have passed. ``clock``: what a
    run's time is read from (``time.thread_time`` measures CPU time of a one-thread run).
    Returns the per-run times of A and of B, in seconds."""
    fa = {i.name: feed[i.name] for i in sa.get_inputs() if i.name in feed}
    fb = {i.name: feed[i.name] for i in sb.get_inputs() if i.name in feed}
    start = time.perf_counter()
    late = lambda: max_seconds is not None and time.perf_counter() - start > max_seconds
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
    return ta, tb


def run_for_shapes(model: onnx.ModelProto, feed: Mapping[str, np.ndarray], names: list[str]) -> dict:
    """Run ``model`` once on ``feed`` (no graph optimisation) and return the named tensors that
    onnxruntime can expose, as arrays."""
    sess = session(model, 1, extra_outputs=names,
                    opt_level=ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    outs = {o.name for o in sess.get_outputs()}
    want = [n for n in names if n in outs]
    inputs = {i.name for i in sess.get_inputs()}
    res = sess.run(want, {k: v for k, v in feed.items() if k in inputs})
    return dict(zip(want, res))
