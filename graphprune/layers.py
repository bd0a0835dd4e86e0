"""One table of layer traits: what every weight-bearing (MAC-bearing) op is.

The channel rules (``analyze/rules``) say how channels flow through an op. Everything else the
steps need to know about a layer — which input is the activation, the weight and the bias, which
axis of the activation the weight reduces, how the weight reads as an ``[outputs, inputs]``
matrix, whether calibration sees the input as im2col patches, which inputs fold and untie, the
MAC formula, whether repair can refit it — lives here, one :class:`LayerKind` per op, looked up
with :func:`layer_of`. Nothing else in the package tests ``op_type == "Conv"``.

Adding a layer kind (a contrib op, a custom op of your own) is one :func:`register_layer` call
plus one channel rule (``analyze.rules.register``); ``tests/test_layers.py`` does exactly that
for a toy op. A sparse custom op of ``kernels/README.md`` (``ai.graphprune::SparseMatMul``:
``X, values, indices, indptr, bias``) is one entry too: ``x=0, weight=1, bias=4``, MACs from
the number of stored values (already registered below, for counting).

Consumers:

- ``analyze.consumer_inputs`` (calibration, data-aware scores, repair): ``weight``,
  ``reduction_axis``;
- ``cost.CostModel``: ``reduction_axis``;
- ``score.weight_matrix`` and ``repair``: ``to_matrix`` / ``from_matrix``, ``weight_axes``,
  ``output_axis``, ``patches``, ``refit``;
- ``calib`` (Gram matrices over im2col patches) and ``repair``: ``patches``;
- ``fold``: ``fold`` slots (evaluated from constants) and ``bias`` (untied per reader);
- ``count.count_macs_params``: ``mac_inputs`` and ``macs``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import onnx
from onnx import helper

Shape = Sequence[Any]

__all__ = ["LayerKind", "LAYERS", "register_layer", "unregister_layer", "layer_of", "node_attr", "numel"]


def node_attr(node: onnx.NodeProto, name: str, default: Any = None) -> Any:
    """The value of attribute ``name`` of ``node`` (onnx's ``get_node_attr_value``), or
    ``default`` when the node does not set it."""
    if not any(a.name == name for a in node.attribute):
        return default
    return helper.get_node_attr_value(node, name)


def numel(dims: Iterable[Any]) -> int:
    """Product of integer dims (1 for none)."""
    n = 1
    for d in dims:
        n *= int(d)
    return n


def _domain(d: str) -> str:
    return "" if d in ("", "ai.onnx") else d


@dataclass(frozen=True)
class LayerKind:
    """The traits of one weight-bearing op.

    Attributes:
        op: ONNX op type.
        domain: op domain (``""`` for the default one).
        x: input slot of the activation.
        weight: input slot of the (dense) weight; None when the op has no single weight.
        bias: input slot of the per-output bias, None when it has none.
        fold: input slots that ``fold.fold_weight_subgraphs`` may evaluate once when they are
            computed from constants (empty: never folded).
        reduction_axis: ``(node, graph) -> axis`` of the activation whose channels the weight
            consumes (its input channels), or None when it has none here (unknown rank, a
            constant left operand). None: the op is never an ``in`` consumer.
        weight_axes: ``node -> (output axis, input axis)`` of the weight.
        output_axis: channel axis of the output activation (``-1``: the last).
        patches: the weight reduces over im2col patches of the input (Conv): calibration and
            repair read ``calib.im2col`` rows, not channels.
        to_matrix: ``(W, node) -> [outputs, inputs]`` float matrix whose columns are in the
            activation's channel order (im2col order for ``patches``), or None when the layout
            has no such view (grouped conv). None: no matrix view (data-aware scores skip it).
        refit: ``(node, W) -> reason`` repair cannot refit this layer, or None when it can.
            None (the field): never refit.
        mac_inputs: ``node -> names`` of the tensors whose shapes the MAC count needs.
        macs: ``(node, shapes) -> MACs`` at the resolved shapes of ``mac_inputs`` (None: unknown).
    """
    op: str
    domain: str = ""
    x: int = 0
    weight: Optional[int] = 1
    bias: Optional[int] = None
    fold: Tuple[int, ...] = ()
    reduction_axis: Optional[Callable[[onnx.NodeProto, Any], Optional[int]]] = None
    weight_axes: Optional[Callable[[onnx.NodeProto], Tuple[int, int]]] = None
    output_axis: int = -1
    patches: bool = False
    to_matrix: Optional[Callable[[np.ndarray, onnx.NodeProto], Optional[np.ndarray]]] = None
    refit: Optional[Callable[[onnx.NodeProto, np.ndarray], Optional[str]]] = None
    mac_inputs: Optional[Callable[[onnx.NodeProto], List[str]]] = None
    macs: Optional[Callable[[onnx.NodeProto, list], Optional[int]]] = None

    @property
    def key(self) -> Tuple[str, str]:
        return (_domain(self.domain), self.op)

    def from_matrix(self, M: np.ndarray, node: onnx.NodeProto, shape: Sequence[int]) -> np.ndarray:
        """Inverse of ``to_matrix``: an ``[outputs, inputs]`` matrix back in the weight's layout
        ``shape``."""
        out_ax = self.weight_axes(node)[0]
        rest = [d for i, d in enumerate(shape) if i != out_ax]
        return np.moveaxis(M.reshape([shape[out_ax]] + rest), 0, out_ax)


LAYERS: Dict[Tuple[str, str], LayerKind] = {}


def register_layer(kind: LayerKind) -> LayerKind:
    """Add (or replace) the traits of ``kind.op`` in ``kind.domain``. Returns ``kind``."""
    LAYERS[kind.key] = kind
    return kind


def unregister_layer(op: str, domain: str = "") -> None:
    """Remove an entry added with :func:`register_layer` (tests, plugins)."""
    LAYERS.pop((_domain(domain), op), None)


def layer_of(node: onnx.NodeProto) -> Optional[LayerKind]:
    """The traits of ``node``'s op, or None when it is not a weight-bearing layer."""
    return LAYERS.get((_domain(node.domain), node.op_type))


# --------------------------------------------------------------------------- shared pieces


def _at(node: onnx.NodeProto, *slots: int) -> List[str]:
    ins = list(node.input)
    return [ins[i] if i < len(ins) else "" for i in slots]


def _known(fn):
    """A MAC formula that needs every shape known."""
    def wrapped(node, shp):
        if any(s is None for s in shp):
            return None
        return fn(node, shp)
    return wrapped


def out_major(W: np.ndarray, out_axis: int) -> np.ndarray:
    """``W`` as ``[outputs, inputs]``: the output axis first, the others flattened in order."""
    W = np.asarray(W, np.float64)
    return np.moveaxis(W, out_axis, 0).reshape(W.shape[out_axis], -1)


def _channel_axis(node, graph) -> int:
    return 1


def _last_axis(node, graph) -> Optional[int]:
    x = node.input[0]
    s = graph.shape(x)
    if s is None or len(s) < 2 or graph.is_const(x):
        return None
    return len(s) - 1


def _matmul_macs(node, shp) -> Optional[int]:
    a, b = shp
    if not a or not b:
        return None
    a2 = [1] + list(a) if len(a) == 1 else list(a)
    b2 = list(b) + [1] if len(b) == 1 else list(b)
    m, k, n = a2[-2], a2[-1], b2[-1]
    batch = np.broadcast_shapes(tuple(a2[:-2]), tuple(b2[:-2])) if (len(a2) > 2 or len(b2) > 2) else ()
    return numel(batch) * m * k * n


def _conv_macs(node, shp) -> int:
    y, w = shp
    return numel(y) * numel(w[1:])


# --------------------------------------------------------------------------- Conv


def _conv_matrix(W, node):
    return None if int(node_attr(node, "group", 1)) != 1 else out_major(W, 0)


def _conv_refit(node, W):
    return "grouped convolution" if int(node_attr(node, "group", 1)) != 1 else None


register_layer(LayerKind(
    "Conv", bias=2, fold=(1, 2), reduction_axis=_channel_axis, weight_axes=lambda n: (0, 1), output_axis=1,
    patches=True, to_matrix=_conv_matrix, refit=_conv_refit,
    mac_inputs=lambda n: [n.output[0], _at(n, 1)[0]], macs=_known(_conv_macs)))


def _convT_macs(node, shp):
    x, w = shp
    return numel(x[1:]) * numel(w[1:]) * (x[0] if x else 1)


register_layer(LayerKind(
    "ConvTranspose", bias=2, fold=(1, 2), reduction_axis=_channel_axis, weight_axes=lambda n: (1, 0),
    output_axis=1, mac_inputs=lambda n: _at(n, 0, 1), macs=_known(_convT_macs)))

# --------------------------------------------------------------------------- Gemm, MatMul


def _gemm_reduction(node, graph):
    return 0 if node_attr(node, "transA", 0) else 1


def _gemm_axes(node):
    return (0, 1) if node_attr(node, "transB", 0) else (1, 0)


def _gemm_matrix(W, node):
    return out_major(W, _gemm_axes(node)[0])


def _gemm_refit(node, W):
    if node_attr(node, "transA", 0) or float(node_attr(node, "alpha", 1.0)) != 1.0 \
            or float(node_attr(node, "beta", 1.0)) != 1.0:
        return "Gemm with transA/alpha/beta"
    return None


def _gemm_macs(node, shp):
    a, b = shp
    if len(a) != 2 or len(b) != 2:
        return None
    m, k = (a[1], a[0]) if node_attr(node, "transA", 0) else (a[0], a[1])
    n = b[0] if node_attr(node, "transB", 0) else b[1]
    return m * k * n


register_layer(LayerKind(
    "Gemm", bias=2, fold=(1, 2), reduction_axis=_gemm_reduction, weight_axes=_gemm_axes, to_matrix=_gemm_matrix,
    refit=_gemm_refit, mac_inputs=lambda n: _at(n, 0, 1), macs=_known(_gemm_macs)))


register_layer(LayerKind(
    "MatMul", fold=(1,), reduction_axis=_last_axis, weight_axes=lambda n: (1, 0),
    to_matrix=lambda W, n: out_major(W, 1) if np.ndim(W) == 2 else None,
    refit=lambda n, W: None if W.ndim == 2 else "MatMul is not refit",
    mac_inputs=lambda n: _at(n, 0, 1), macs=_known(_matmul_macs)))

# --------------------------------------------------------------------------- counted only
# quantized layers, Einsum and recurrent layers: MACs only (graphprune does not prune them)

for _op, _w in (("ConvInteger", 1), ("QLinearConv", 3)):
    register_layer(LayerKind(_op, weight=_w, mac_inputs=lambda n, w=_w: [n.output[0], _at(n, w)[0]],
                             macs=_known(_conv_macs)))
for _op, _w in (("MatMulInteger", 1), ("QLinearMatMul", 3)):
    register_layer(LayerKind(_op, weight=_w, mac_inputs=lambda n, w=_w: _at(n, 0, w), macs=_known(_matmul_macs)))


def _einsum_macs(node: onnx.NodeProto, shp: list) -> Optional[int]:
    """Product of the sizes of every index letter (for >= 2 operands)."""
    if len(shp) < 2:
        return 0
    eq = node_attr(node, "equation", b"")
    eq = eq.decode() if isinstance(eq, bytes) else str(eq)
    eq = eq.replace(" ", "")
    terms = eq.split("->")[0].split(",")
    if len(terms) != len(shp):
        return None
    sizes: Dict[str, int] = {}
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
    return numel(sizes.values())


register_layer(LayerKind("Einsum", weight=None, mac_inputs=lambda n: list(n.input), macs=_einsum_macs))


def _rnn_macs(node, shp):
    x, w, r = shp
    if len(x) != 3:
        return None
    seq, bat = (x[1], x[0]) if node_attr(node, "layout", 0) else (x[0], x[1])
    return seq * bat * (numel(w) + numel(r))


for _op in ("RNN", "GRU", "LSTM"):
    register_layer(LayerKind(_op, mac_inputs=lambda n: _at(n, 0, 1, 2), macs=_known(_rnn_macs)))

# --------------------------------------------------------------------------- sparse custom ops
# kernels/README.md: X, values [nnz], indices [nnz], indptr [N+1], bias [N]; one MAC per stored
# value and output position


def _sparse_matmul_macs(node, shp):
    x, v = shp
    return numel(x[:-1]) * numel(v) if x else None


def _sparse_conv_macs(node, shp):
    x, v = shp
    return (x[0] * numel(x[2:]) * numel(v)) if len(x) >= 2 else None


register_layer(LayerKind("SparseMatMul", domain="ai.graphprune", bias=4, mac_inputs=lambda n: _at(n, 0, 1),
                         macs=_known(_sparse_matmul_macs)))
register_layer(LayerKind("SparseConv", domain="ai.graphprune", bias=4, output_axis=1,
                         mac_inputs=lambda n: _at(n, 0, 1), macs=_known(_sparse_conv_macs)))
