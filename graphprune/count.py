"""Counting: MACs at batch 1 and parameters of a model.

MACs are counted at batch 1 on the shapes ``graph.Graph`` resolves (with ``input_feed``'s dims
when one is given): static dimensions are used as they are, symbolic batch dimensions (the
symbol on the first axis of a graph input, or an unknown first axis) count as 1, and any other
unknown dimension is taken from one run of the model on ``input_feed`` when one is given (and
counts as 1 otherwise). The MAC formula of each op is its ``layers.LayerKind.macs``.
"""

from __future__ import annotations

import warnings
from typing import Mapping

import numpy as np
import onnx

from .graph import Graph
from .inputs import batch_symbols
from .io import first_line
from .layers import LAYERS, layer_of, numel

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
        if t is None or t.data_type != _T.INT64 or numel(t.dims) > 8:
            continue
        dtype = _T.FLOAT
        for a in node.attribute:
            if a.name == "value":
                dtype = a.t.data_type
        if dtype in _PARAM_TYPES:
            total += numel(numpy_helper.to_array(t).reshape(-1).tolist())
    return total


def _count_params_graph(graph: onnx.GraphProto) -> int:
    total = 0
    for t in graph.initializer:
        if t.data_type in _PARAM_TYPES:
            total += numel(t.dims)
    for sp in graph.sparse_initializer:
        if sp.values.data_type in _PARAM_TYPES:
            total += numel(sp.dims)
    total += _constant_of_shape_params(graph)
    for node in graph.node:
        for a in node.attribute:
            if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
                if a.name == "value" and a.t.data_type in _PARAM_TYPES:
                    total += numel(a.t.dims)
                elif a.name == "sparse_value" and a.sparse_tensor.values.data_type in _PARAM_TYPES:
                    total += numel(a.sparse_tensor.dims)
                elif a.name == "value_float":
                    total += 1
                elif a.name == "value_floats":
                    total += len(a.floats)
            if a.HasField("g"):
                total += _count_params_graph(a.g)
            for g in a.graphs:
                total += _count_params_graph(g)
    return total


def _needed(node: onnx.NodeProto) -> list[str] | None:
    """Names of the tensors whose shapes are needed to count ``node``'s MACs
    (``layers.LayerKind.mac_inputs``)."""
    kind = layer_of(node)
    return None if kind is None or kind.macs is None else kind.mac_inputs(node)


def _node_macs(node: onnx.NodeProto, shp: list) -> int | None:
    """MACs of ``node`` given the resolved shapes of ``_needed(node)`` (``layers.LayerKind.macs``)."""
    return layer_of(node).macs(node, shp)


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
    x weight elements), and every other op of ``layers.LAYERS``.  Nodes in subgraphs count
    once; model-local functions are inlined first (except those registered as layer kinds).
    Shapes come from ``graph.Graph`` (ONNX shape inference; at ``input_feed``'s input dims when
    given, else with its substituted runs for dims symbolic inference loses); a symbolic batch
    dim is 1; other unknown dims are read from one onnxruntime run on ``input_feed`` (top-level
    graph only) when given, else count as 1.

    Params: elements of float (and <= 8-bit integer, i.e. quantized) initializers
    and Constant-node tensors, subgraphs included; integer shape constants
    (int32/int64) are not counted.
    """
    params = _count_params_graph(model.graph)

    work = model
    if len(model.functions):
        try:
            from onnx import inliner

            # a function registered as a layer kind is counted by its own MAC formula
            own = [(f.domain, f.name) for f in model.functions if (f.domain, f.name) in LAYERS]
            work = inliner.inline_selected_functions(model, own, exclude=True) if own \
                else inliner.inline_local_functions(model)
        except Exception as e:  # pragma: no cover - depends on the model
            warnings.warn(f"could not inline local functions: {first_line(e)}")
    # the shapes graph.Graph resolves (with the feed's input dims when one is given), subgraphs too
    g = Graph(work, runtime=False, subgraphs=True,
              input_dims=None if input_feed is None else {k: np.shape(v) for k, v in input_feed.items()})
    if g.infer_error is not None:
        warnings.warn(f"shape inference failed, using declared shapes: {g.infer_error}")
    shapes = g.shapes
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
                    from .runtime import run_for_shapes       # local: onnxruntime is heavy to import
                    res = run_for_shapes(work, input_feed, ask)
                    runtime.update({k: tuple(v.shape) for k, v in res.items()})
                except Exception as e:
                    warnings.warn(
                        f"could not run the model to measure shapes; unknown dims count as 1: {first_line(e)}"
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
