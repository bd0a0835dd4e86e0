"""The rewrite step: rewrite the graph so it is physically smaller.

Slices every member tensor (initializers and Constant nodes alike, names kept), then runs the
rewrite callbacks the op rules registered (Conv ``group``, Reshape targets, Split sizes, Slice
bounds, Gather indices). Stale value_info is dropped; graph inputs and outputs are unchanged.
"""

from __future__ import annotations

import copy
from typing import Dict, List, Optional, Set, Tuple

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .analyze import Analysis
from .io import pin_ir_version


class RewriteCtx:
    """What rewrite callbacks may do."""

    def __init__(self, model: onnx.ModelProto, an: Analysis, root: np.ndarray, removed: np.ndarray):
        self.model = model
        self.an = an
        self.root = root
        self.removed = removed
        self.nodes = list(model.graph.node)  # same order as the analysed graph
        self._inits = {t.name: t for t in model.graph.initializer}
        self._const_nodes = {n.output[0]: n for n in model.graph.node if n.op_type == "Constant" and n.output}
        self._new_names: Set[str] = set()

    def keep_mask(self, atoms: np.ndarray) -> np.ndarray:
        return ~np.isin(self.root[atoms], self.removed)

    def count(self, atoms: np.ndarray) -> int:
        return int(self.keep_mask(atoms).sum())

    def const(self, name: str) -> np.ndarray:
        return self.an.graph.const(name)

    def set_attr(self, node_index: int, name: str, value) -> None:
        node = self.nodes[node_index]
        for i, a in enumerate(node.attribute):
            if a.name == name:
                del node.attribute[i]
                break
        node.attribute.append(helper.make_attribute(name, value))

    def remove_attr(self, node_index: int, name: str) -> None:
        node = self.nodes[node_index]
        for i, a in enumerate(node.attribute):
            if a.name == name:
                del node.attribute[i]
                return

    def input_const(self, node_index: int, k: int) -> Optional[np.ndarray]:
        """The constant value input k of the node has now (after earlier rewrites of that slot)."""
        node = self.nodes[node_index]
        name = node.input[k] if k < len(node.input) else ""
        if name in self._new_names:
            return numpy_helper.to_array(self._inits[name])
        return self.an.graph.const(name) if name else None

    def set_input_const(self, node_index: int, k: int, value: np.ndarray) -> None:
        """Give input k of the node a constant value (a private copy if the constant is shared)."""
        node = self.nodes[node_index]
        old = node.input[k] if k < len(node.input) else ""
        if old and old in self._new_names:         # this slot's own copy from an earlier rewrite
            dtype = helper.tensor_dtype_to_np_dtype(self._inits[old].data_type)
            self._inits[old].CopyFrom(numpy_helper.from_array(np.asarray(value).astype(dtype), old))
            return
        old_val = self.an.graph.const(old) if old else None
        if old_val is not None:
            value = np.asarray(value).astype(old_val.dtype)
            if np.array_equal(old_val, value) and old_val.shape == value.shape:
                return
        else:
            value = np.asarray(value).astype(np.int64)
        users = self.an.graph.consumers.get(old, []) if old else []
        private = old and len(users) == 1 and old not in self.an.graph.outputs and old not in self._new_names
        if private and old in self._inits:
            self._inits[old].CopyFrom(numpy_helper.from_array(value, old))
            return
        if private and old in self._const_nodes:
            _set_constant_node(self._const_nodes[old], value)
            return
        base = (old or f"{node.name or node.op_type}_in{k}") + "_pruned"
        name = base
        i = 1
        existing = set(self._inits) | self._new_names
        while name in existing or name in self.an.graph.producer:
            name = f"{base}{i}"
            i += 1
        t = numpy_helper.from_array(value, name)
        self.model.graph.initializer.append(t)
        self._inits[name] = self.model.graph.initializer[-1]
        self._new_names.add(name)
        while len(node.input) <= k:
            node.input.append("")
        node.input[k] = name


def _set_constant_node(node: onnx.NodeProto, value: np.ndarray) -> None:
    for i, a in enumerate(node.attribute):
        if a.name.startswith("value"):
            del node.attribute[i]
            break
    node.attribute.append(helper.make_attribute("value", numpy_helper.from_array(value)))


def rewrite(model: onnx.ModelProto, an: Analysis, root: np.ndarray, removed: Set[int]) -> onnx.ModelProto:
    if not removed:
        out = copy.deepcopy(model)
        pin_ir_version(out)
        return out
    rem = np.array(sorted(removed), dtype=np.int64)
    # gather the cuts per tensor
    cuts: Dict[str, List[Tuple[int, np.ndarray, int]]] = {}
    for mem in an.members:
        dead = np.nonzero(np.isin(root[mem.atoms], rem))[0]
        if dead.size:
            cuts.setdefault(mem.tensor, []).append((mem.axis, dead, mem.groups))
    m = _copy_without(model, set(cuts))
    g = an.graph
    inits = {t.name: t for t in m.graph.initializer}
    const_nodes = {n.output[0]: n for n in m.graph.node if n.op_type == "Constant" and n.output}
    input_vi = {vi.name: vi for vi in m.graph.input}
    model_init = {t.name: t for t in model.graph.initializer}
    for name, cs in cuts.items():
        W = g.const(name)
        new = cut_array(W, cs)
        if name in inits:
            _fill(inits[name], model_init[name], new)
            if name in input_vi:
                _set_dims(input_vi[name], new.shape)
        elif name in const_nodes:
            _set_constant_node(const_nodes[name], new)
        else:
            raise RuntimeError(f"member {name} is not a constant")
    rw = RewriteCtx(m, an, root, rem)
    for fn in an.rewrites:
        fn(rw)
    if rw._new_names:
        _drop_orphans(model, m)
    del m.graph.value_info[:]
    pin_ir_version(m)
    return m


def _read_names(graph: onnx.GraphProto, out: Set[str]) -> Set[str]:
    for n in graph.node:
        out.update(n.input)
        for a in n.attribute:
            for sub in ([a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)):
                _read_names(sub, out)
    out.update(o.name for o in graph.output)
    return out


def _drop_orphans(before: onnx.ModelProto, after: onnx.ModelProto) -> None:
    """Remove the initializers (small shape constants) that every reader now reads a private
    rewritten copy of instead: read in the input model, read by nothing now."""
    was = _read_names(before.graph, set())
    now = _read_names(after.graph, set())
    graph_inputs = {i.name for i in after.graph.input}
    dead = [i for i, t in enumerate(after.graph.initializer)
            if t.name in was and t.name not in now and t.name not in graph_inputs]
    for i in reversed(dead):            # in place: no copy of the (possibly large) others
        del after.graph.initializer[i]


def _repeated(fd) -> bool:
    rep = getattr(fd, "is_repeated", None)
    if rep is not None:
        return bool(rep)
    return fd.label == fd.LABEL_REPEATED


def _copy_fields(src, dst, skip: str) -> None:
    """Copy every set field of protobuf ``src`` into ``dst`` except ``skip``."""
    for fd, value in src.ListFields():
        if fd.name == skip:
            continue
        if _repeated(fd):
            getattr(dst, fd.name).extend(value)
        elif fd.message_type is not None:
            getattr(dst, fd.name).CopyFrom(value)
        else:
            setattr(dst, fd.name, value)


def _copy_without(model: onnx.ModelProto, skip: Set[str]) -> onnx.ModelProto:
    """A copy of the model whose initializers named in ``skip`` are left empty (they are about
    to be replaced): the big tensors are not copied only to be thrown away."""
    m = onnx.ModelProto()
    _copy_fields(model, m, "graph")
    _copy_fields(model.graph, m.graph, "initializer")
    for t in model.graph.initializer:
        nt = m.graph.initializer.add()
        if t.name in skip:
            nt.name = t.name
        else:
            nt.CopyFrom(t)
    return m


def _fill(t: onnx.TensorProto, orig: onnx.TensorProto, arr: np.ndarray) -> None:
    """Write ``arr`` into tensor ``t`` (keeping the original's name, type and metadata)."""
    t.name = orig.name
    t.data_type = orig.data_type if orig.data_type else t.data_type
    if orig.doc_string:
        t.doc_string = orig.doc_string
    del t.dims[:]
    t.dims.extend(int(d) for d in arr.shape)
    if orig.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE,
                          onnx.TensorProto.INT64, onnx.TensorProto.INT32, onnx.TensorProto.INT8,
                          onnx.TensorProto.UINT8) and arr.dtype == onnx.helper.tensor_dtype_to_np_dtype(orig.data_type):
        t.raw_data = np.ascontiguousarray(arr).tobytes()
    else:
        t.CopyFrom(numpy_helper.from_array(arr, orig.name))


def cut_array(W: np.ndarray, cuts: List[Tuple[int, np.ndarray, int]]) -> np.ndarray:
    grouped = [(a, r, gr) for a, r, gr in cuts if gr > 1]
    plain = [(a, r) for a, r, gr in cuts if gr <= 1]
    rows = np.arange(W.shape[0])
    keep = {}
    for a, r in plain:
        k = np.ones(W.shape[a], bool)
        k[r] = False
        keep[a] = np.nonzero(k)[0] if a not in keep else np.intersect1d(keep[a], np.nonzero(k)[0])
    # one contiguous take per cut axis, the most selective first
    for a, k in sorted(keep.items(), key=lambda kv: len(kv[1]) / max(W.shape[kv[0]], 1)):
        W = np.take(W, k, axis=a)
    if 0 in keep:
        rows = rows[keep[0]]
    for a, r, groups in grouped:
        # grouped-conv input axis: positions are in the full Cin space; each kept row keeps
        # the columns of its own group
        orig_cout = _orig_rows(rows, W, cuts)
        cin_g = W.shape[1]
        dead = set(int(x) for x in r)
        rows_per_group = orig_cout // groups
        new_rows = []
        for i, orow in enumerate(rows.tolist()):
            grp = orow // rows_per_group
            cols = [c for c in range(cin_g) if grp * cin_g + c not in dead]
            new_rows.append(W[i][cols])
        W = np.stack(new_rows) if new_rows else W[:, :0]
    return W if W.flags.c_contiguous else np.ascontiguousarray(W)


def _orig_rows(rows, W, cuts):
    dead_rows = sum(len(r) for a, r, g in cuts if a == 0 and g <= 1)
    return len(rows) + dead_rows


def _set_dims(vi, shape) -> None:
    dims = vi.type.tensor_type.shape.dim
    for d, v in zip(dims, shape):
        d.Clear()
        d.dim_value = int(v)
