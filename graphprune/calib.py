"""Calibration: sample inputs, and what the model does with them.

Sources (``Calibration``):

- ``--calib FILE.npz``: one array per graph input, first axis = samples;
- ``--calib-dir DIR``: ``.npz`` files like the above and/or ``.npy`` files (one array of samples for
  a model with a single input), read in name order and concatenated;
- the Python API: any iterable of feed dicts (each a batch), e.g. a generator.

Everything is checked against the graph inputs (names, dtypes, ranks, static dims, symbolic dims
that must agree across inputs); a mismatch is one :class:`CalibrationError` line naming it.

``collect`` runs the model in onnxruntime with the requested intermediate tensors added as
outputs, batch by batch (tensors split into chunks when one batch of them would exceed
``max_bytes``), and keeps only streaming statistics per (tensor, channel axis): count, per-channel
sum and sum of squares (mean, variance, L2 norm) and, when asked, the Gram matrix X·Xᵀ over the
channels (or over the im2col patches of a Conv consumer). No activation outlives its batch.

``mask_sensitivity`` estimates, with onnxruntime only, how much the outputs move when a unit's
channels are scaled by (1 - eps) at every consumer: the first-order (Taylor) output sensitivity.
"""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass
from typing import Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import onnx
from onnx import helper

from . import inputs, memory, runtime
from .errors import CalibrationError

DEFAULT_BATCH = 16
_ONLY_INPUT = "\0only-input"          # .npy samples, named by check() after the model's one input


# --------------------------------------------------------------------------- sources


def _input_specs(model: onnx.ModelProto) -> Dict[str, Tuple[np.dtype, list]]:
    out = {}
    for vi in inputs.graph_inputs(model):
        tt = vi.type.tensor_type
        try:
            dt = np.dtype(helper.tensor_dtype_to_np_dtype(tt.elem_type))
        except Exception:
            dt = None
        dims: list = []
        if tt.HasField("shape"):
            for d in tt.shape.dim:
                if d.HasField("dim_value") and d.dim_value >= 0:
                    dims.append(int(d.dim_value))
                elif d.HasField("dim_param") and d.dim_param and d.dim_param != "?":
                    dims.append(d.dim_param)
                else:                       # unknown, or paddle2onnx's anonymous "?"
                    dims.append(None)
        else:
            dims = None
        out[vi.name] = (dt, dims)
    return out


def _fmt_dims(dims) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in dims) + "]"


def check_feed(model: onnx.ModelProto, feed: Mapping[str, np.ndarray], where: str = "calibration data",
               specs=None) -> None:
    """Raise a one-line CalibrationError when ``feed`` does not fit the graph inputs."""
    specs = specs if specs is not None else _input_specs(model)
    names = list(specs)
    missing = [n for n in names if n not in feed]
    if missing:
        raise CalibrationError(f"{where} lacks graph input {missing[0]!r} (has {', '.join(map(repr, feed)) or 'nothing'};"
                               f" the model's inputs are {', '.join(map(repr, names))})")
    extra = [k for k in feed if k not in specs]
    if extra:
        raise CalibrationError(f"{where} has {extra[0]!r}, which is not a graph input "
                               f"(the model's inputs are {', '.join(map(repr, names))})")
    sym: Dict[str, Tuple[int, str]] = {}
    for name, (dt, dims) in specs.items():
        a = feed[name]
        if not isinstance(a, np.ndarray):
            raise CalibrationError(f"{where}: input {name!r} is a {type(a).__name__}, not a numpy array")
        if dt is not None and a.dtype != dt:
            raise CalibrationError(f"{where}: input {name!r} has dtype {a.dtype}, the model expects {dt}")
        if dims is None:
            continue
        if a.ndim != len(dims):
            raise CalibrationError(f"{where}: input {name!r} has shape {tuple(a.shape)}, the model expects "
                                   f"{_fmt_dims(dims)} (rank {len(dims)})")
        for ax, (d, v) in enumerate(zip(dims, a.shape)):
            if isinstance(d, int) and d != v:
                raise CalibrationError(f"{where}: input {name!r} has shape {tuple(a.shape)}, the model expects "
                                       f"{_fmt_dims(dims)} (axis {ax} must be {d})")
            if isinstance(d, str):
                prev = sym.setdefault(d, (v, name))
                if prev[0] != v:
                    raise CalibrationError(f"{where}: dimension {d!r} is {prev[0]} in input {prev[1]!r} but {v} "
                                           f"in input {name!r}")


def _split(arrays: Mapping[str, np.ndarray], batch: int, where: str) -> List[Dict[str, np.ndarray]]:
    counts = {k: (v.shape[0] if v.ndim else None) for k, v in arrays.items()}
    if any(c is None for c in counts.values()):
        k = next(k for k, c in counts.items() if c is None)
        raise CalibrationError(f"{where}: array {k!r} is a scalar; the first axis must index samples")
    if len(set(counts.values())) > 1:
        desc = ", ".join(f"{k}: {c}" for k, c in counts.items())
        raise CalibrationError(f"{where}: arrays hold different numbers of samples ({desc})")
    n = next(iter(counts.values()), 0)
    if n == 0:
        raise CalibrationError(f"{where} holds no samples")
    return [{k: np.ascontiguousarray(v[i:i + batch]) for k, v in arrays.items()} for i in range(0, n, batch)]


class Calibration:
    """Calibration batches (feed dicts). Built from files or any iterable of feed dicts; a
    generator is read once and kept (calibration sets are small: the statistics, not the data,
    are what must stay bounded)."""

    def __init__(self, feeds: Iterable[Mapping[str, np.ndarray]], source: str = "calibration data"):
        self.source = source
        self.feeds: List[Dict[str, np.ndarray]] = []
        for f in feeds:
            if not isinstance(f, Mapping):
                raise CalibrationError(f"{source}: every item must be a dict of input name -> array, "
                                       f"got {type(f).__name__}")
            self.feeds.append({k: np.asarray(v) for k, v in f.items()})
        if not self.feeds:
            raise CalibrationError(f"{source} holds no samples")
        self._arrays: Optional[Dict[str, np.ndarray]] = None

    # -- construction
    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray], batch: int = DEFAULT_BATCH,
                    source: str = "calibration data") -> "Calibration":
        c = cls(_split(arrays, batch, source), source)
        c._arrays = dict(arrays)
        return c

    @classmethod
    def from_npz(cls, path: str, batch: int = DEFAULT_BATCH) -> "Calibration":
        return cls.from_arrays(_read_npz(path), batch, f"calibration file {path}")

    @classmethod
    def from_dir(cls, path: str, batch: int = DEFAULT_BATCH) -> "Calibration":
        """``.npz`` files (one array per input) and/or ``.npy`` files (samples of a model's only
        input; matched to it by ``check``), in name order, concatenated along samples."""
        if not os.path.isdir(path):
            raise CalibrationError(f"calibration folder {path} does not exist")
        files = sorted(glob.glob(os.path.join(path, "*.npz")) + glob.glob(os.path.join(path, "*.npy")))
        if not files:
            raise CalibrationError(f"calibration folder {path} has no .npz or .npy files")
        parts: List[Dict[str, np.ndarray]] = []
        for f in files:
            if f.endswith(".npz"):
                parts.append(_read_npz(f))
            else:
                try:
                    parts.append({_ONLY_INPUT: np.load(f, allow_pickle=False)})
                except Exception as e:
                    raise CalibrationError(f"calibration file {f} cannot be read: {_first_line(e)}")
        keys = set(parts[0])
        for f, p in zip(files, parts):
            if set(p) != keys:
                what = lambda ks: "one array (.npy)" if ks == {_ONLY_INPUT} else ", ".join(sorted(ks))
                raise CalibrationError(f"calibration file {f} holds {what(set(p))}, the first file "
                                       f"{what(keys)}")
        arrays = {}
        for k in parts[0]:
            try:
                arrays[k] = np.concatenate([p[k] for p in parts], axis=0)
            except ValueError as e:
                raise CalibrationError(f"calibration folder {path}: arrays cannot be concatenated "
                                       f"({_first_line(e)})")
        return cls.from_arrays(arrays, batch, f"calibration folder {path}")

    # -- use
    def check(self, model: onnx.ModelProto) -> "Calibration":
        specs = _input_specs(model)
        if self._arrays is not None and _ONLY_INPUT in self._arrays:
            if len(specs) != 1:
                raise CalibrationError(f"{self.source}: .npy files hold one array but the model has inputs "
                                       f"{', '.join(map(repr, specs))}; use .npz files with one array per input")
            name = next(iter(specs))
            self._arrays = {name: self._arrays.pop(_ONLY_INPUT)}
            self.feeds = [{name: f.pop(_ONLY_INPUT)} for f in self.feeds]
        firsts = {d[0] for _, d in specs.values() if d}
        if self._arrays is not None and len(firsts) == 1 and isinstance(next(iter(firsts)), int):
            # a static batch axis: samples go in batches of exactly that size
            b = next(iter(firsts))
            if b >= 1 and any(next(iter(f.values())).shape[0] != b for f in self.feeds):
                n = next(iter(self._arrays.values())).shape[0]
                if n % b:
                    raise CalibrationError(f"{self.source}: {n} samples do not fill batches of {b}, the model's "
                                           f"static batch size")
                self.feeds = _split(self._arrays, b, self.source)
        for i, f in enumerate(self.feeds):
            where = self.source if len(self.feeds) == 1 else f"{self.source} (batch {i})"
            check_feed(model, f, where, specs)
        return self

    def samples(self) -> int:
        return sum(next(iter(f.values())).shape[0] if f else 0 for f in self.feeds)

    def __iter__(self) -> Iterator[Dict[str, np.ndarray]]:
        return iter(self.feeds)

    def first(self, n: int) -> List[Dict[str, np.ndarray]]:
        """The first ``n`` samples, one feed dict each."""
        out = []
        for f in self.feeds:
            b = next(iter(f.values())).shape[0]
            for i in range(b):
                out.append({k: v[i:i + 1] for k, v in f.items()})
                if len(out) >= n:
                    return out
        return out


def _first_line(e: BaseException) -> str:
    s = str(e).strip().splitlines()
    return s[0] if s else type(e).__name__


def _read_npz(path: str) -> Dict[str, np.ndarray]:
    if not os.path.exists(path):
        raise CalibrationError(f"calibration file {path} does not exist")
    try:
        with np.load(path, allow_pickle=False) as z:
            if not hasattr(z, "files"):
                raise CalibrationError(f"calibration file {path} is not an .npz archive")
            return {k: z[k] for k in z.files}
    except CalibrationError:
        raise
    except Exception as e:
        raise CalibrationError(f"calibration file {path} cannot be read: {_first_line(e)}")


def synthetic(model: onnx.ModelProto, graph=None, batches: int = 4, batch: int = 8, seq: int = 32,
              seed: int = 0) -> Calibration:
    """Data-free stand-in: standard-normal floats; integer inputs that index a constant table
    (embeddings) are uniform over its rows; masks are ones; symbolic non-batch dims are ``seq``."""
    from .graph import Graph

    g = graph or Graph(model)
    specs = _input_specs(model)
    rng = np.random.default_rng(seed)
    rows: Dict[str, int] = {}
    for name in specs:
        for i, k in g.consumers.get(name, []):
            n = g.nodes[i]
            if n.op_type == "Gather" and k == 1:
                t = g.const(n.input[0])
                if t is not None:
                    rows[name] = min(rows.get(name, t.shape[0]), t.shape[0])
    feeds = []
    bounds = inputs.input_ranges(model)
    batch_syms = inputs.batch_symbols(model)
    for _ in range(batches):
        f = {}
        for name, (dt, dims) in specs.items():
            shape = []
            for ax, d in enumerate(dims or []):
                if isinstance(d, int):
                    shape.append(d)
                elif (isinstance(d, str) and d in batch_syms) or (ax == 0 and len(dims) >= 2):
                    shape.append(batch)
                else:
                    shape.append(seq)
            dt = dt or np.dtype(np.float32)
            if "mask" in name.lower():
                a = np.ones(shape, dt)
            elif dt.kind in "iu":       # valid indices: also tables reached through Cast/Add (inputs.input_ranges)
                lo, hi = bounds.get(name, (0, rows.get(name, 10)))
                a = rng.integers(lo, hi, size=shape).astype(dt)
            elif dt == np.bool_:
                a = rng.random(shape) < 0.5
            else:
                a = rng.standard_normal(shape).astype(dt)
            f[name] = a
        feeds.append(f)
    return Calibration(feeds, "synthetic data")


# --------------------------------------------------------------------------- statistics


@dataclass(frozen=True)
class ConvSpec:
    """What the im2col view of a Conv input needs."""
    kernel: Tuple[int, ...]
    strides: Tuple[int, ...]
    pads: Tuple[int, ...]          # begin..., end...
    dilations: Tuple[int, ...]

    @classmethod
    def of(cls, node: onnx.NodeProto, weight_shape: Sequence[int], in_shape: Optional[Sequence] = None) -> "ConvSpec":
        a = {x.name: helper.get_attribute_value(x) for x in node.attribute}
        k = tuple(int(v) for v in weight_shape[2:])
        nd = len(k)
        strides = tuple(a.get("strides", [1] * nd))
        dil = tuple(a.get("dilations", [1] * nd))
        pads = tuple(a.get("pads", [0] * (2 * nd)))
        auto = a.get("auto_pad", b"NOTSET")
        auto = auto.decode() if isinstance(auto, bytes) else str(auto)
        if auto in ("SAME_UPPER", "SAME_LOWER") and in_shape is not None:
            pb, pe = [], []
            for i in range(nd):
                size = in_shape[2 + i]
                if not isinstance(size, int):
                    raise ValueError("auto_pad with unknown spatial size")
                out = -(-size // strides[i])
                total = max(0, (out - 1) * strides[i] + (k[i] - 1) * dil[i] + 1 - size)
                small, big = total // 2, total - total // 2
                pb.append(small if auto == "SAME_UPPER" else big)
                pe.append(big if auto == "SAME_UPPER" else small)
            pads = tuple(pb + pe)
        elif auto == "VALID":
            pads = (0,) * (2 * nd)
        return cls(k, strides, pads, dil)


def im2col(x: np.ndarray, spec: ConvSpec) -> np.ndarray:
    """[N, C, *S] -> [N * prod(out), C * prod(kernel)] (channel-major, like W.reshape(Cout, -1))."""
    nd = len(spec.kernel)
    pad = [(0, 0), (0, 0)] + [(spec.pads[i], spec.pads[nd + i]) for i in range(nd)]
    xp = np.pad(x, pad) if any(spec.pads) else x
    if all(k == 1 for k in spec.kernel):
        sl = (slice(None), slice(None)) + tuple(slice(None, None, s) for s in spec.strides)
        v = xp[sl]
        return np.moveaxis(v, 1, -1).reshape(-1, x.shape[1])
    span = [(k - 1) * d + 1 for k, d in zip(spec.kernel, spec.dilations)]
    win = np.lib.stride_tricks.sliding_window_view(xp, span, axis=tuple(range(2, 2 + nd)))
    sl = (slice(None), slice(None)) + tuple(slice(None, None, s) for s in spec.strides) \
        + tuple(slice(None, None, d) for d in spec.dilations)
    win = win[sl]                                   # [N, C, *out, *kernel]
    n, c = win.shape[:2]
    perm = (0,) + tuple(range(2, 2 + nd)) + (1,) + tuple(range(2 + nd, 2 + 2 * nd))
    return np.ascontiguousarray(win.transpose(perm)).reshape(-1, c * int(np.prod(spec.kernel)))


@dataclass(frozen=True)
class Request:
    tensor: str
    axis: int
    gram: bool = False
    conv: Optional[ConvSpec] = None     # gram over im2col patches instead of channels


class ActStats:
    """Streaming per-channel statistics of one tensor axis (and optionally its Gram matrix)."""

    def __init__(self, req: Request):
        self.req = req
        self.n = 0
        self.sum: Optional[np.ndarray] = None
        self.sumsq: Optional[np.ndarray] = None
        self.gram: Optional[np.ndarray] = None
        self.gram_n = 0

    # rows converted to float64 at a time, and im2col patches per slice of samples: the
    # statistics never hold more than a few MB beyond the batch itself
    ROWS = 512
    PATCH_BYTES = 32 << 20

    def update(self, a: np.ndarray) -> None:
        r = self.req
        x = np.moveaxis(a, r.axis, -1).reshape(-1, a.shape[r.axis])
        if self.sum is None:
            self.sum = np.zeros(x.shape[1])
            self.sumsq = np.zeros(x.shape[1])
        self.n += x.shape[0]
        for i in range(0, x.shape[0], self.ROWS):
            xb = x[i:i + self.ROWS].astype(np.float64)
            self.sum += xb.sum(0)
            self.sumsq += np.einsum("ij,ij->j", xb, xb)
            if r.gram and r.conv is None:
                self._add_gram(xb)
        if r.gram and r.conv is not None and a.shape[0]:
            per = max(1, a[:1].size * int(np.prod(r.conv.kernel)) * a.itemsize)
            step = max(1, self.PATCH_BYTES // per)
            for j in range(0, a.shape[0], step):
                cols = im2col(a[j:j + step], r.conv)
                for i in range(0, cols.shape[0], self.ROWS):
                    self._add_gram(cols[i:i + self.ROWS].astype(np.float64))

    def _add_gram(self, cols: np.ndarray) -> None:
        g = cols.T @ cols                   # float64 per block, kept in float32 (half the memory)
        if self.gram is None:
            self.gram = g.astype(np.float32)
        else:
            self.gram += g
        self.gram_n += cols.shape[0]

    @property
    def mean(self) -> np.ndarray:
        return self.sum / max(self.n, 1)

    @property
    def var(self) -> np.ndarray:
        m = self.mean
        return np.maximum(self.sumsq / max(self.n, 1) - m * m, 0.0)

    @property
    def norm(self) -> np.ndarray:
        """L2 norm of every channel over all samples and positions."""
        return np.sqrt(self.sumsq)


class CalibStats(dict):
    """Request -> ActStats, with lookups by (tensor, axis)."""

    def get_stats(self, tensor: str, axis: int, gram: bool = False, conv: Optional[ConvSpec] = None
                  ) -> Optional[ActStats]:
        s = self.get(Request(tensor, axis, gram, conv))
        if s is None and not gram:
            s = next((v for k, v in self.items() if k.tensor == tensor and k.axis == axis), None)
        return s


def _symbol_sizes(model: onnx.ModelProto, feed: Mapping[str, np.ndarray]) -> Dict[str, int]:
    out = {}
    for name, (dt, dims) in _input_specs(model).items():
        if dims is None or name not in feed:
            continue
        for d, v in zip(dims, feed[name].shape):
            if isinstance(d, str):
                out[d] = int(v)
    return out


def _estimate_bytes(shape, sizes: Mapping[str, int], batch: int) -> int:
    if shape is None:
        return 64 * 1024 * 1024
    n = 1
    for ax, d in enumerate(shape):
        if isinstance(d, int):
            n *= max(d, 1)
        elif isinstance(d, str) and d in sizes:
            n *= sizes[d]
        else:
            n *= batch if ax == 0 else 64
    return 4 * n


def collect(model: onnx.ModelProto, calib: Iterable[Mapping[str, np.ndarray]], requests: Iterable[Request],
            graph=None, threads: int = 1, max_bytes: int = 64 << 20) -> CalibStats:
    """Stream the calibration batches through the model and accumulate ``requests``."""
    reqs = list(dict.fromkeys(requests))
    stats = CalibStats({r: ActStats(r) for r in reqs})
    if not reqs:
        return stats
    memory.maybe_lean_heap()
    feeds = list(calib) if not isinstance(calib, (list, Calibration)) else calib
    first = next(iter(feeds))
    tensors = list(dict.fromkeys(r.tensor for r in reqs))
    sizes = _symbol_sizes(model, first)
    batch = next(iter(first.values())).shape[0] if first else 1
    chunks: List[List[str]] = []
    cur: List[str] = []
    used = 0
    for t in tensors:
        b = _estimate_bytes(graph.shape(t) if graph is not None else None, sizes, batch)
        if cur and used + b > max_bytes:
            chunks.append(cur)
            cur, used = [], 0
        cur.append(t)
        used += b
    if cur:
        chunks.append(cur)
    by_tensor: Dict[str, List[ActStats]] = {}
    for r in reqs:
        by_tensor.setdefault(r.tensor, []).append(stats[r])
    graph_inputs = {i.name for i in model.graph.input}
    import onnxruntime as ort

    for chunk in chunks:
        fetch = [t for t in chunk if t not in graph_inputs]
        sess = runtime.session(model, threads, extra_outputs=fetch, prepack=False,
                              weights=graph.cached_const if graph is not None else None) if fetch else None
        in_names = {i.name for i in sess.get_inputs()} if sess is not None else set()
        for feed in feeds:
            # onnxruntime's own output buffers, turned into arrays one at a time and dropped
            # after use: the batch's activations are held once, not twice
            ovs = list(sess.run_with_ort_values(
                fetch, {k: ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(v))
                        for k, v in feed.items() if k in in_names})) if fetch else []
            pos = {t: i for i, t in enumerate(fetch)}
            for t in chunk:
                if t in pos:
                    a = ovs[pos[t]].numpy()
                    ovs[pos[t]] = None
                else:
                    a = feed.get(t)
                if a is None:
                    continue
                for s in by_tensor[t]:
                    s.update(a)
                del a
            del ovs
        del sess
        memory.release_memory()
    return stats


# --------------------------------------------------------------------------- sensitivity


def mask_sensitivity(model: onnx.ModelProto, graph, groups: Sequence, consumers: Mapping[int, Sequence],
                     samples: Sequence[Mapping[str, np.ndarray]], eps: float = 1e-2, threads: int = 1,
                     replicas: int = 64) -> Dict[int, np.ndarray]:
    """First-order output sensitivity of every unit of ``groups``: the sum over ``samples`` of
    ||(f(x; m_u = 1 - eps) - f(x)) / eps||^2, the squared directional derivative of the outputs
    along the unit's mask (forward finite difference, onnxruntime only).

    ``consumers``: group id -> its ConsumerInputs. A mask input is multiplied into every consumer
    input; in one batched run each replica of a sample perturbs a different unit."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    nodes = list(m.graph.node)
    mask_of: Dict[Tuple[int, str], str] = {}
    inserts: Dict[int, List[onnx.NodeProto]] = {}
    layout: Dict[str, Tuple[int, int, int]] = {}     # mask name -> (rank, axis, channels)
    for g in groups:
        for ci in consumers.get(g.id, []):
            key = (ci.node, ci.tensor)
            shp = graph.shape(ci.tensor)
            if key in mask_of or shp is None or ci.axis == 0:
                continue
            name = f"graphprune_mask_{len(mask_of)}"
            mask_of[key] = name
            chans = int(ci.member.member.atoms.shape[0])
            layout[name] = (len(shp), ci.axis, chans)
            dims = ["graphprune_replicas"] + [1] * (len(shp) - 1)
            dims[ci.axis] = chans
            m.graph.input.append(helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, dims))
            out = f"{name}_applied"
            inserts.setdefault(ci.node, []).append(helper.make_node("Mul", [ci.tensor, name], [out],
                                                                    name=f"{name}_mul"))
            node = nodes[ci.node]
            for k, x in enumerate(node.input):
                if x == ci.tensor:
                    node.input[k] = out
    new_nodes = []
    for i, n in enumerate(nodes):
        new_nodes.extend(inserts.get(i, []))
        new_nodes.append(n)
    del m.graph.node[:]
    m.graph.node.extend(new_nodes)
    del m.graph.value_info[:]
    sess = runtime.session(m, threads)
    if any(isinstance(d[0], int) for _, (_, d) in _input_specs(model).items() if d):
        replicas = 1   # a static batch axis: one perturbed copy per run
    out_names = [o.name for o in sess.get_outputs()]
    in_names = {i.name for i in sess.get_inputs()}
    # where every unit sits along each of its consumer inputs
    unit_list: List[Tuple[int, int]] = []
    where: Dict[Tuple[int, int], List[Tuple[str, np.ndarray]]] = {}
    for g in groups:
        for ui, u in enumerate(g.units.tolist()):
            lst = []
            for ci in consumers.get(g.id, []):
                name = mask_of.get((ci.node, ci.tensor))
                if name is not None:
                    gm = ci.member
                    lst.append((name, gm.positions[gm.units == u]))
            where[(g.id, ui)] = lst
            unit_list.append((g.id, ui))
    scores = {g.id: np.zeros(len(g.units)) for g in groups}

    def ones(reps: int) -> Dict[str, np.ndarray]:
        out = {}
        for name, (rank, axis, chans) in layout.items():
            shape = [reps] + [1] * (rank - 1)
            shape[axis] = chans
            out[name] = np.ones(shape, np.float32)
        return out

    for feed in samples:
        base = {k: v for k, v in feed.items() if k in in_names}

        def run(masks: Dict[str, np.ndarray], reps: int) -> np.ndarray:
            f = {k: np.repeat(v, reps, axis=0) for k, v in base.items()}
            f.update(masks)
            outs = sess.run(out_names, f)
            return np.concatenate([o.reshape(reps, -1).astype(np.float64) for o in outs
                                   if o.dtype.kind == "f"], axis=1)

        ref = run(ones(1), 1)
        for s in range(0, len(unit_list), replicas):
            chunk = unit_list[s:s + replicas]
            masks = ones(len(chunk))
            for r, u in enumerate(chunk):
                for name, pos in where[u]:
                    ax = layout[name][1]
                    idx = [r] + [0] * (layout[name][0] - 1)
                    idx[ax] = pos
                    masks[name][tuple(idx)] = 1.0 - eps
            got = run(masks, len(chunk))
            tot = (((got - ref) / eps) ** 2).sum(1)
            for r, (gid, ui) in enumerate(chunk):
                scores[gid][ui] += tot[r]
    return scores

