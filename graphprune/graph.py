"""A thin read-only view of an ONNX graph: producers, consumers, constants, shapes.

Constants are initializers *and* outputs of ``Constant`` nodes (some exporters put every
weight in a Constant node); both are treated the same everywhere.
"""

from __future__ import annotations

import copy
import math
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import onnx
from onnx import numpy_helper, shape_inference

Dim = Optional[object]  # int, a symbolic name (str) or None


def node_label(node: onnx.NodeProto, index: int) -> str:
    return node.name or f"{node.op_type}_{index}"


def _constant_node_dims(node: onnx.NodeProto) -> Optional[List[int]]:
    """The shape of a ``Constant`` node's value, read without decoding it."""
    for a in node.attribute:
        if a.name == "value":
            return [int(d) for d in a.t.dims]
        if a.name in ("value_float", "value_int"):
            return []
        if a.name == "value_floats":
            return [len(a.floats)]
        if a.name == "value_ints":
            return [len(a.ints)]
    return None


def _constant_node_value(node: onnx.NodeProto) -> Optional[np.ndarray]:
    for a in node.attribute:
        if a.name == "value":
            return numpy_helper.to_array(a.t)
        if a.name == "value_float":
            return np.array(a.f, dtype=np.float32)
        if a.name == "value_floats":
            return np.array(list(a.floats), dtype=np.float32)
        if a.name == "value_int":
            return np.array(a.i, dtype=np.int64)
        if a.name == "value_ints":
            return np.array(list(a.ints), dtype=np.int64)
    return None


class Graph:
    """Index over ``model.graph`` (the top-level graph; subgraphs are opaque, except that
    ``subgraphs=True`` also resolves the shapes of their tensors) and graphprune's one shape resolver."""

    def __init__(self, model: onnx.ModelProto, infer: bool = True, known_shapes: Optional[Dict] = None,
                 runtime: bool = True, input_dims: Optional[Mapping[str, Sequence[int]]] = None,
                 subgraphs: bool = False):
        self.model = model
        g = model.graph
        self.nodes: List[onnx.NodeProto] = list(g.node)
        self.labels: List[str] = [node_label(n, i) for i, n in enumerate(self.nodes)]
        self.inputs: List[str] = [i.name for i in g.input]
        self.outputs: List[str] = [o.name for o in g.output]
        self.initializers: Dict[str, onnx.TensorProto] = {t.name: t for t in g.initializer}
        self.const_nodes: Dict[str, onnx.NodeProto] = {}
        self.producer: Dict[str, int] = {}
        self.consumers: Dict[str, List[Tuple[int, int]]] = {}
        for i, n in enumerate(self.nodes):
            for o in n.output:
                if o:
                    self.producer[o] = i
            if n.op_type == "Constant" and n.domain in ("", "ai.onnx") and len(n.output) == 1:
                self.const_nodes[n.output[0]] = n
            for k, x in enumerate(n.input):
                if x:
                    self.consumers.setdefault(x, []).append((i, k))
        self._const_cache: Dict[str, Optional[np.ndarray]] = {}
        self._cached = 0
        self.shapes: Dict[str, List[Dim]] = {}
        self.dtypes: Dict[str, int] = {}
        self.infer_error: Optional[str] = None     # why shape inference failed (declared shapes are used)
        if input_dims is None or not infer:
            self._read_shapes(model.graph)
        if infer:
            self._infer(input_dims, subgraphs)
            if known_shapes:
                for k, v in known_shapes.items():
                    old = self.shapes.get(k)
                    if old is None or (len(old) == len(v) and any(d is None for d in old)):
                        self.shapes[k] = v
            if input_dims is None and self._has_unknown_dims():
                self._substituted_shapes()
            if runtime and self._needs_runtime_shapes():
                self._runtime_shapes()
        elif subgraphs:
            self._read_subgraph_shapes(model.graph)

    # ---------------------------------------------------------------- shapes
    # Shapes are resolved here and only here (count.py reads them too). ``shapes[name]`` is a list
    # of dims: an int, a symbol (str) or None (unknown). Sources, later ones filling what earlier
    # ones left unknown: declared value infos, initializer and Constant dims, ONNX shape inference
    # (with data propagation) on a weight-free copy, the same inference with the symbolic input
    # dims replaced by two sets of concrete values (``_substituted_shapes``), and two onnxruntime
    # runs (``_runtime_shapes``, small models, with ``runtime``).
    #
    # ``input_dims`` ({graph input: concrete dims}, count.py's feed) runs inference once with those
    # dims instead: the declared value infos (written for the symbolic dims) are dropped, every
    # shape comes from that inference, and no substituted runs follow. ``subgraphs`` also records
    # the shapes of the tensors inside If / Loop / Scan bodies (count.py counts their nodes).
    def _read_vi(self, vi, overwrite: bool = True) -> None:
        t = vi.type
        if not t.HasField("tensor_type"):
            return
        tt = t.tensor_type
        if not overwrite and vi.name in self.shapes:
            return
        self.dtypes[vi.name] = tt.elem_type
        if not tt.HasField("shape"):
            return
        dims: List[Dim] = []
        for d in tt.shape.dim:
            v = d.dim_value
            if v or d.HasField("dim_value"):
                dims.append(int(v))
            else:
                p = d.dim_param
                dims.append(p if p and not p.startswith("unk__") else None)
        self.shapes[vi.name] = dims

    def _read_shapes(self, g: onnx.GraphProto) -> None:
        for vi in list(g.input) + list(g.value_info) + list(g.output):
            self._read_vi(vi)
        self._read_const_shapes()

    def _read_const_shapes(self) -> None:
        for name, t in self.initializers.items():
            self.shapes[name] = [int(d) for d in t.dims]
            self.dtypes[name] = t.data_type
        for name, n in self.const_nodes.items():
            dims = _constant_node_dims(n)
            if dims is not None:
                self.shapes[name] = dims

    def _read_subgraph_shapes(self, g: onnx.GraphProto) -> None:
        """Shapes of the tensors inside the subgraphs of ``g``'s nodes, recursively (an outer
        name keeps its shape; a subgraph's initializers are its own)."""
        for node in g.node:
            for a in node.attribute:
                for sg in ([a.g] if a.HasField("g") else []) + list(a.graphs):
                    for t in sg.initializer:
                        self.shapes[t.name] = [int(d) for d in t.dims]
                        self.dtypes[t.name] = t.data_type
                    for vi in list(sg.input) + list(sg.output) + list(sg.value_info):
                        self._read_vi(vi, overwrite=False)
                    for n in sg.node:
                        if n.op_type == "Constant" and n.output and n.output[0] not in self.shapes:
                            dims = _constant_node_dims(n)
                            if dims is not None:
                                self.shapes[n.output[0]] = dims
                    self._read_subgraph_shapes(sg)

    def _infer(self, input_dims: Optional[Mapping[str, Sequence[int]]] = None, subgraphs: bool = False) -> None:
        # Shape inference on a copy whose big weights are turned into graph inputs: cheap for big models.
        sk = _strip_weights(self.model)
        if input_dims is not None:
            for vi in sk.graph.input:
                if vi.name in input_dims and vi.type.HasField("tensor_type"):
                    dims = vi.type.tensor_type.shape.dim
                    if len(dims) == len(input_dims[vi.name]):
                        for d, v in zip(dims, input_dims[vi.name]):
                            d.Clear()
                            d.dim_value = int(v)
            del sk.graph.value_info[:]
        try:
            inferred = shape_inference.infer_shapes(sk, check_type=False, strict_mode=False, data_prop=True)
        except Exception as e:
            from .io import first_line

            self.infer_error = first_line(e)
            if input_dims is not None:
                self._read_shapes(self.model.graph)
            if subgraphs:
                self._read_subgraph_shapes(self.model.graph)
            return
        ig = inferred.graph
        if input_dims is not None:
            # every shape from this inference at the concrete dims (the declared ones were not read)
            self._read_const_shapes()
            for vi in list(ig.input) + list(ig.output) + list(ig.value_info):
                self._read_vi(vi, overwrite=False)
        else:
            for vi in list(ig.value_info) + list(ig.output):
                if vi.name not in self.shapes or any(not isinstance(d, int) for d in self.shapes[vi.name]):
                    self._read_vi(vi)
        if subgraphs:
            self._read_subgraph_shapes(ig)

    RUNTIME_SHAPES_MAX_BYTES = 512 * 1024 * 1024

    def _runnable(self) -> List[int]:
        """Indices of nodes onnxruntime can run: not a custom-domain op, not downstream of one."""
        tainted: set = set()
        keep = []
        for i, n in enumerate(self.nodes):
            if n.domain not in ("", "ai.onnx", "com.microsoft") or any(x in tainted for x in n.input if x):
                tainted.update(o for o in n.output if o)
            else:
                keep.append(i)
        return keep

    def _needs_runtime_shapes(self) -> bool:
        for n in self.nodes:
            for o in n.output:
                if o and o not in self.const_nodes:
                    s = self.shapes.get(o)
                    if s is None or any(d is None for d in s):
                        return self.weight_bytes() < self.RUNTIME_SHAPES_MAX_BYTES
        return False

    def _has_unknown_dims(self) -> bool:
        for n in self.nodes:
            for o in n.output:
                if o and o not in self.const_nodes:
                    sh = self.shapes.get(o)
                    if sh is None or any(d is None for d in sh):
                        return True
        return False

    def _symbols(self) -> List[str]:
        syms: List[str] = []
        for vi in self.model.graph.input:
            for d in vi.type.tensor_type.shape.dim:
                if d.HasField("dim_param") and d.dim_param and d.dim_param not in syms:
                    syms.append(d.dim_param)
        return syms

    def _merge_two_runs(self, s1: Dict, s2: Dict, by_pair: Dict) -> None:
        """Dims equal in both runs are static; dims that follow a symbol's two values are that
        symbol; others stay unknown. Known dims are never overwritten."""
        for name, shp1 in s1.items():
            shp2 = s2.get(name)
            if shp2 is None or len(shp1) != len(shp2) or name in self.const_nodes:
                continue
            old = self.shapes.get(name)
            if old is not None and len(old) != len(shp1):
                continue
            new = []
            for i, (a, b) in enumerate(zip(shp1, shp2)):
                prev = old[i] if old is not None else None
                if isinstance(prev, (int, str)):
                    new.append(prev)
                elif a is not None and a == b:
                    new.append(int(a))
                else:
                    new.append(by_pair.get((a, b)))
            self.shapes[name] = new

    def _substituted_shapes(self) -> None:
        """Static shape inference twice with the symbolic input dims replaced by two sets of
        concrete values: resolves Reshape/Expand targets that symbolic inference gives up on,
        without running the model (which may be huge, or contain custom ops)."""
        syms = self._symbols()
        if not syms:
            return
        runs = []
        for base in (2, 3):
            vals = {sym: base + 6 * i + 8 for i, sym in enumerate(syms)}
            sk = _strip_weights(self.model)
            for vi in sk.graph.input:
                for d in vi.type.tensor_type.shape.dim:
                    if d.HasField("dim_param") and d.dim_param in vals:
                        v = vals[d.dim_param]
                        d.Clear()
                        d.dim_value = v
            del sk.graph.value_info[:]
            try:
                inf = shape_inference.infer_shapes(sk, check_type=False, strict_mode=False, data_prop=True)
            except Exception:
                return
            shapes = {}
            for vi in list(inf.graph.value_info) + list(inf.graph.output):
                t = vi.type
                if t.HasField("tensor_type") and t.tensor_type.HasField("shape"):
                    shapes[vi.name] = [int(d.dim_value) if d.HasField("dim_value") else None
                                       for d in t.tensor_type.shape.dim]
            runs.append((shapes, vals))
        (s1, v1), (s2, v2) = runs
        self._merge_two_runs(s1, s2, {(v1[s], v2[s]): s for s in syms})

    def _runtime_shapes(self) -> None:
        """Fill dims static inference left unknown by running the model twice with different
        values for the symbolic input dims: a dim equal in both runs is static, one that follows
        a symbol is that symbol, anything else stays unknown."""
        from .inputs import random_inputs
        from .memory import release_memory
        from .runtime import session  # local: onnxruntime is heavy to import

        runnable = self._runnable()
        model = self.model
        if len(runnable) < len(self.nodes):
            # run the part before any custom op: a copy without the nodes onnxruntime lacks
            model = onnx.ModelProto()
            model.CopyFrom(self.model)
            del model.graph.node[:]
            model.graph.node.extend(self.nodes[i] for i in runnable)
            del model.graph.output[:]
        outs = {o.name for o in model.graph.output}
        names = [o for i in runnable for o in self.nodes[i].output
                 if o and o not in self.const_nodes and o not in outs]
        if not names:
            return
        syms = []
        for vi in self.model.graph.input:
            for d in vi.type.tensor_type.shape.dim:
                if d.HasField("dim_param") and d.dim_param and d.dim_param not in syms:
                    syms.append(d.dim_param)
        runs = []
        try:
            fetch = names + list(outs)
            sess = session(model, 1, extra_outputs=names, prepack=False,
                            opt_level=__import__("onnxruntime").GraphOptimizationLevel.ORT_DISABLE_ALL)
            for k, base in enumerate((2, 3)):
                vals = {sym: base + 6 * i + 8 for i, sym in enumerate(syms)}
                feed = random_inputs(model, seed=k, batch=base, dims=vals)
                out = sess.run(fetch, feed)
                runs.append(({k2: v.shape for k2, v in zip(fetch, out)}, vals, base))
        except Exception:
            return
        del sess, out
        release_memory(collect=False)
        (s1, v1, b1), (s2, v2, b2) = runs
        by_pair = {(v1[s], v2[s]): s for s in syms}
        self._merge_two_runs(s1, s2, by_pair)

    def shape(self, name: str) -> Optional[List[Dim]]:
        return self.shapes.get(name)

    def rank(self, name: str) -> Optional[int]:
        s = self.shapes.get(name)
        return None if s is None else len(s)

    # ------------------------------------------------------------- constants
    def is_const(self, name: str) -> bool:
        return name in self.initializers or name in self.const_nodes

    def const(self, name: str) -> Optional[np.ndarray]:
        if name in self._const_cache:
            return self._const_cache[name]
        v: Optional[np.ndarray] = None
        if name in self.initializers:
            from .io import read_tensor  # lazily loaded external data is read from its file

            v = read_tensor(self.initializers[name])
        elif name in self.const_nodes:
            v = _constant_node_value(self.const_nodes[name])
        if v is None or v.nbytes <= self.CACHE_MAX_BYTES or self._cached + v.nbytes <= self.CACHE_BUDGET:
            # small models keep their weights for the next step; big ones are read again
            self._const_cache[name] = v
            self._cached += 0 if v is None else v.nbytes
        return v

    def cached_const(self, name: str) -> Optional[np.ndarray]:
        """The constant's array when it is already in memory (never reads or caches)."""
        return self._const_cache.get(name)

    CACHE_MAX_BYTES = 1 << 20
    CACHE_BUDGET = 256 << 20

    def weight_bytes(self) -> int:
        from .io import tensor_nbytes

        return sum(tensor_nbytes(t) for t in self.model.graph.initializer)

    def is_graph_input(self, name: str) -> bool:
        return name in self.inputs and name not in self.initializers


def _strip_weights(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy for shape inference whose large initializers (and sparse initializers) are replaced
    by graph inputs of the same type and shape; small ones keep their data for data propagation."""
    m = onnx.ModelProto()
    g = model.graph
    for field in ("ir_version", "producer_name", "domain", "model_version"):
        setattr(m, field, getattr(model, field))
    m.opset_import.extend(model.opset_import)
    m.functions.extend(model.functions)      # shape inference reads model-local functions
    mg = m.graph
    mg.name = g.name
    mg.node.extend(g.node)
    mg.input.extend(g.input)
    mg.output.extend(g.output)
    mg.value_info.extend(g.value_info)
    names = {i.name for i in g.input}
    small, big = [], []
    for t in g.initializer:
        n = math.prod(t.dims)
        if t.data_location != onnx.TensorProto.EXTERNAL and (n <= 64 or (n <= 4096 and t.data_type == 1)):
            small.append(t)
        elif t.name not in names:
            big.append(t)
    mg.initializer.extend(small)
    for name, elem, dims in [(t.name, t.data_type, t.dims) for t in big] + [
            (sp.values.name, sp.values.data_type, sp.dims) for sp in g.sparse_initializer if sp.values.name not in names]:
        vi = mg.input.add()
        vi.name = name
        tt = vi.type.tensor_type
        tt.elem_type = elem
        for d in dims:
            tt.shape.dim.add().dim_value = d
    return m


def clone(model: onnx.ModelProto) -> onnx.ModelProto:
    return copy.deepcopy(model)


def copy_fields(src: Any, dst: Any, skip: str) -> None:
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
