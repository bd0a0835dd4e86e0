"""Step after repair: sparse layers (unstructured, N:M, blocks) on graphprune's own kernels.

For every eligible layer — MatMul with a constant 2-D weight, Gemm (alpha = beta = 1, transA = 0),
pointwise Conv (all-ones kernel, stride 1, no padding, group 1) — a sparse mask is chosen with
one of the existing criteria (magnitude; with calibration data Wanda, |W|·‖X‖, or SparseGPT-style
OBS with weight updates). Each masked layer is then timed alone on this machine, dense (onnxruntime's
own MatMul/Conv) against the custom op (kernels/README.md: ``ai.graphprune::SparseMatMul`` /
``SparseConv``, CSR over the outputs), at its real input shape; only a layer whose kernel wins
is converted, the others stay dense with their zeros. ``densify`` turns every custom op back into
standard ONNX (the zeros in place): it is the oracle for the kernels and the deployable fallback.

Weights are handled as ``Wr [N, K]``: one row per output, the reduction axis along the columns
(a MatMul ``[K, N]`` weight transposed, a Gemm's per ``transB``, a Conv's ``[N, K, 1, ...]``
reshaped). Patterns: ``N:M`` — in every row, each run of M consecutive reduction indices keeps N;
``block:RxC`` — tiles of R reduction indices by C outputs are kept or zeroed whole.
"""

from __future__ import annotations

import math
import re
import statistics
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .choices import SPARSE_CRITERIA
from .errors import UsageError
from .options import Options

DOMAIN = "ai.graphprune"          # kernels/README.md; kernels.DOMAIN says the same
OPS = {"SparseMatMul": "MatMul", "SparseConv": "Conv"}
MASK_CRITERIA = SPARSE_CRITERIA   # choices.py: Options.sparse_criterion and the CLI share it
SUFFIXES = ("_sparse_values", "_sparse_indices", "_sparse_indptr", "_sparse_bias")
MARGIN = Options.sparse_margin    # a layer is converted when its kernel is at least this much faster
MODEL_MARGIN = 1.02               # and the kernels are kept when the whole model is this much faster


# --------------------------------------------------------------------------- patterns


@dataclass(frozen=True)
class Pattern:
    kind: str                     # unstructured | nm | block
    n: int = 0
    m: int = 0
    bk: int = 1                   # block extent along the reduction axis (R)
    bn: int = 1                   # block extent along the outputs (C)

    @classmethod
    def parse(cls, text: str) -> "Pattern":
        t = (text or "").strip().lower()
        if t == "unstructured":
            return cls("unstructured")
        m = re.fullmatch(r"(\d+):(\d+)", t)
        if m:
            n, mm = int(m.group(1)), int(m.group(2))
            if not (0 < n < mm):
                raise UsageError(f"--pattern {text}: N:M needs 0 < N < M (e.g. 2:4)")
            return cls("nm", n=n, m=mm)
        m = re.fullmatch(r"block:(\d+)x(\d+)", t)
        if m:
            r, c = int(m.group(1)), int(m.group(2))
            if r < 1 or c < 1 or r * c < 2:
                raise UsageError(f"--pattern {text}: a block needs R, C >= 1 and at least 2 elements")
            return cls("block", bk=r, bn=c)
        raise UsageError(f"unknown --pattern {text!r}; choose unstructured, N:M (e.g. 2:4) or block:RxC (e.g. block:4x1)")

    @property
    def label(self) -> str:
        if self.kind == "nm":
            return f"{self.n}:{self.m}"
        if self.kind == "block":
            return f"block:{self.bk}x{self.bn}"
        return "unstructured"

    def attrs(self) -> Dict[str, int]:
        """The kernel hint attributes (kernels/README.md)."""
        code = {"unstructured": 0, "nm": 1, "block": 2}[self.kind]
        return {"pattern": code, "pattern_n": self.n, "pattern_m": self.m,
                "block_k": self.bk if self.kind == "block" else 1, "block_n": self.bn if self.kind == "block" else 1}

    def fits(self, K: int, N: int) -> Optional[str]:
        """Why a [N, K] layer cannot take this pattern (None when it can)."""
        if self.kind == "nm" and K % self.m:
            return f"{self.label} needs a reduction size divisible by {self.m} (K = {K})"
        if self.kind == "block" and (K % self.bk or N % self.bn):
            return f"{self.label} needs K divisible by {self.bk} and N by {self.bn} (K = {K}, N = {N})"
        return None


def resolve_sparsity(pattern: Pattern, sparsity: Optional[float]) -> float:
    """The layer sparsity: N:M implies 1 - N/M; otherwise ``sparsity`` must be in [0, 1)."""
    if pattern.kind == "nm":
        implied = 1.0 - pattern.n / pattern.m
        if sparsity is not None and abs(sparsity - implied) > 1e-9:
            raise UsageError(f"--pattern {pattern.label} means sparsity {implied:g}; drop --sparsity or give {implied:g}")
        return implied
    if sparsity is None:
        raise UsageError(f"--pattern {pattern.label} needs --sparsity S in [0, 1)")
    if not (0.0 <= float(sparsity) < 1.0) or math.isnan(float(sparsity)):
        raise UsageError(f"--sparsity must be in [0, 1), got {sparsity}")
    return float(sparsity)


def mask_criterion(criterion: str) -> str:
    """The mask criterion that goes with a structured --criterion: activation → Wanda,
    obs → SparseGPT-style OBS with weight updates, random → random, anything else → magnitude."""
    return {"activation": "wanda", "obs": "sparsegpt", "random": "random"}.get(criterion, "magnitude")


# --------------------------------------------------------------------------- layers


@dataclass
class Layer:
    index: int                     # node index in the graph
    name: str                      # node name (or its output)
    op: str                        # MatMul | Gemm | Conv
    x: str                         # activation input
    w: str                         # weight initializer
    b: Optional[str]               # bias initializer (Gemm C, Conv B) or None
    K: int
    N: int
    trans_b: int = 0
    spatial: int = 0               # Conv: number of spatial axes
    Wr: np.ndarray = field(default=None, repr=False)    # [N, K] float32
    bias: Optional[np.ndarray] = field(default=None, repr=False)
    add: Optional[int] = None      # MatMul: index of the Add of a constant bias that follows it (fused)

    def weight_layout(self, Wr: np.ndarray) -> np.ndarray:
        """``Wr [N, K]`` back in the layer's own weight layout."""
        if self.op == "MatMul" or (self.op == "Gemm" and not self.trans_b):
            return np.ascontiguousarray(Wr.T)
        if self.op == "Gemm":
            return np.ascontiguousarray(Wr)
        return np.ascontiguousarray(Wr.reshape((self.N, self.K) + (1,) * self.spatial))

    def dense_bytes(self) -> int:
        return 4 * self.K * self.N + (4 * self.N if self.bias is not None else 0)


def _attrs(node: onnx.NodeProto) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _readers(model: onnx.ModelProto) -> Dict[str, int]:
    n: Dict[str, int] = {}
    for node in model.graph.node:
        for i in node.input:
            n[i] = n.get(i, 0) + 1
    for o in model.graph.output:
        n[o.name] = n.get(o.name, 0) + 1
    return n


def _bias_add(model, i, N, inits, readers, consumers):
    """(index, bias name, bias [N]) of an ``Add(MatMul output, constant [N])`` that is the
    MatMul's only reader, or None."""
    y = model.graph.node[i].output[0]
    users = consumers.get(y, [])
    if len(users) != 1 or readers.get(y, 0) != 1:
        return None
    add = model.graph.node[users[0]]
    if add.op_type != "Add" or add.domain not in ("", "ai.onnx") or len(add.input) != 2:
        return None
    other = add.input[1] if add.input[0] == y else add.input[0]
    t = inits.get(other)
    if t is None or t.data_type != onnx.TensorProto.FLOAT or readers.get(other, 0) != 1:
        return None
    dims = list(t.dims)
    if not dims or dims[-1] != N or any(d != 1 for d in dims[:-1]) or len(dims) > 1:
        return None          # [N] only: a [1, 1, N] bias could raise the output's rank
    return users[0], other, numpy_helper.to_array(t).reshape(N)


def find_layers(model: onnx.ModelProto) -> Tuple[List[Layer], List[dict]]:
    """(eligible layers, [{node, op, why}] for weight layers the kernels cannot take)."""
    inits = {t.name: t for t in model.graph.initializer}
    readers = _readers(model)
    layers: List[Layer] = []
    dense: List[dict] = []
    graph_inputs = {i.name for i in model.graph.input}
    const_nodes = {n.output[0] for n in model.graph.node if n.op_type == "Constant" and n.output}
    consumers: Dict[str, List[int]] = {}
    for j, node in enumerate(model.graph.node):
        for t in node.input:
            consumers.setdefault(t, []).append(j)

    def keep(node, i, why):
        dense.append({"node": node.name or node.output[0], "op": node.op_type, "why": why})

    for i, node in enumerate(model.graph.node):
        if node.domain not in ("", "ai.onnx") or node.op_type not in ("MatMul", "Gemm", "Conv"):
            continue
        if len(node.input) >= 2 and node.input[1] in const_nodes:
            keep(node, i, "weight is a Constant node, not an initializer")
            continue
        if len(node.input) < 2 or node.input[1] not in inits:
            continue                                   # activation x activation: not a layer
        wt = inits[node.input[1]]
        name = node.name or node.output[0]
        if wt.data_type != onnx.TensorProto.FLOAT:
            keep(node, i, "weight is not float32")
            continue
        if readers.get(node.input[1], 0) > 1:
            keep(node, i, "weight shared by several nodes")
            continue
        if node.input[1] in graph_inputs:
            keep(node, i, "weight is also a graph input (a caller may override it)")
            continue
        W = numpy_helper.to_array(wt)
        a = _attrs(node)
        b_name = node.input[2] if len(node.input) > 2 and node.input[2] else None
        if b_name is not None and (b_name not in inits or inits[b_name].data_type != onnx.TensorProto.FLOAT):
            keep(node, i, "bias is not a float32 constant")
            continue
        bias = numpy_helper.to_array(inits[b_name]) if b_name else None
        if node.op_type == "MatMul":
            if W.ndim != 2:
                keep(node, i, f"weight has rank {W.ndim} (the kernels take 2-D weights)")
                continue
            K, N = W.shape
            lay = Layer(i, name, "MatMul", node.input[0], node.input[1], None, K, N, Wr=np.ascontiguousarray(W.T))
            fused = _bias_add(model, i, N, inits, readers, consumers)
            if fused is not None:
                lay.add, lay.b, lay.bias = fused
        elif node.op_type == "Gemm":
            if a.get("transA", 0) or a.get("alpha", 1.0) != 1.0 or a.get("beta", 1.0) != 1.0 or W.ndim != 2:
                keep(node, i, "Gemm with transA, alpha or beta other than the defaults")
                continue
            tb = int(a.get("transB", 0))
            Wr = W if tb else W.T
            N, K = Wr.shape
            if bias is not None:
                if bias.size != N or (bias.ndim == 2 and bias.shape[0] != 1) or bias.ndim > 2:
                    keep(node, i, f"Gemm bias of shape {list(bias.shape)} is not one value per output")
                    continue
                bias = bias.reshape(N)
            lay = Layer(i, name, "Gemm", node.input[0], node.input[1], b_name, K, N, trans_b=tb,
                        Wr=np.ascontiguousarray(Wr), bias=bias)
        else:
            ks = list(W.shape[2:])
            pads = a.get("pads", [0] * 2 * len(ks))
            why = None
            if W.ndim < 3 or any(k != 1 for k in ks):
                why = f"kernel {'x'.join(map(str, ks)) or 'none'} (the sparse kernels cover pointwise convs only)"
            elif a.get("group", 1) != 1:
                why = f"grouped convolution (group {a.get('group')})"
            elif any(s != 1 for s in a.get("strides", [1] * len(ks))):
                why = "strided convolution"
            elif any(p != 0 for p in pads) or a.get("auto_pad", b"NOTSET") not in (b"NOTSET", b"VALID", "NOTSET", "VALID"):
                why = "padded convolution"
            if why:
                keep(node, i, why)
                continue
            N, K = W.shape[:2]
            lay = Layer(i, name, "Conv", node.input[0], node.input[1], b_name, K, N, spatial=len(ks),
                        Wr=np.ascontiguousarray(W.reshape(N, K)), bias=None if bias is None else bias.reshape(N))
        layers.append(lay)
    return layers, dense


# --------------------------------------------------------------------------- masks


def _keep_top(scores: np.ndarray, n_zero: int) -> np.ndarray:
    """Boolean keep-mask of the same shape with the ``n_zero`` lowest scores dropped
    (ties broken by position: deterministic)."""
    flat = scores.reshape(-1)
    keep = np.ones(flat.size, dtype=bool)
    if n_zero > 0:
        order = np.argsort(flat, kind="stable")
        keep[order[:n_zero]] = False
    return keep.reshape(scores.shape)


def mask_from_scores(S: np.ndarray, pattern: Pattern, sparsity: float) -> np.ndarray:
    """Keep-mask ``[N, K]`` from importance scores ``S [N, K]`` (higher = more important).

    unstructured: every output row keeps the same count (round(K·(1-s))) — Wanda's per-output
    comparison, and equal work per output for the kernels; N:M: every group of M consecutive
    reduction indices of a row keeps its N best; block:RxC: tiles scored by their sum, the
    lowest fraction ``s`` of tiles (over the whole layer) zeroed."""
    N, K = S.shape
    if pattern.kind == "nm":
        G = S.reshape(N, K // pattern.m, pattern.m)
        order = np.argsort(-G, axis=2, kind="stable")
        keep = np.zeros_like(G, dtype=bool)
        np.put_along_axis(keep, order[:, :, :pattern.n], True, axis=2)
        return keep.reshape(N, K)
    if pattern.kind == "block":
        R, C = pattern.bk, pattern.bn
        T = S.reshape(N // C, C, K // R, R).sum(axis=(1, 3))
        kt = _keep_top(T, int(round(sparsity * T.size)))
        return np.repeat(np.repeat(kt, C, axis=0), R, axis=1)
    n_zero = int(round(sparsity * K))
    order = np.argsort(S, axis=1, kind="stable")
    keep = np.ones((N, K), dtype=bool)
    np.put_along_axis(keep, order[:, :n_zero], False, axis=1)
    return keep


def sparsegpt(Wr: np.ndarray, H: np.ndarray, pattern: Pattern, sparsity: float, blocksize: int = 128,
              percdamp: float = 0.01) -> Tuple[np.ndarray, np.ndarray]:
    """OBS pruning with weight updates (SparseGPT): ``Wr [N, K]`` (rows = outputs), layer
    Hessian ``H = X·Xᵀ [K, K]``. Columns are pruned left to right; the error of each pruned
    column is spread over the remaining columns through the upper Cholesky factor of H⁻¹ (one
    Cholesky per layer); updates inside a block of ``blocksize`` columns are immediate, the
    rest lazily batched per block. Masks are chosen per block by w²/[H⁻¹]²_kk: unstructured and
    blocks the lowest fraction ``sparsity`` of the block, N:M within every group of M.
    Returns (new Wr with zeros, keep-mask)."""
    W = Wr.astype(np.float64).copy()
    N, K = W.shape
    H = H.astype(np.float64).copy()
    dead = np.diag(H) <= 0
    H[dead, dead] = 1.0
    W[:, dead] = 0.0
    damp = percdamp * float(np.mean(np.diag(H)))
    H[np.diag_indices(K)] += damp
    # the upper Cholesky factor U of H^-1 (H^-1 = Uᵀ U) from one factorisation: with J the
    # reversal, chol(J H J) = L gives H^-1 = (J L^-T J)(J L^-1 J), and J L^-1 J is upper
    for _ in range(6):
        try:
            L = np.linalg.cholesky(H[::-1, ::-1])
            break
        except np.linalg.LinAlgError:
            damp *= 10
            H[np.diag_indices(K)] += damp
    else:   # give up on second-order information: plain magnitude
        keep = mask_from_scores(np.abs(Wr), pattern, sparsity)
        return np.where(keep, Wr, 0).astype(np.float32), keep
    U = np.ascontiguousarray(np.linalg.inv(L)[::-1, ::-1])
    unit = pattern.m if pattern.kind == "nm" else pattern.bk if pattern.kind == "block" else 1
    B = max(unit, (blocksize // unit) * unit)
    keep = np.ones((N, K), dtype=bool)
    for i1 in range(0, K, B):
        i2 = min(i1 + B, K)
        cnt = i2 - i1
        W1 = W[:, i1:i2].copy()
        Q1 = np.zeros_like(W1)
        E1 = np.zeros_like(W1)
        U1 = U[i1:i2, i1:i2]
        d1 = np.diag(U1)
        if pattern.kind == "unstructured":
            S = W1 ** 2 / d1[None, :] ** 2
            keep[:, i1:i2] = _keep_top(S, int(round(sparsity * S.size)))
        elif pattern.kind == "block":
            S = W1 ** 2 / d1[None, :] ** 2
            keep[:, i1:i2] = mask_from_scores(S, pattern, sparsity)
        for i in range(cnt):
            if pattern.kind == "nm" and i % pattern.m == 0:
                S = W1[:, i:i + pattern.m] ** 2 / d1[None, i:i + pattern.m] ** 2
                keep[:, i1 + i:i1 + i + pattern.m] = mask_from_scores(S, pattern, sparsity)
            w = W1[:, i]
            q = np.where(keep[:, i1 + i], w, 0.0)
            Q1[:, i] = q
            err = (w - q) / d1[i]
            W1[:, i:] -= np.outer(err, U1[i, i:])
            E1[:, i] = err
        W[:, i1:i2] = Q1
        if i2 < K:
            W[:, i2:] -= E1 @ U[i1:i2, i2:]
    return np.where(keep, W, 0.0).astype(np.float32), keep


def layer_scores(lay: Layer, criterion: str, stats=None, seed: int = 0) -> np.ndarray:
    """Importance ``[N, K]`` of every weight of a layer."""
    A = np.abs(lay.Wr.astype(np.float64))
    if criterion == "random":
        return np.random.default_rng(seed + lay.index).random(A.shape)
    if criterion in ("wanda", "sparsegpt") and stats is not None:
        s = stats.get(lay.x)
        if s is not None and s.sum is not None and s.sum.shape[0] == lay.K:
            return A * s.norm[None, :]
    return A


def global_sparsities(layers: Sequence[Layer], scores: Sequence[np.ndarray], pattern: Pattern, sparsity: float,
                      max_sparsity: float = 0.95) -> List[float]:
    """One threshold over every layer's scores (each normalised by its mean), reaching
    ``sparsity`` of all prunable weights: the per-layer sparsities it implies (capped)."""
    if pattern.kind == "nm" or not layers:
        return [sparsity] * len(layers)
    units = []
    for lay, S in zip(layers, scores):
        if pattern.kind == "block":
            S = S.reshape(lay.N // pattern.bn, pattern.bn, lay.K // pattern.bk, pattern.bk).sum(axis=(1, 3))
        units.append((S / max(float(S.mean()), 1e-30)).reshape(-1))
    allv = np.concatenate(units)
    sizes = [lay.K * lay.N for lay in layers]
    w = np.concatenate([np.full(u.size, s / u.size) for u, s in zip(units, sizes)])   # weights per unit
    order = np.argsort(allv, kind="stable")
    cum = np.cumsum(w[order])
    n = int(np.searchsorted(cum, sparsity * cum[-1], side="right"))
    thr = allv[order[n - 1]] if n > 0 else -np.inf
    return [float(min(max_sparsity, np.mean(u <= thr))) for u in units]


# --------------------------------------------------------------------------- the model


def _csr(Wr: np.ndarray):
    from .kernels import pack_csr

    return pack_csr(Wr)


def sparse_node(lay: Layer, pattern: Pattern, names: Sequence[str], output: str, node_name: str,
                x: Optional[str] = None) -> onnx.NodeProto:
    op = "SparseConv" if lay.op == "Conv" else "SparseMatMul"
    extra = {"spatial": lay.spatial} if lay.op == "Conv" else {}   # for densify; kernels ignore it
    return helper.make_node(op, [x or lay.x] + list(names), [output], name=node_name, domain=DOMAIN,
                            K=lay.K, N=lay.N, **pattern.attrs(), **extra)


def sparse_inits(lay: Layer, Wr: np.ndarray, prefix: str) -> List[onnx.TensorProto]:
    values, indices, indptr = _csr(Wr)
    bias = lay.bias if lay.bias is not None else np.zeros(lay.N, np.float32)
    arrs = [np.asarray(values, np.float32), np.asarray(indices, np.int32), np.asarray(indptr, np.int32),
            np.asarray(bias, np.float32).reshape(lay.N)]
    return [numpy_helper.from_array(a, prefix + s) for a, s in zip(arrs, SUFFIXES)]


def _ensure_domain(model: onnx.ModelProto) -> None:
    if not any(o.domain == DOMAIN for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(DOMAIN, 1))


def build(model: onnx.ModelProto, layers: Sequence[Layer], weights: Dict[str, np.ndarray],
          convert: Sequence[str], pattern: Pattern) -> onnx.ModelProto:
    """A copy of ``model`` where every layer in ``weights`` has its new ``Wr`` (zeros, OBS
    updates): those named in ``convert`` become custom ops, the others keep their op with the
    new dense weights."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    by_name = {lay.name: lay for lay in layers}
    inits = {t.name: t for t in g.initializer}
    drop = set()
    dead_nodes = set()
    for name, Wr in weights.items():
        lay = by_name[name]
        if name in convert:
            node = g.node[lay.index]
            y = g.node[lay.add].output[0] if lay.add is not None else node.output[0]
            new = sparse_node(lay, pattern, [lay.w + s for s in SUFFIXES], y, node.name)
            g.node[lay.index].CopyFrom(new)
            if lay.add is not None:
                dead_nodes.add(lay.add)
            g.initializer.extend(sparse_inits(lay, Wr, lay.w))
            drop.add(lay.w)
            if lay.b:
                drop.add(lay.b)
        else:
            inits[lay.w].CopyFrom(numpy_helper.from_array(lay.weight_layout(Wr).astype(np.float32), lay.w))
    if dead_nodes:
        keep_nodes = [n for j, n in enumerate(g.node) if j not in dead_nodes]
        del g.node[:]
        g.node.extend(keep_nodes)
    if drop:
        still = {i for n in g.node for i in n.input}
        keep = [t for t in g.initializer if t.name not in drop or t.name in still]
        del g.initializer[:]
        g.initializer.extend(keep)
        _ensure_domain(out)
    return out


def uses_kernels(model: onnx.ModelProto) -> bool:
    return any(n.domain == DOMAIN for n in model.graph.node)


def _rank_of(model: onnx.ModelProto, name: str) -> Optional[int]:
    for vi in list(model.graph.input) + list(model.graph.value_info) + list(model.graph.output):
        if vi.name == name and vi.type.tensor_type.HasField("shape"):
            return len(vi.type.tensor_type.shape.dim)
    return None


def densify(model: onnx.ModelProto) -> onnx.ModelProto:
    """The standard-ONNX equivalent of a model with graphprune's sparse ops: SparseMatMul →
    MatMul (+ Add of the bias when it is not all zeros), SparseConv → Conv with a
    ``[N, K, 1, ...]`` weight, the zeros in place. Other nodes are untouched; the custom domain
    import is dropped once no node uses it."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    if not uses_kernels(out):
        return out
    from .kernels import unpack_csr

    inits = {t.name: t for t in g.initializer}
    need_rank = [n.input[0] for n in g.node if n.domain == DOMAIN and n.op_type == "SparseConv"
                 and "spatial" not in _attrs(n)]
    ranks = {}
    if need_rank:
        try:
            inferred = onnx.shape_inference.infer_shapes(out, strict_mode=False)
        except Exception:
            inferred = out
        ranks = {x: _rank_of(inferred, x) for x in need_rank}
    nodes: List[onnx.NodeProto] = []
    new_inits: List[onnx.TensorProto] = []
    used = set()
    for node in g.node:
        if node.domain != DOMAIN:
            nodes.append(node)
            continue
        if node.op_type not in OPS:
            raise ValueError(f"unknown op {DOMAIN}::{node.op_type}")
        a = _attrs(node)
        K, N = int(a["K"]), int(a["N"])
        vals, idx, ptr, bias = (numpy_helper.to_array(inits[n]) for n in node.input[1:5])
        Wr = np.asarray(unpack_csr(vals, idx, ptr, K), np.float32).reshape(N, K)
        base = node.input[1][:-len(SUFFIXES[0])] if node.input[1].endswith(SUFFIXES[0]) else node.input[1] + "_dense"
        used.update(node.input[1:5])
        y = node.output[0]
        if node.op_type == "SparseMatMul":
            new_inits.append(numpy_helper.from_array(np.ascontiguousarray(Wr.T), base))
            if np.any(bias != 0):
                mid = y + "_dense_matmul"
                nodes.append(helper.make_node("MatMul", [node.input[0], base], [mid], name=node.name))
                new_inits.append(numpy_helper.from_array(bias.astype(np.float32), base + "_bias"))
                nodes.append(helper.make_node("Add", [mid, base + "_bias"], [y], name=(node.name or y) + "_bias"))
            else:
                nodes.append(helper.make_node("MatMul", [node.input[0], base], [y], name=node.name))
        else:
            r = ranks.get(node.input[0])
            sp = int(a["spatial"]) if "spatial" in a else (r - 2) if r and r >= 3 else 2
            new_inits.append(numpy_helper.from_array(Wr.reshape((N, K) + (1,) * sp), base))
            new_inits.append(numpy_helper.from_array(bias.astype(np.float32), base + "_bias"))
            nodes.append(helper.make_node("Conv", [node.input[0], base, base + "_bias"], [y], name=node.name,
                                          kernel_shape=[1] * sp))
    del g.node[:]
    g.node.extend(nodes)
    still = {i for n in g.node for i in n.input}
    keep = [t for t in g.initializer if t.name not in used or t.name in still]
    del g.initializer[:]
    g.initializer.extend(keep + new_inits)
    if not uses_kernels(out):
        keep_ops = [o for o in out.opset_import if o.domain != DOMAIN]
        del out.opset_import[:]
        out.opset_import.extend(keep_ops)
    return out


# --------------------------------------------------------------------------- counting


def sparse_counts(model: onnx.ModelProto, feed=None) -> dict:
    """Effective (nonzero) MACs and stored bytes of the sparse ops of ``model``: the dense
    MACs of each op's densified equivalent times its density, and the bytes of its CSR
    tensors vs a dense fp32 weight. ``macs`` is the model's total effective MACs (every other
    node counted as bench.count_macs_params counts it)."""
    from . import bench

    dense = densify(model)
    per = bench.macs_by_node(dense, feed)
    inits = {t.name: t for t in model.graph.initializer}
    total = sum(per.values())
    layers = []
    for node in model.graph.node:
        if node.domain != DOMAIN:
            continue
        a = _attrs(node)
        K, N = int(a["K"]), int(a["N"])
        nnz = int(np.prod(inits[node.input[1]].dims)) if node.input[1] in inits else 0
        density = nnz / max(K * N, 1)
        dm = per.get(node.output[0] + "_dense_matmul", per.get(node.output[0], 0))
        eff = int(round(dm * density))
        total -= dm - eff
        stored = sum(4 * int(np.prod(inits[n].dims)) for n in node.input[1:5] if n in inits)
        layers.append({"node": node.name or node.output[0], "dense_macs": int(dm), "effective_macs": eff,
                       "nnz": nnz, "stored_bytes": stored, "dense_bytes": 4 * K * N + 4 * N})
    return {"macs": int(total), "layers": layers,
            "stored_bytes": sum(x["stored_bytes"] for x in layers),
            "dense_bytes": sum(x["dense_bytes"] for x in layers)}


# --------------------------------------------------------------------------- per-layer timing


def _timing_models(items, pattern: Pattern):
    """(dense model, sparse model, outputs per item, copies per item): every candidate layer of
    ``items`` ([(layer, Wr, x)]) alone, reading its own graph input, ``copies`` times with distinct weights
    (small layers: more work per call against the per-call overhead)."""
    dn, sn, di, si, ins, outs, fetch, copies_of = [], [], [], [], [], [], [], []
    for j, (lay, Wr, x) in enumerate(items):
        xn = f"x{j}"
        ins.append(helper.make_tensor_value_info(xn, onnx.TensorProto.FLOAT, list(x.shape)))
        rows = int(np.prod(x.shape)) // max(lay.K, 1)
        copies = int(min(8, max(1, math.ceil(4e6 / max(lay.K * lay.N * max(rows, 1), 1)))))
        names = []
        for c in range(copies):
            y, w = f"y{j}_{c}", f"w{j}_{c}"
            names.append(y)
            outs.append(helper.make_tensor_value_info(y, onnx.TensorProto.FLOAT, None))
            di.append(numpy_helper.from_array(lay.weight_layout(Wr).astype(np.float32), w))
            args = [xn, w]
            if lay.bias is not None and lay.op != "MatMul":
                di.append(numpy_helper.from_array(lay.bias.astype(np.float32), f"b{j}_{c}"))
                args.append(f"b{j}_{c}")
            kw = {"transB": lay.trans_b} if lay.op == "Gemm" else {"kernel_shape": [1] * lay.spatial} \
                if lay.op == "Conv" else {}
            if lay.op == "MatMul" and lay.bias is not None:      # the fused bias Add
                di.append(numpy_helper.from_array(lay.bias.astype(np.float32), f"b{j}_{c}"))
                dn.append(helper.make_node("MatMul", args, [y + "_mm"]))
                dn.append(helper.make_node("Add", [y + "_mm", f"b{j}_{c}"], [y]))
            else:
                dn.append(helper.make_node(lay.op, args, [y], **kw))
            si.extend(sparse_inits(lay, Wr, w))
            sn.append(sparse_node(lay, pattern, [w + s for s in SUFFIXES], y, f"n{j}_{c}", x=xn))
        fetch.append(names)
        copies_of.append(copies)
    models = []
    for nodes, inits, ops in ((dn, di, []), (sn, si, [helper.make_opsetid(DOMAIN, 1)])):
        g = helper.make_graph(nodes, "timing", ins, outs, inits)
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)] + ops)
        m.ir_version = 8
        models.append(m)
    return models[0], models[1], fetch, copies_of


def time_layers(items, pattern: Pattern, threads: int = 1, budget_s: float = 0.03, min_pairs: int = 7,
                max_pairs: int = 41) -> List[dict]:
    """Dense vs kernel for every layer of ``items`` ([(layer, Wr, x)]) at its real input ``x``:
    per layer one small model per side (the layer ``copies`` times), warmed up, then timed in
    interleaved pairs (order alternating) for about ``budget_s``; the median of the per-pair
    ratios. Sessions per layer keep each measurement to the layer's own input and weights."""
    from . import bench
    import onnxruntime as ort

    clock = time.perf_counter
    out = []
    for item in items:
        dense, sparse, fetch, copies = _timing_models([item], pattern)
        sa = bench.make_session(dense, threads)
        sb = bench.make_session(sparse, threads)
        feed = {"x0": ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(item[2], dtype=np.float32))}
        f = fetch[0]
        for _ in range(2):
            sa.run(f, feed)
            sb.run(f, feed)
        ta, tb = [], []
        t_end = clock() + budget_s
        while len(ta) < min_pairs or (len(ta) < max_pairs and clock() < t_end):
            swap = len(ta) % 2
            first, second = (sb, sa) if swap else (sa, sb)
            t0 = clock()
            first.run(f, feed)
            t1 = clock()
            second.run(f, feed)
            t2 = clock()
            a, b = (t2 - t1, t1 - t0) if swap else (t1 - t0, t2 - t1)
            ta.append(a)
            tb.append(b)
        del sa, sb
        ratios = [a / b for a, b in zip(ta, tb) if b > 0]
        out.append({"dense_ms": statistics.median(ta) * 1e3 / copies[0],
                    "sparse_ms": statistics.median(tb) * 1e3 / copies[0],
                    "speedup": statistics.median(ratios), "pairs": len(ta), "copies": copies[0]})
    return out


def kernels_available() -> Optional[str]:
    """None when the kernel library loads here, else why not (one line)."""
    try:
        from . import kernels
        import onnxruntime as ort

        kernels.session_options(1, ort.SessionOptions())
        return None
    except Exception as e:   # not built, wrong platform, ...
        msg = " ".join(str(e).split()) or type(e).__name__
        return msg[:300]


# --------------------------------------------------------------------------- verify


def _survivors(plan_json: dict, tensor: str, shape: Sequence[int]) -> Optional[List[np.ndarray]]:
    """Per axis of the input model's ``tensor``, the indices the structured rewrite kept (the
    pruned tensor's positions in the input's coordinates); None for a layout it cannot map."""
    axes: Dict[int, Tuple[set, set]] = {}
    for grp in plan_json.get("groups", []):
        for md in grp.get("members", []):
            if md.get("tensor") != tensor or md.get("role") not in ("in", "out"):
                continue
            if int(md.get("groups", 1)) > 1:
                return None
            ax = int(md["axis"])
            kept, covered = axes.setdefault(ax, (set(), set()))
            kept.update(int(k) for k in md.get("kept", []))
            covered.update(int(p) for p in md["positions"]) if md.get("positions") is not None \
                else covered.update(range(shape[ax]))
    out = []
    for ax, n in enumerate(shape):
        if ax not in axes:
            out.append(np.arange(n))
            continue
        kept, covered = axes[ax]
        out.append(np.array(sorted(kept | (set(range(n)) - covered)), dtype=np.int64))
    return out


def oracle(original: onnx.ModelProto, plan_json: dict, masks: Dict[str, np.ndarray]) -> onnx.ModelProto:
    """The masked-dense oracle of the structured plan with the sparse zeros applied too: every
    layer weight ``masks`` names (keep-masks in the pruned model's weight layout) is zeroed
    where its mask is, at the positions the structured rewrite kept."""
    from .verify import masked_dense

    m = masked_dense(original, plan_json)
    inits = {t.name: t for t in m.graph.initializer}
    for name, keep in masks.items():
        t = inits.get(name)
        if t is None:
            raise ValueError(f"weight {name!r} is not in the input model")
        W = numpy_helper.to_array(t).copy()
        surv = _survivors(plan_json, name, W.shape)
        if surv is None or tuple(len(s) for s in surv) != keep.shape:
            raise ValueError(f"weight {name!r}: cannot map its mask to the input model")
        full = np.ones(W.shape, dtype=bool)
        full[np.ix_(*surv)] = keep
        t.CopyFrom(numpy_helper.from_array(np.where(full, W, 0).astype(W.dtype), name))
    return m


# --------------------------------------------------------------------------- the step


def _matches(patterns: Sequence[str], names: Sequence[str]) -> bool:
    import fnmatch

    return any(fnmatch.fnmatchcase(n, p) for p in patterns for n in names if n)


def _stages(model: onnx.ModelProto, layers: Sequence[Layer]) -> List[int]:
    """Per layer, the longest chain of other masked layers above its input (0: none): the order
    in which sequential OBS prunes them (layers of one stage share no path)."""
    at = {lay.index: j for j, lay in enumerate(layers)}
    depth: Dict[str, int] = {}
    out = [0] * len(layers)
    for i, node in enumerate(model.graph.node):
        d = max((depth.get(t, 0) for t in node.input if t), default=0)
        if i in at:
            out[at[i]] = depth.get(node.input[0], 0)
            d = max(d, out[at[i]] + 1)
        for o in node.output:
            depth[o] = d
    return out


def _collect_stats(model, layers, calib, gram: bool, threads: int):
    from .calib import Request, collect

    reqs = {}
    for lay in layers:
        reqs[lay.x] = Request(lay.x, 1 if lay.op == "Conv" else -1, gram)
    from .graph import Graph

    # with shapes, collect fetches many layer inputs per pass over the calibration data
    stats = collect(model, calib, list(reqs.values()), graph=Graph(model), threads=threads)
    return {x: stats[r] for x, r in reqs.items()}


def sparsify(original: onnx.ModelProto, structured: onnx.ModelProto, model: onnx.ModelProto, plan_json: dict,
             opts, calib=None, progress=None) -> Tuple[onnx.ModelProto, dict]:
    """The sparse step. ``original``: the input model (for the oracle); ``structured``: the
    structured rewrite before repair; ``model``: the model to sparsify (after repair).
    Returns (the model with sparse layers, the report's ``sparse`` section)."""
    from . import bench
    from .verify import verify

    t0 = time.perf_counter()
    progress = progress or (lambda s: None)
    pattern = Pattern.parse(opts.pattern or "unstructured")
    s = resolve_sparsity(pattern, opts.sparsity)
    crit = opts.sparse_criterion or mask_criterion(opts.criterion)
    layers, dense_why = find_layers(model)
    section = {"pattern": pattern.label, "sparsity": s, "criterion": crit, "scope": opts.scope,
               "mode": opts.sparse_kernels, "layers": [], "kept_dense": list(dense_why)}
    todo: List[Layer] = []
    for lay in layers:
        node = model.graph.node[lay.index]
        why = None
        if opts.protect and _matches(opts.protect, [lay.name, lay.w, lay.x] + list(node.output)):
            why = "protected (--protect)"
        else:
            why = pattern.fits(lay.K, lay.N)
        if why:
            section["kept_dense"].append({"node": lay.name, "op": lay.op, "why": why})
        else:
            todo.append(lay)
    if s == 0.0 or not todo:
        section["converted"] = 0
        section["masked"] = 0
        return model, section
    stats = None
    if crit in ("wanda", "sparsegpt"):
        if calib is None:
            raise UsageError(f"mask criterion {crit} needs calibration data: pass --calib FILE.npz or --calib-dir DIR")
        progress("calib")
        t1 = time.perf_counter()
        stats = _collect_stats(model, todo, calib, crit == "sparsegpt", opts.threads)
        section["calib_s"] = time.perf_counter() - t1
    progress("masks")
    t1 = time.perf_counter()
    scores = [layer_scores(lay, crit, stats, opts.seed) for lay in todo]
    if opts.scope == "global":
        per = global_sparsities(todo, scores, pattern, s)
    else:
        per = [s] * len(todo)
    weights: Dict[str, np.ndarray] = {}
    keeps: Dict[str, np.ndarray] = {}
    stage_of = _stages(model, todo) if crit == "sparsegpt" and getattr(opts, "sparse_sequential", False) \
        else [0] * len(todo)
    order = sorted(range(len(todo)), key=lambda j: stage_of[j])
    current = 0
    for j in order:
        lay, S, sl = todo[j], scores[j], per[j]
        if stage_of[j] != current:       # sequential OBS: Hessians of the inputs the sparse layers
            current = stage_of[j]        # upstream now produce (their new weights in place)
            stage = [todo[k] for k in order if stage_of[k] == current]
            stats = _collect_stats(build(model, todo, weights, [], pattern), stage, calib, True, opts.threads)
        st = stats.get(lay.x) if stats else None
        if crit == "sparsegpt" and st is not None and st.gram is not None:
            Wn, keep = sparsegpt(lay.Wr, st.gram / max(st.gram_n, 1), pattern, sl)
        else:
            keep = mask_from_scores(S, pattern, sl)
            Wn = np.where(keep, lay.Wr, 0).astype(np.float32)
        weights[lay.name] = Wn
        keeps[lay.name] = keep
    del scores
    section["masks_s"] = time.perf_counter() - t1
    if crit == "sparsegpt":
        section["obs_stages"] = max(stage_of) + 1 if stage_of else 0

    # per-layer timing: a layer becomes a custom op only where its kernel beats dense here
    progress("timing")
    t1 = time.perf_counter()
    timing: Dict[str, dict] = {}
    unavailable = kernels_available() if opts.sparse_kernels != "never" else None
    convert: List[str] = []
    if opts.sparse_kernels == "never":
        reason = {lay.name: "kernels off (--sparse-kernels never)" for lay in todo}
    elif unavailable:
        reason = {lay.name: f"kernel library not available: {unavailable}" for lay in todo}
    elif opts.sparse_kernels == "always":
        reason = {}
        convert = [lay.name for lay in todo]
    else:
        reason = {}
        from .pipeline import count_feed

        # the layers' inputs at the shapes MACs are counted at: batch 1, other symbolic dims
        # (sequence) at --seq-len (Options.seq_len)
        try:
            feed = count_feed(model, opts.seq_len) or bench.random_inputs(model, seed=opts.seed)
            acts = bench.run_model(model, feed, outputs=list(dict.fromkeys(lay.x for lay in todo)),
                                   threads=opts.threads)
            section["timed_at"] = {k: list(v.shape) for k, v in feed.items()}
        except Exception as e:
            acts = None
            for lay in todo:
                reason[lay.name] = f"cannot measure the layer's input ({' '.join(str(e).split())[:200]})"
        if acts is not None:
            try:
                res = time_layers([(lay, weights[lay.name], acts[lay.x]) for lay in todo], pattern,
                                  threads=opts.threads)
            except Exception as e:
                res = None
                for lay in todo:
                    reason[lay.name] = f"kernel failed to run: {' '.join(str(e).split())[:200]}"
            for lay, r in zip(todo, res or ()):
                timing[lay.name] = r
                if r["speedup"] > opts.sparse_margin:
                    convert.append(lay.name)
                else:
                    reason[lay.name] = f"kernel not faster here ({r['speedup']:.2f}x of dense)"
        del acts
    out = build(model, todo, weights, convert, pattern)
    if convert and opts.sparse_kernels == "auto":      # part of the choice: also with --no-bench
        # the whole model, the chosen layers on the kernels against all of them dense (with their
        # zeros), interleaved: per-layer wins that do not add up (lost fusions) are undone
        twin = build(model, todo, weights, [], pattern)
        try:
            from .pipeline import count_feed

            feed = count_feed(model, opts.seq_len) or bench.random_inputs(model, seed=opts.seed)
            # two rounds in fresh sessions, the worse one counts: on a loaded machine one
            # median of 40 pairs still moves by several per cent
            runs = [bench.measure_latency(twin, out, feed, threads=opts.threads, repeats=40) for _ in range(2)]
            lat = min(runs, key=lambda r: r["speedup"])
            section["model_check"] = {"dense_zeros_ms": lat["before_ms"], "sparse_ms": lat["after_ms"],
                                      "speedup": lat["speedup"], "rounds": [r["speedup"] for r in runs]}
            if lat["speedup"] < MODEL_MARGIN:
                for name in convert:
                    reason[name] = (f"the whole model was not faster with the kernels "
                                    f"({lat['speedup']:.2f}x of dense); every layer kept dense")
                convert, out = [], twin
        except Exception as e:   # the check is an optimisation: keep the per-layer choice
            section["model_check"] = {"skipped": " ".join(str(e).split())[:200]}
        del twin
    section["timing_s"] = time.perf_counter() - t1
    for lay, sl in zip(todo, per):
        keep = keeps[lay.name]
        e = {"node": lay.name, "op": lay.op, "weight": lay.w, "K": lay.K, "N": lay.N, "pattern": pattern.label,
             "sparsity": float(1.0 - keep.mean()), "format": "csr" if lay.name in convert else "dense (zeros)",
             "kernel": lay.name in convert}
        if lay.name in timing:
            r = timing[lay.name]
            e.update({"dense_ms": round(r["dense_ms"], 5), "sparse_ms": round(r["sparse_ms"], 5),
                      "speedup": round(r["speedup"], 3)})
        if lay.name in reason:
            e["why"] = reason[lay.name]
        section["layers"].append(e)
    section["masked"] = len(todo)
    section["converted"] = len(convert)
    if convert:
        from . import kernels

        section["needs"] = (f"the model uses {DOMAIN} custom ops: it runs with graphprune's kernel library "
                            f"loaded (`graphprune kernels` prints its path; here {kernels.library_path()}): "
                            "SessionOptions.register_custom_ops_library(path) or "
                            "graphprune.kernels.session_options(threads); `graphprune densify` writes a "
                            "standard-ONNX copy")

    # verify: kernels vs the densified model; the densified model vs the structured oracle with
    # the sparse zeros (on the structured rewrite with the masks when weights were updated)
    if opts.verify is not False:
        progress("verify")
        t1 = time.perf_counter()
        v: dict = {}
        dense = densify(out)
        if convert:
            v["kernels_vs_densified"] = verify(dense, out, {"groups": []})
        updated = crit == "sparsegpt" or getattr(opts, "repair", "none") != "none"
        masks = {}
        for lay in todo:
            masks[lay.w] = lay.weight_layout(keeps[lay.name].astype(np.float32)) > 0.5
        if updated:
            twin = onnx.ModelProto()
            twin.CopyFrom(structured)
            ti = {t.name: t for t in twin.graph.initializer}
            for w, k in masks.items():
                W = numpy_helper.to_array(ti[w])
                ti[w].CopyFrom(numpy_helper.from_array(np.where(k.reshape(W.shape), W, 0).astype(W.dtype), w))
            check, checked = twin, "the structured rewrite (before repair / OBS updates) with the sparse masks"
        else:
            check, checked = dense, "the densified model"
        try:
            ref = oracle(original, plan_json, masks)
            v["densified_vs_oracle"] = verify(ref, check, {"groups": []})
            v["densified_vs_oracle"]["checked"] = checked
        except ValueError as e:
            v["densified_vs_oracle"] = {"skipped": str(e)}
        v["passed"] = all(x.get("passed", True) for x in v.values() if isinstance(x, dict))
        section["verify"] = v
        section["verify_s"] = time.perf_counter() - t1
    section["total_s"] = time.perf_counter() - t0
    return out, section


def load_kernels(threads: int, so) -> None:
    """Register graphprune's kernel library on session options ``so`` (one-line InputError
    saying how to build/load it when it cannot be loaded)."""
    from .errors import InputError

    try:
        from . import kernels
    except ImportError as e:
        raise InputError(f"the model uses {DOMAIN} custom ops but graphprune.kernels is missing ({e}); "
                         "`graphprune densify` writes a standard-ONNX copy") from None
    try:
        kernels.session_options(threads, so)
    except Exception as e:
        raise InputError(f"the model uses graphprune's sparse ops ({DOMAIN}) but their kernel library cannot be "
                         f"loaded: {' '.join(str(e).split())[:300]}; `graphprune densify` writes a standard-ONNX "
                         "copy") from None


def masks_of(model: onnx.ModelProto, report_sparse: dict) -> Dict[str, np.ndarray]:
    """Keep-masks (in each weight's own layout) of the layers a report's ``sparse`` section
    lists, read from a written model: a converted layer's CSR pattern, or a dense layer's
    nonzeros. Keyed by the weight's name in the input model."""
    inits = {t.name: t for t in model.graph.initializer}
    nodes = {n.input[1]: n for n in model.graph.node if n.domain == DOMAIN and len(n.input) > 1}
    out = {}
    for e in report_sparse.get("layers", []):
        w = e["weight"]
        if w + SUFFIXES[0] in nodes:
            node = nodes[w + SUFFIXES[0]]
            a = _attrs(node)
            vals, idx, ptr = (numpy_helper.to_array(inits[n]) for n in node.input[1:4])
            keep_r = np.zeros((int(a["N"]), int(a["K"])), dtype=bool)
            rows = np.repeat(np.arange(int(a["N"])), np.diff(ptr.astype(np.int64)))
            keep_r[rows, idx.astype(np.int64)] = True
            # MatMul: [K, N]; Conv and Gemm: [N, K] here (reshaped / oriented by the caller)
            out[w] = np.ascontiguousarray(keep_r.T) if e["op"] == "MatMul" else keep_r
        elif w in inits:
            out[w] = numpy_helper.to_array(inits[w]) != 0
    return out


def verify_model(dense: onnx.ModelProto, model: onnx.ModelProto, plan_json: dict) -> dict:
    """``graphprune verify`` of a model with sparse layers: the kernels against the densified
    model, and — when the report's masks were not followed by weight updates — the densified
    model against the masked-dense oracle with the sparse zeros (masks read from the model)."""
    from .verify import verify

    sp = plan_json.get("sparse") or {}
    v: dict = {}
    d = densify(model)
    if uses_kernels(model):
        v["kernels_vs_densified"] = verify(d, model, {"groups": []})
    updated = sp.get("criterion") == "sparsegpt" or (plan_json.get("summary", {}).get("options", {})
                                                      .get("repair", "none") != "none")
    if updated:
        v["densified_vs_oracle"] = {"skipped": "weights were updated after masking (SparseGPT or repair): the "
                                               "oracle holds only for the rewrite, checked when the model was made"}
    else:
        masks = masks_of(model, sp)
        inits = {t.name: t for t in dense.graph.initializer}
        fixed = {}
        for w, k in masks.items():
            t = inits.get(w)
            if t is not None and k.ndim == 2 and len(t.dims) != 2:
                k = k.reshape(list(k.shape) + [1] * (len(t.dims) - 2))
            fixed[w] = k
        for e in sp.get("layers", []):                # Gemm weights: the structured layout of the input
            if e["op"] == "Gemm" and e["weight"] in fixed and e["kernel"]:
                g = next(n for n in dense.graph.node if len(n.input) > 1 and n.input[1] == e["weight"])
                if not _attrs(g).get("transB", 0):
                    fixed[e["weight"]] = fixed[e["weight"]].T
        try:
            v["densified_vs_oracle"] = verify(oracle(dense, plan_json, fixed), d, {"groups": []})
        except ValueError as e:
            v["densified_vs_oracle"] = {"skipped": str(e)}
    v["passed"] = all(x.get("passed", True) for x in v.values() if isinstance(x, dict))
    return v
