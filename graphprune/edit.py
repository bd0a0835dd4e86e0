"""The graph-editing layer: model edits through onnx-graphsurgeon.

Analysis reads the model through ``graph.Graph``, a fast read-only index over the protobuf.
Edits that change the graph's structure around a layer (insert a node, rewire a reader, give a
reader its own copy of a constant) go through :class:`Editor`, a thin layer over an
onnx-graphsurgeon graph (``repair`` writes its refits with it): tensors know their readers and producer, nodes are objects (an
inserted node shifts no index anyone holds), constants are read and replaced by name whether
they are initializers or ``Constant`` nodes. ``Editor.to_model()`` exports the result with the
original model's top-level fields.

The whole-model passes that run on every model before analysis (``fold``: shape folding,
untying, weight folding) and ``rewrite`` edit a private protobuf copy in place instead: an
export would copy every initializer once more, and those passes must keep the peak memory of
multi-GiB models near one copy of the weights.

Why onnx-graphsurgeon: it is already what this project's users edit ONNX graphs with
(TensorRT's tooling), it keeps initializers lazy (``LazyValues``: an untouched weight is neither
decoded nor copied on export, including tensors whose data stays on disk), and its tensor/node
objects keep producer and reader lists in sync as inputs and outputs are reassigned.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import numpy as np
import onnx
import onnx_graphsurgeon as gs

__all__ = ["Editor"]

_TOP_FIELDS = ("ir_version", "producer_name", "producer_version", "domain", "model_version", "doc_string")


class Editor:
    """Edit ``model`` (not modified itself) and export the result with :meth:`to_model`.

    ``nodes[i]`` is the node at index ``i`` of ``model.graph.node``, whatever is inserted later.
    """

    def __init__(self, model: onnx.ModelProto):
        self.model = model
        self.graph = gs.import_onnx(model)
        self.nodes: List[gs.Node] = list(self.graph.nodes)
        self._tensors: Dict[str, gs.Tensor] = self.graph.tensors()
        self._names = set(self._tensors) | {n.name for n in self.nodes if n.name}

    # -- tensors
    def tensor(self, name: str) -> Optional[gs.Tensor]:
        """The tensor called ``name`` (None when there is none)."""
        return self._tensors.get(name) if name else None

    def readers(self, name: str) -> List[gs.Node]:
        """The nodes reading ``name``, once per read."""
        t = self.tensor(name)
        return list(t.outputs) if t is not None else []

    def is_graph_output(self, name: str) -> bool:
        return any(t.name == name for t in self.graph.outputs)

    def const(self, name: str) -> Optional[np.ndarray]:
        """The value of a constant (an initializer or a ``Constant`` node's output), else None."""
        t = self.tensor(name)
        if isinstance(t, gs.Constant):
            return np.asarray(t.values)
        if t is not None and len(t.inputs) == 1 and t.inputs[0].op == "Constant":
            v = t.inputs[0].attrs.get("value")
            if isinstance(v, gs.Constant):
                return np.asarray(v.values)
        return None

    def set_const(self, name: str, value: np.ndarray) -> None:
        """Replace the value of the constant ``name`` (same name, the dtype of ``value``)."""
        t = self.tensor(name)
        if isinstance(t, gs.Constant):
            t.values = np.asarray(value)
            return
        t.inputs[0].attrs["value"] = gs.Constant(name, np.asarray(value))

    def fresh(self, base: str) -> str:
        """A tensor or node name not used yet, starting with ``base``."""
        name, i = base, 1
        while name in self._names:
            name, i = f"{base}_{i}", i + 1
        self._names.add(name)
        return name

    def add_const(self, base: str, value: np.ndarray) -> gs.Constant:
        """A new initializer (a fresh name from ``base``)."""
        c = gs.Constant(self.fresh(base), np.asarray(value))
        self._tensors[c.name] = c
        return c

    def variable(self, base: str, like: gs.Tensor) -> gs.Variable:
        """A new activation tensor (a fresh name from ``base``) of ``like``'s dtype."""
        v = gs.Variable(self.fresh(base), dtype=like.dtype)
        self._tensors[v.name] = v
        return v

    # -- nodes
    def replace_input(self, node: gs.Node, slot: int, tensor: gs.Tensor) -> None:
        """Make ``node`` read ``tensor`` at input ``slot`` (empty slots up to it are added)."""
        while len(node.inputs) <= slot:
            node.inputs.append(gs.Variable.empty())
        node.inputs[slot] = tensor

    def insert_after(self, node: gs.Node, op: str, inputs: Sequence[gs.Tensor], outputs: Sequence[gs.Tensor],
                     name: str = "", **attrs) -> gs.Node:
        """A new node placed right after ``node`` in the graph's order."""
        new = gs.Node(op, name=self.fresh(name) if name else "", attrs=attrs, inputs=list(inputs),
                      outputs=list(outputs))
        pos = next(i for i, n in enumerate(self.graph.nodes) if n is node)
        self.graph.nodes.insert(pos + 1, new)
        return new

    # -- result
    def to_model(self) -> onnx.ModelProto:
        """The edited model: the graph exported, the original's top-level fields and opsets kept,
        no ``value_info`` (shapes may have changed; inferred again by whoever needs them)."""
        out = gs.export_onnx(self.graph, do_type_check=False)
        for f in _TOP_FIELDS:
            setattr(out, f, getattr(self.model, f))
        del out.opset_import[:]
        out.opset_import.extend(self.model.opset_import)
        del out.metadata_props[:]
        out.metadata_props.extend(self.model.metadata_props)
        del out.graph.value_info[:]
        return out

