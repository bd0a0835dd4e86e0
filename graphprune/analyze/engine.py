"""The analyzer engine: channel atoms, union-find coupling, per-op rules.

Every prunable channel is an *atom* (an int). A tensor axis that carries channels has a
*descriptor*: an int array, one atom per position along the axis (an atom may repeat, e.g.
after Flatten, where one channel covers H*W positions). Rules, one per op family (see
``graphprune.analyze.rules``), propagate descriptors from inputs to outputs, create new atoms
where an op makes new channels (Conv, Gemm ...), couple atoms that must be removed together
(union-find), record *members* (constant tensors that lose slices when an atom is removed)
and register rewrite callbacks for attributes and shape constants.

A *unit* is a union-find class of atoms: the smallest set of channels that can be removed.
A *group* is a set of units that share producers (origins), e.g. the C channels of a
residual stream. Anything a rule does not understand is blocked, never passed through.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Set, Tuple

import numpy as np
import onnx

from ..graph import Graph
from ..layers import node_attr

# ----------------------------------------------------------------------------- union-find


class UnionFind:
    def __init__(self) -> None:
        self.parent: List[int] = []

    def add(self, n: int) -> np.ndarray:
        start = len(self.parent)
        self.parent.extend(range(start, start + n))
        return np.arange(start, start + n, dtype=np.int64)

    def find(self, a: int) -> int:
        p = self.parent
        while p[a] != a:
            p[a] = p[p[a]]
            a = p[a]
        return a

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            if ra < rb:
                self.parent[rb] = ra
            else:
                self.parent[ra] = rb

    def roots(self, atoms: np.ndarray) -> np.ndarray:
        f = self.find
        return np.fromiter((f(int(a)) for a in atoms.ravel()), dtype=np.int64, count=atoms.size).reshape(atoms.shape)


# ----------------------------------------------------------------------------- records


@dataclass
class Member:
    tensor: str           # constant tensor (initializer or Constant-node output)
    axis: int
    role: str             # out | in | param
    atoms: np.ndarray     # one atom per position along `axis`
    node: str             # label of the node that uses it this way
    groups: int = 1       # grouped-conv input axis: positions are in the full Cin space


@dataclass
class ShapeMember:
    tensor: str
    index: List[int]
    node: str
    atoms: np.ndarray     # atoms whose kept count the values encode


@dataclass
class Constraint:
    """Every block must keep the same number of units (grouped conv, Split, GroupNorm)."""
    blocks: List[np.ndarray]
    reason: str


RewriteFn = Callable[["object"], None]


class AnalysisError(Exception):
    pass


@dataclass
class Analysis:
    graph: Graph
    uf: UnionFind
    origins: List[str]                       # origin id -> label "node:tensor"
    atom_origin: List[int]                   # atom -> origin id
    descs: Dict[str, Dict[int, np.ndarray]]
    members: List[Member]
    shape_members: List[ShapeMember]
    constraints: List[Constraint]
    blocks: List[Tuple[np.ndarray, str]]
    inexact: List[Tuple[np.ndarray, str]]
    rewrites: List[RewriteFn]
    notes: List[str] = field(default_factory=list)
    head_atoms: List[np.ndarray] = field(default_factory=list)


# ----------------------------------------------------------------------------- engine


class Analyzer:
    def __init__(self, graph: Graph, rules: Dict[str, Callable]):
        self.g = graph
        self.rules = rules
        self.uf = UnionFind()
        self.origins: List[str] = []
        self.atom_origin: List[int] = []
        self.descs: Dict[str, Dict[int, np.ndarray]] = {}
        self.members: List[Member] = []
        self.member_index: Dict[Tuple[str, int], int] = {}
        self.member_readers: Dict[str, Set[int]] = {}
        self.shape_members: List[ShapeMember] = []
        self.constraints: List[Constraint] = []
        self.blocks: List[Tuple[np.ndarray, str]] = []
        self.inexact: List[Tuple[np.ndarray, str]] = []
        self.rewrites: List[RewriteFn] = []
        self.shapevals: Dict[str, list] = {}
        self.notes: List[str] = []
        self.head_atoms: List[np.ndarray] = []

    # -- atoms
    def new_atoms(self, n: int, origin: str) -> np.ndarray:
        oid = len(self.origins)
        self.origins.append(origin)
        atoms = self.uf.add(n)
        self.atom_origin.extend([oid] * n)
        return atoms

    def fixed_atoms(self, n: int, reason: str, origin: str) -> np.ndarray:
        atoms = self.new_atoms(n, origin)
        self.blocks.append((atoms, reason))
        return atoms

    def couple(self, a: np.ndarray, b: np.ndarray) -> None:
        if a.shape != b.shape:
            raise AnalysisError(f"cannot couple channel axes of sizes {a.shape} and {b.shape}")
        u = self.uf.union
        for x, y in zip(a.ravel().tolist(), b.ravel().tolist()):
            if x != y:
                u(x, y)

    def couple_all(self, a: np.ndarray) -> None:
        flat = a.ravel().tolist()
        for x in flat[1:]:
            self.uf.union(flat[0], x)

    def block(self, atoms: np.ndarray, reason: str) -> None:
        if atoms is not None and atoms.size:
            self.blocks.append((atoms, reason))

    def block_tensor(self, name: str, reason: str) -> None:
        for ax, atoms in self.descs.get(name, {}).items():
            self.block(atoms, reason)

    def add_member(self, tensor: str, axis: int, role: str, atoms: np.ndarray, node: str, groups: int = 1,
                   node_index: int = -1) -> None:
        self.member_readers.setdefault(tensor, set()).add(node_index)
        key = (tensor, axis)
        if key in self.member_index:
            # a weight shared by several nodes: its slices must agree
            prev = self.members[self.member_index[key]]
            if prev.atoms.shape == atoms.shape and prev.groups == groups:
                self.couple(prev.atoms, atoms)
            else:
                self.block(prev.atoms, f"{tensor} is shared with conflicting layouts")
                self.block(atoms, f"{tensor} is shared with conflicting layouts")
            return
        self.member_index[key] = len(self.members)
        self.members.append(Member(tensor, axis, role, atoms, node, groups))

    # -- run
    def run(self) -> Analysis:
        g = self.g
        for i, node in enumerate(g.nodes):
            ctx = NodeCtx(self, i)
            op = node.op_type
            domain = node.domain if node.domain not in ("", "ai.onnx") else ""
            rule = self.rules.get((domain, op))
            if rule is None:
                why = f"unknown op {op}" if not domain else f"unknown op {domain}::{op}"
                ctx.block_inputs(f"{why} at {ctx.label}")
            else:
                try:
                    rule(ctx)
                except AnalysisError as e:
                    ctx.block_inputs(f"{op} {ctx.label}: {e}")
                    for o in node.output:
                        self.descs.pop(o, None)
            ctx.finish()
            if any(x and x in self.shapevals for x in node.input):
                for o in node.output:
                    if o and o not in self.shapevals:
                        shp = g.shape(o)
                        if shp is not None and len(shp) <= 1 and all(isinstance(d, int) for d in shp):
                            n = shp[0] if shp else 1
                            self.shapevals[o] = [("unk",)] * n
            # subgraphs see outer tensors invisibly: block whatever they capture
            captured = _captured_names(node)
            for name in captured:
                self.block_tensor(name, f"used inside a subgraph of {op} {ctx.label}")
        for name in g.outputs:
            self.block_tensor(name, f"graph output {name}")
        self._block_foreign_readers()
        return Analysis(g, self.uf, self.origins, self.atom_origin, self.descs, self.members,
                        self.shape_members, self.constraints, self.blocks, self.inexact,
                        self.rewrites, self.notes, self.head_atoms)


    def _block_foreign_readers(self) -> None:
        """A member constant read by a node that did not register it (or by a subgraph, or as a
        graph output) would be sliced under that reader's feet: block its channels."""
        g = self.g
        captured: Set[str] = set()
        for node in g.nodes:
            captured |= _captured_names(node)
        for m in self.members:
            readers = {i for i, _ in g.consumers.get(m.tensor, [])}
            foreign = readers - self.member_readers.get(m.tensor, set())
            if foreign:
                i = min(foreign)
                self.block(m.atoms, f"constant {m.tensor} is also read by {g.nodes[i].op_type} {g.labels[i]}")
            elif m.tensor in g.outputs or m.tensor in captured:
                self.block(m.atoms, f"constant {m.tensor} is a graph output or read by a subgraph")
            elif m.tensor in g.inputs:
                # an initializer that is also a graph input can be overridden by the caller:
                # its shape is part of the model's interface
                self.block(m.atoms, f"constant {m.tensor} is also a graph input")


def _captured_names(node: onnx.NodeProto) -> Set[str]:
    names: Set[str] = set()
    for a in node.attribute:
        subs = []
        if a.type == onnx.AttributeProto.GRAPH:
            subs = [a.g]
        elif a.type == onnx.AttributeProto.GRAPHS:
            subs = list(a.graphs)
        for sg in subs:
            names |= _graph_free_names(sg)
    return names


def _graph_free_names(g: onnx.GraphProto) -> Set[str]:
    defined = {i.name for i in g.input} | {t.name for t in g.initializer}
    used: Set[str] = set()
    for n in g.node:
        for x in n.input:
            if x and x not in defined:
                used.add(x)
        used |= _captured_names(n) - defined
        defined |= set(n.output)
    return used - defined


class NodeCtx:
    """What a rule sees: one node, its tensors' shapes, constants and descriptors."""

    def __init__(self, an: Analyzer, index: int):
        self.an = an
        self.g = an.g
        self.index = index
        self.node = an.g.nodes[index]
        self.label = an.g.labels[index]
        self.op = self.node.op_type
        self.inputs = list(self.node.input)
        self.outputs = list(self.node.output)
        self._used: Set[Tuple[str, int]] = set()
        self._used_sv: Set[str] = set()

    # -- attributes, shapes, constants
    def attr(self, name: str, default=None):
        return node_attr(self.node, name, default)

    def input(self, k: int) -> str:
        return self.inputs[k] if k < len(self.inputs) else ""

    def shape(self, name: str):
        return self.g.shape(name) if name else None

    def rank(self, name: str) -> Optional[int]:
        s = self.shape(name)
        if s is not None:
            return len(s)
        return None

    def known_rank(self, name: str) -> int:
        """The rank of ``name``; AnalysisError ("rank unknown") when shape inference gave none."""
        r = self.rank(name)
        if r is None:
            raise AnalysisError("rank unknown")
        return r

    def readers(self, name: str) -> List[onnx.NodeProto]:
        """The nodes that read ``name``, in graph order."""
        return [self.g.nodes[i] for i, _ in self.g.consumers.get(name, [])]

    def const(self, name: str) -> Optional[np.ndarray]:
        return self.g.const(name) if name else None

    def is_const(self, name: str) -> bool:
        return bool(name) and self.g.is_const(name)

    def const_shape(self, name: str) -> Optional[Tuple[int, ...]]:
        """Shape of a constant without reading its data (weights may be large or on disk)."""
        if not self.is_const(name):
            return None
        if name in self.g.initializers:
            return tuple(int(d) for d in self.g.initializers[name].dims)
        v = self.g.const(name)
        return None if v is None else tuple(v.shape)

    def opset(self) -> int:
        for o in self.g.model.opset_import:
            if o.domain in ("", "ai.onnx"):
                return o.version
        return 0

    # -- descriptors
    def desc(self, name: str) -> Dict[int, np.ndarray]:
        d = self.an.descs.get(name, {})
        for ax in d:
            self._used.add((name, ax))
        return d

    def atoms(self, name: str, axis: int) -> Optional[np.ndarray]:
        d = self.an.descs.get(name, {})
        if axis in d:
            self._used.add((name, axis))
            return d[axis]
        return None

    def peek_desc(self, name: str) -> Dict[int, np.ndarray]:
        """Descriptors of ``name`` without marking them read (the engine still checks that
        the rule handled every input axis)."""
        return self.an.descs.get(name, {})

    def peek_atoms(self, name: str, axis: int) -> Optional[np.ndarray]:
        """The atoms of ``name`` along ``axis`` (None if it carries none), without marking them
        read: for another tensor a shape value refers to, or for an output already set."""
        return self.an.descs.get(name, {}).get(axis)

    def set_desc(self, name: str, axis: int, atoms: np.ndarray) -> None:
        if not name:
            return
        self.an.descs.setdefault(name, {})[axis] = atoms

    def pass_through(self, src: str, dst: str, axis_map: Optional[Dict[int, int]] = None) -> None:
        """Copy every descriptor of src to dst (axes remapped; a missing key drops the axis)."""
        for ax, atoms in self.desc(src).items():
            to = ax if axis_map is None else axis_map.get(ax)
            if to is None:
                self.block(atoms, f"{self.op} {self.label} removes channel axis {ax}")
            else:
                self.set_desc(dst, to, atoms)

    # -- coupling and records
    def new_space(self, n: int, tensor: str) -> np.ndarray:
        return self.an.new_atoms(n, f"{self.label}:{tensor}")

    def fixed(self, n: int, reason: str) -> np.ndarray:
        return self.an.fixed_atoms(n, reason, f"{self.label}:fixed")

    def couple(self, a: np.ndarray, b: np.ndarray) -> None:
        self.an.couple(a, b)

    def couple_all(self, atoms: np.ndarray) -> None:
        """Make all ``atoms`` one unit (a head's channels, a GroupNorm group)."""
        self.an.couple_all(atoms)

    def roots(self, atoms: np.ndarray) -> np.ndarray:
        """The unit (union-find root) of every atom, same shape as ``atoms``."""
        return self.an.uf.roots(atoms)

    def mark_heads(self, atoms: np.ndarray) -> None:
        """Record ``atoms`` as attention heads (their group gets the kind ``heads``)."""
        self.an.head_atoms.append(atoms)

    def block(self, atoms: Optional[np.ndarray], reason: str) -> None:
        if atoms is not None:
            self.an.block(atoms, reason)

    def block_inputs(self, reason: str) -> None:
        for x in self.inputs:
            if x:
                for ax, atoms in self.desc(x).items():
                    self.an.block(atoms, reason)
        for name, atoms in self._shape_refs():
            self.an.block(atoms, reason)

    def inexact(self, atoms: Optional[np.ndarray], reason: str) -> None:
        if atoms is not None and atoms.size:
            self.an.inexact.append((atoms, reason))

    def member(self, tensor: str, axis: int, role: str, atoms: np.ndarray, groups: int = 1) -> None:
        shp = self.g.shape(tensor)
        if shp is not None and axis < 0:
            axis += len(shp)
        self.an.add_member(tensor, axis, role, atoms, self.label, groups, self.index)

    def shape_member(self, tensor: str, index: Sequence[int], atoms: np.ndarray) -> None:
        self.an.shape_members.append(ShapeMember(tensor, list(index), self.label, atoms))

    def constrain(self, blocks: List[np.ndarray], reason: str) -> None:
        if len(blocks) > 1:
            self.an.constraints.append(Constraint(blocks, f"{reason} at {self.label}"))

    def on_rewrite(self, fn: RewriteFn) -> None:
        self.an.rewrites.append(fn)

    # -- shape values (abstract interpretation of shape arithmetic)
    def has_shapeval(self, name: str) -> bool:
        """Whether ``name`` carries a shape value (without marking it read)."""
        return bool(name) and self.an.shapevals.get(name) is not None

    def shapeval(self, name: str):
        self._used_sv.add(name)
        return self.an.shapevals.get(name)

    def set_shapeval(self, name: str, items) -> None:
        self.an.shapevals[name] = items

    def _shape_refs(self):
        """Atoms referenced by ('dim', tensor, axis) items of shape values fed to this node."""
        out = []
        for x in self.inputs:
            for it in self.an.shapevals.get(x) or []:
                if it[0] == "dim":
                    atoms = self.an.descs.get(it[1], {}).get(it[2])
                    if atoms is not None:
                        out.append((it[1], atoms))
        return out

    def finish(self) -> None:
        for x in self.inputs:
            if not x:
                continue
            for ax, atoms in self.an.descs.get(x, {}).items():
                if (x, ax) not in self._used:
                    self.an.block(atoms, f"{self.op} {self.label} does not handle channel axis {ax} of {x}")
            if x not in self._used_sv:
                for it in self.an.shapevals.get(x) or []:
                    if it[0] == "dim":
                        atoms = self.an.descs.get(it[1], {}).get(it[2])
                        if atoms is not None:
                            self.an.block(atoms, f"{self.op} {self.label} uses the channel count of {it[1]}")
