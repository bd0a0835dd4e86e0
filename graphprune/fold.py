"""Part of the load step: fold shape arithmetic whose value is static into constants.

Exporters often compute sizes at run time (``Shape -> Gather -> Div -> Slice`` for
``x.chunk(2, 1)``). When the dims involved are static, the values are constants in disguise;
folding them lets the rules see, and the rewriter rewrite, every constant that encodes a width.
Only small integer results are folded; float computation is never touched.
"""

from __future__ import annotations

import copy
from typing import Dict, Optional, Tuple

import numpy as np
import onnx
from onnx import helper, numpy_helper
from onnx.external_data_helper import uses_external_data

from .graph import Graph
from .layers import layer_of

MAX_ELEMS = 64
SHAPE_OPS = {
    "Gather", "Concat", "Unsqueeze", "Squeeze", "Slice", "Cast", "Add", "Sub", "Mul", "Div", "Mod",
    "Floor", "Ceil", "Neg", "Abs", "Equal", "Less", "Greater", "Where", "Identity", "Max", "Min",
    "ReduceProd", "ReduceSum", "Reshape", "Range", "Not", "And", "Or", "Expand", "ConstantOfShape",
    "Sqrt", "Size",
}


def _eval(node: onnx.NodeProto, values: Dict[str, np.ndarray], opset: int) -> Optional[list]:
    from onnx.reference import ReferenceEvaluator

    ins = [helper.make_tensor_value_info(x, helper.np_dtype_to_tensor_dtype(values[x].dtype), values[x].shape)
           for x in node.input if x]
    outs = [helper.make_tensor_value_info(o, onnx.TensorProto.UNDEFINED, None) for o in node.output]
    g = helper.make_graph([node], "fold", ins, outs)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    try:
        res = ReferenceEvaluator(m).run(None, {x: values[x] for x in node.input if x})
    except Exception:
        return None
    return [np.asarray(r) for r in res]


def fold_shapes(model: onnx.ModelProto, g: Optional[Graph] = None) -> onnx.ModelProto:
    """Return a copy with statically known integer shape computations replaced by constants
    (the model itself when there is nothing to fold)."""
    return fold_shapes_into(model, g, inplace=False)[0]


def fold_shapes_into(model: onnx.ModelProto, g: Optional[Graph] = None,
                     inplace: bool = False) -> Tuple[onnx.ModelProto, bool]:
    """``fold_shapes``; with ``inplace`` the folding rewrites ``model`` itself (for a private
    copy: no second copy of the weights). Returns (model, whether anything was folded)."""
    g = g or Graph(model)
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 17)
    values: Dict[str, np.ndarray] = {}
    partial: Dict[str, list] = {}
    folded: Dict[int, list] = {}
    for i, node in enumerate(g.nodes):
        if node.domain not in ("", "ai.onnx") or any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
                                                    for a in node.attribute):
            continue
        if node.op_type == "Shape":
            shp = g.shape(node.input[0])
            if shp is None:
                continue
            r = len(shp)
            start = int(next((a.i for a in node.attribute if a.name == "start"), 0))
            end_attr = [a.i for a in node.attribute if a.name == "end"]
            end = int(end_attr[0]) if end_attr else r
            start, end = (start + r if start < 0 else start), (end + r if end < 0 else end)
            dims = shp[max(0, start):min(r, end)]
            if all(isinstance(d, int) for d in dims):
                values[node.output[0]] = np.array(dims, dtype=np.int64)
                folded[i] = [values[node.output[0]]]
            else:
                partial[node.output[0]] = [d if isinstance(d, int) else None for d in dims]
            continue
        if node.op_type == "Gather" and node.input[0] in partial and g.const(node.input[1]) is not None:
            # picking only the static dims of a partly dynamic shape
            idx = g.const(node.input[1])
            dims = partial[node.input[0]]
            picked = [dims[int(k)] for k in np.atleast_1d(idx).tolist()]
            if all(d is not None for d in picked):
                v = np.array(picked, dtype=np.int64).reshape(idx.shape)
                values[node.output[0]] = v
                folded[i] = [v]
            continue
        if node.op_type not in SHAPE_OPS:
            continue
        ok = True
        for x in node.input:
            if not x:
                continue
            if x in values:
                continue
            shp = g.shape(x) if g.is_const(x) else None
            if shp is None or (len(shp) and int(np.prod([d if isinstance(d, int) else 0 for d in shp])) > MAX_ELEMS):
                ok = False
                break
            v = g.const(x)
            if v is None or v.size > MAX_ELEMS:
                ok = False
                break
            values[x] = v
        if not ok or not any(x in values and g.producer.get(x) in folded for x in node.input if x):
            continue
        res = _eval(node, values, opset)
        if res is None or any(r.size > MAX_ELEMS or r.dtype.kind not in "iub" for r in res):
            continue
        for o, r in zip(node.output, res):
            values[o] = r
        folded[i] = res
    if not folded:
        return model, False
    out = model if inplace else copy.deepcopy(model)
    nodes = list(out.graph.node)
    # keep folded values that are still read by nodes that are not folded, or are graph outputs
    needed = set(g.outputs)
    for i, node in enumerate(nodes):
        if i not in folded:
            needed.update(x for x in node.input if x)
    new_nodes = []
    for i, node in enumerate(nodes):
        if i not in folded:
            new_nodes.append(node)
            continue
        for o, r in zip(node.output, folded[i]):
            if o in needed:
                new_nodes.append(helper.make_node("Constant", [], [o], name=f"{o}__folded",
                                                  value=numpy_helper.from_array(r.astype(r.dtype), o)))
    del out.graph.node[:]
    out.graph.node.extend(new_nodes)
    _drop_unused(out)
    return out, True


# per-channel parameter inputs (op, input index) of non-layer ops: values a node owns, safe to
# copy per node (a layer's bias slot comes from its layers.LayerKind: param_slots)
PARAM_SLOTS = {
    "BatchNormalization": (1, 2, 3, 4),
    "InstanceNormalization": (1, 2), "LayerNormalization": (1, 2), "GroupNormalization": (1, 2),
    "PRelu": (1,), "Add": (0, 1), "Sub": (0, 1), "Mul": (0, 1), "Div": (0, 1),
}
UNTIE_MAX_BYTES = 1 << 20


def param_slots(node: onnx.NodeProto) -> Tuple[int, ...]:
    """Input slots of ``node`` holding per-channel parameters it owns (safe to untie)."""
    kind = layer_of(node)
    if kind is not None and kind.fold:
        return () if kind.bias is None else (kind.bias,)
    return PARAM_SLOTS.get(node.op_type, ())


def weight_slots(node: onnx.NodeProto) -> Tuple[int, ...]:
    """Input slots of ``node`` that ``fold_weight_subgraphs`` may evaluate from constants: a
    layer's ``LayerKind.fold`` slots, or the per-channel parameters of an elementwise op or a
    normalisation."""
    kind = layer_of(node)
    if kind is not None and kind.fold:
        return kind.fold
    return _PARAM_FOLD.get(node.op_type, ()) if node.domain in ("", "ai.onnx") else ()


def untie_constants(model: onnx.ModelProto, inplace: bool = False) -> onnx.ModelProto:
    """Undo initializer de-duplication that couples unrelated layers.

    Exporters merge equal initializers (torch's legacy exporter feeds 47 of ResNet-50's zero
    biases through ``Identity(shared)``). A bias shared by two convs would force both to keep
    the same channels. ``Identity`` of a constant becomes a constant of its own, and a small
    per-channel parameter read by several nodes gets one copy per reader. Weights shared by
    several layers (real weight tying) stay shared. Outputs are unchanged."""
    gp = model.graph
    inits = {t.name: t for t in gp.initializer}
    nodes0 = list(gp.node)
    outputs = {o.name for o in gp.output}
    inputs = {i.name for i in gp.input}
    consumers: Dict[str, list] = {}
    for i, n in enumerate(nodes0):
        for k, x in enumerate(n.input):
            if x in inits:
                consumers.setdefault(x, []).append((i, k))
    identity = [i for i, n in enumerate(nodes0)
                if n.op_type == "Identity" and n.input and n.input[0] in inits
                and n.output[0] not in outputs]
    shared = []
    for name, uses in consumers.items():
        if len(uses) < 2 or name in inputs:
            continue
        t = inits[name]
        if uses_external_data(t) or len(t.raw_data) > UNTIE_MAX_BYTES:
            continue
        if all(k in param_slots(nodes0[i]) for i, k in uses):
            shared.append(name)
    if not identity and not shared:
        return model
    out = model if inplace else copy.deepcopy(model)
    nodes = list(out.graph.node)
    new_inits = []
    for i in identity:
        src = inits[nodes[i].input[0]]
        t = onnx.TensorProto()
        t.CopyFrom(src)
        t.name = nodes[i].output[0]
        new_inits.append(t)
    taken = set(inits) | {t.name for t in new_inits} | {o for n in nodes0 for o in n.output}
    for name in shared:
        for j, (i, k) in enumerate(consumers[name][1:], start=1):
            new = f"{name}.{j}"
            while new in taken:
                new += "_"
            taken.add(new)
            t = onnx.TensorProto()
            t.CopyFrom(inits[name])
            t.name = new
            new_inits.append(t)
            nodes[i].input[k] = new
    drop = set(identity)
    kept = [n for i, n in enumerate(nodes) if i not in drop]
    del out.graph.node[:]
    out.graph.node.extend(kept)
    out.graph.initializer.extend(new_inits)
    _drop_unused(out)
    return out


def subgraph_reads(node: onnx.NodeProto) -> set:
    """Every tensor name read inside ``node``'s subgraphs (recursively): the outer-scope names
    an If/Loop/Scan body uses, plus names its own nodes make (harmless to over-approximate)."""
    names: set = set()
    for a in node.attribute:
        for g in ([a.g] if a.HasField("g") else []) + list(a.graphs):
            for n in g.node:
                names.update(x for x in n.input if x)
                names |= subgraph_reads(n)
            names.update(o.name for o in g.output)
    return names


def _drop_unused(model: onnx.ModelProto) -> None:
    """Remove nodes and initializers nothing reads any more (dead shape arithmetic)."""
    g = model.graph
    live = {o.name for o in g.output}
    keep = []
    for node in reversed(list(g.node)):
        if any(o in live for o in node.output if o):
            keep.append(node)
            live.update(x for x in node.input if x)
            live.update(subgraph_reads(node))      # If/Loop bodies read outer names directly
    keep.reverse()
    if len(keep) != len(g.node):
        del g.node[:]
        g.node.extend(keep)
    inits = [t for t in g.initializer if t.name in live or t.name in {i.name for i in g.input}]
    if len(inits) != len(g.initializer):
        del g.initializer[:]
        g.initializer.extend(inits)


# per-channel parameters: a bias kept 1-D and Reshape'd to [1, C, 1, 1] in the graph
# (paddle2onnx), scales and shifts computed from constants
_PARAM_FOLD = {"Add": (0, 1), "Sub": (0, 1), "Mul": (0, 1), "Div": (0, 1), "PRelu": (1,),
               "BatchNormalization": (1, 2, 3, 4), "InstanceNormalization": (1, 2), "LayerNormalization": (1, 2)}
_NONDETERMINISTIC = {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial",
                     "Bernoulli"}


def fold_weight_subgraphs(model: onnx.ModelProto, max_bytes: int = 1 << 28) -> onnx.ModelProto:
    """Evaluate, once, every weight (or bias) of a Conv / ConvTranspose / Gemm / MatMul, and every
    per-channel parameter of an elementwise op or a normalisation, that the graph computes from
    constants alone (weight standardisation, reparameterisations, reshaped biases) and store
    it as an initializer, so the layer can be analysed and pruned like any other. The nodes of
    those computations that nothing else reads are removed. Returns a new model, or ``model``
    itself when there is nothing to fold (or the evaluation fails)."""
    original = model
    g = model.graph
    consts = {t.name for t in g.initializer}
    consts |= {n.output[0] for n in g.node if n.op_type == "Constant" and n.output}
    prod = {o: i for i, n in enumerate(g.node) for o in n.output}
    outputs = {o.name for o in g.output}
    memo: Dict[str, bool] = {}

    def computed_from_consts(t: str, depth: int = 0) -> bool:
        if t in consts:
            return True
        if t in memo:
            return memo[t]
        i = prod.get(t)
        ok = i is not None and depth < 200
        if ok:
            n = g.node[i]
            ok = n.domain in ("", "ai.onnx") and n.op_type not in _NONDETERMINISTIC and len(n.input) > 0 \
                and not any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in n.attribute) \
                and all(not x or computed_from_consts(x, depth + 1) for x in n.input)
        memo[t] = ok
        return ok

    targets, weights = [], set()
    for n in g.node:
        for k in weight_slots(n):
            if k < len(n.input) and n.input[k] and n.input[k] not in consts \
                    and n.input[k] not in outputs and computed_from_consts(n.input[k]):
                targets.append(n.input[k])
                if layer_of(n) is not None:
                    weights.add(n.input[k])
    targets = list(dict.fromkeys(targets))
    if not targets:
        return model
    model = copy.deepcopy(model)
    g = model.graph
    cone: set = set()
    stack = [prod[t] for t in targets]
    while stack:
        i = stack.pop()
        if i in cone:
            continue
        cone.add(i)
        stack.extend(prod[x] for x in g.node[i].input if x and x in prod and x not in consts)
    sub = onnx.helper.make_graph([g.node[i] for i in sorted(cone)], "weights", [],
                                 [onnx.helper.make_tensor_value_info(t, onnx.TensorProto.UNDEFINED, None)
                                  for t in targets],
                                 [t for t in g.initializer if any(t.name in g.node[i].input for i in cone)])
    mini = onnx.helper.make_model(sub, opset_imports=list(model.opset_import))
    mini.ir_version = min(model.ir_version, 10)
    # Constant nodes feeding the cone travel with it
    cnodes = [n for n in g.node if n.op_type == "Constant" and n.output and
              any(n.output[0] in g.node[i].input for i in cone)]
    del mini.graph.node[:]
    mini.graph.node.extend(cnodes + [g.node[i] for i in sorted(cone)])
    try:
        from onnx.reference import ReferenceEvaluator
        values = ReferenceEvaluator(mini).run(None, {})
    except Exception:
        return original
    values = [np.asarray(v) for v in values]
    if any(v.nbytes > max_bytes for v in values):
        return original
    # parameters of elementwise ops and norms are folded only when per-channel (one axis over 1):
    # a relative-position bias gathered from its table into [heads, N, N] would grow the file
    folded = [(t, v) for t, v in zip(targets, values) if t in weights or sum(d > 1 for d in v.shape) <= 1]
    if not folded:
        return original
    targets = [t for t, _ in folded]
    from onnx import numpy_helper
    for t, v in folded:
        g.initializer.append(numpy_helper.from_array(v, t))
    # drop cone nodes whose outputs nobody reads any more
    keep = list(g.node)
    changed = True
    while changed:
        changed = False
        read = {x for n in keep for x in n.input} | outputs
        new = [n for n in keep if not (n.op_type != "Constant" and any(n is g.node[i] for i in cone) and
                                       not any(o in read for o in n.output if o))]
        # a folded target's producer goes in any case (its output is now an initializer)
        new = [n for n in new if not any(o in targets for o in n.output)]
        if len(new) != len(keep):
            keep, changed = new, True
    del g.node[:]
    g.node.extend(keep)
    used = {x for n in g.node for x in n.input} | outputs
    live = [t for t in g.initializer if t.name in used]
    del g.initializer[:]
    g.initializer.extend(live)
    return model
