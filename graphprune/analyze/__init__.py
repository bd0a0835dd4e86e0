"""The analyze step: find every coupled channel group of a model.

``analyze(model)`` runs the per-op rules over the graph and returns an :class:`Analysis`;
``groups(analysis)`` turns its atoms into :class:`Group` objects: units (removable channel
sets), members (constant slices), blocked units with reasons, constraints and exactness.

The package itself is callable: ``graphprune.analyze(model_or_path, ...)`` is the public
:func:`graphprune.api.analyze` (groups and why some are blocked), while
``graphprune.analyze.analyze(model)`` is this step's raw :class:`Analysis`.
"""

from __future__ import annotations

import sys
import types
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import numpy as np
import onnx

from ..graph import Graph
from ..layers import LayerKind, layer_of
from .engine import Analysis, Analyzer, Member, ShapeMember
from .rules import RULES


class _KeyView:
    def __init__(self, arr: np.ndarray):
        self.arr = arr

    def __getitem__(self, r: int) -> int:
        return int(self.arr[r])


def analyze(model: onnx.ModelProto, graph: Optional[Graph] = None) -> Analysis:
    g = graph or Graph(model)
    return Analyzer(g, RULES).run()


@dataclass
class GroupMember:
    member: Member
    positions: np.ndarray   # positions along member.axis covered by this group
    units: np.ndarray       # unit (root atom) of each covered position
    whole: bool             # covers the whole axis


@dataclass
class Group:
    id: int
    name: str
    units: np.ndarray                       # unit ids (root atoms), in first-seen order
    members: List[GroupMember]
    shape_members: List[ShapeMember]
    blocked: Dict[int, str]                 # unit -> reason
    inexact: Dict[int, str]                 # unit -> reason
    constraints: List[List[np.ndarray]]     # lists of blocks of units, equal kept count per block
    constraint_reasons: List[str] = field(default_factory=list)
    kind: str = "channels"                  # channels | heads | hidden (inexact residual width)

    @property
    def exact(self) -> bool:
        return not self.inexact

    @property
    def prunable(self) -> bool:
        return len(self.blocked) < len(self.units) and any(m.member.role in ("out", "in") for m in self.members)

    def describe_block(self) -> Optional[str]:
        if not self.blocked:
            return None
        reasons = sorted(set(self.blocked.values()))
        return reasons[0] + (f" (+{len(reasons) - 1} more)" if len(reasons) > 1 else "")


def _roots(parent: List[int]) -> np.ndarray:
    """Root of every atom, vectorised (pointer jumping)."""
    p = np.asarray(parent, dtype=np.int64)
    while True:
        q = p[p]
        if np.array_equal(q, p):
            return p
        p = q


def groups(an: Analysis) -> Tuple[List[Group], np.ndarray]:
    """Return (groups, root_of_atom)."""
    n = len(an.uf.parent)
    root = _roots(an.uf.parent)
    origin = np.asarray(an.atom_origin, dtype=np.int64)

    # groups: connected components of origins linked through shared units (label propagation
    # over the bipartite unit-origin graph, vectorised)
    n_orig = len(an.origins)
    gkey_arr = np.full(n, -1, dtype=np.int64)
    if n:
        pair = np.unique(root * n_orig + origin)
        pr, po = pair // n_orig, pair % n_orig
        label = np.arange(n_orig, dtype=np.int64)
        ur, inv = np.unique(pr, return_inverse=True)
        while True:
            per_root = np.full(len(ur), np.iinfo(np.int64).max, dtype=np.int64)
            np.minimum.at(per_root, inv, label[po])
            new = label.copy()
            np.minimum.at(new, po, per_root[inv])
            if np.array_equal(new, label):
                break
            label = new
        gkey_arr = label[origin[root]]  # key of an atom's unit: its root's origin component
    gkey = _KeyView(gkey_arr)

    blocked: Dict[int, str] = {}
    for atoms, reason in an.blocks:
        for r in np.unique(root[atoms.ravel()]).tolist():
            blocked.setdefault(r, reason)
    inexact: Dict[int, str] = {}
    for atoms, reason in an.inexact:
        for r in np.unique(root[atoms.ravel()]).tolist():
            inexact.setdefault(r, reason)

    by_key: Dict[int, Group] = {}
    order: List[int] = []

    def grp(k: int) -> Group:
        if k not in by_key:
            by_key[k] = Group(len(order), an.origins[k].split(":")[0], np.zeros(0, np.int64), [], [], {}, {}, [])
            order.append(k)
        return by_key[k]

    units_of: Dict[int, List[np.ndarray]] = {}
    for m in an.members:
        rr = root[m.atoms]
        keys = gkey_arr[rr]
        k0 = int(keys[0]) if len(keys) else -1
        if len(keys) and (keys == k0).all():
            parts = [(k0, np.arange(len(rr)))]
        else:
            parts = [(k, np.nonzero(keys == k)[0]) for k in dict.fromkeys(keys.tolist())]
        for k, sel in parts:
            g = by_key.get(k) or grp(k)
            g.members.append(GroupMember(m, sel, rr[sel], len(sel) == len(rr)))
            units_of.setdefault(k, []).append(rr[sel])
    for sm in an.shape_members:
        rr = root[sm.atoms]
        for k in dict.fromkeys(gkey_arr[rr].tolist()):
            if k in by_key:
                by_key[k].shape_members.append(sm)
    for k in order:
        g = by_key[k]
        allu = np.concatenate(units_of[k])
        if len(allu) < 4096:
            g.units = np.fromiter(dict.fromkeys(allu.tolist()), dtype=np.int64)
        else:
            _, first = np.unique(allu, return_index=True)
            g.units = allu[np.sort(first)]  # distinct units in first-seen order
        g.blocked = {u: blocked[u] for u in g.units.tolist() if u in blocked}
        g.inexact = {u: inexact[u] for u in g.units.tolist() if u in inexact}
    for c in an.constraints:
        rblocks = [np.unique(root[b]) for b in c.blocks]
        k = gkey[int(rblocks[0][0])]
        if k in by_key and all(gkey[int(r)] == k for b in rblocks for r in b.tolist()):
            by_key[k].constraints.append(rblocks)
            by_key[k].constraint_reasons.append(c.reason)
        else:
            # a constraint across groups: keep it simple and safe, block its units
            for b in rblocks:
                for r in b.tolist():
                    kk = gkey[int(r)]
                    if kk in by_key:
                        by_key[kk].blocked.setdefault(r, f"{c.reason} spans several groups")
    heads = set()
    for atoms in an.head_atoms:
        heads.update(np.unique(root[atoms]).tolist())
    result = []
    for k in order:
        g = by_key[k]
        if not any(m.member.role in ("out", "in") for m in g.members):
            continue  # only parameters (an expanded constant never coupled to a layer)
        if any(int(u) in heads for u in g.units.tolist()):
            g.kind = "heads"
        elif g.inexact:
            g.kind = "hidden"
        g.id = len(result)
        result.append(g)
    return result, root


@dataclass
class ConsumerInput:
    """An ``in`` member's consumer: the node that reads the member weight and the activation
    tensor whose channel axis ``axis`` lines up with the member's positions."""
    member: GroupMember
    node: int               # index of the consumer node in graph.nodes
    tensor: str             # the activation the consumer multiplies with the weight
    axis: int               # channel axis of ``tensor`` (non-negative)
    op: str                 # the consumer's op type (Conv, Gemm, MatMul ...)

    def kind(self, graph: Graph) -> LayerKind:
        """The consumer's layer traits (``layers.layer_of``)."""
        return layer_of(graph.nodes[self.node])


def consumer_inputs(group: Group, graph: Graph) -> List[ConsumerInput]:
    """For every ``in`` member of ``group``: the consumer node(s) and the activation whose
    positions along ``axis`` are the member's positions (``LayerKind.reduction_axis``: Conv:
    axis 1 of X; MatMul with a constant right operand: the last axis of A; Gemm: A's reduction
    axis). Members read by anything else (a constant left operand, an op without layer
    traits) are left out."""
    out: List[ConsumerInput] = []
    for gm in group.members:
        if gm.member.role != "in":
            continue
        for i, k in graph.consumers.get(gm.member.tensor, []):
            node = graph.nodes[i]
            kind = layer_of(node)
            if kind is None or kind.reduction_axis is None or k != kind.weight or len(node.input) <= kind.x:
                continue
            axis = kind.reduction_axis(node, graph)
            if axis is None:
                continue
            out.append(ConsumerInput(gm, i, node.input[kind.x], axis, node.op_type))
    return out


class _CallableModule(types.ModuleType):
    def __call__(self, model, **kw):
        """``graphprune.analyze(model, *, allow_inexact=False, static_batch=None, hints=True)``:
        see :func:`graphprune.api.analyze`."""
        from ..api import analyze as public_analyze
        return public_analyze(model, **kw)


sys.modules[__name__].__class__ = _CallableModule
