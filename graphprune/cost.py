"""A fast cost model for the planner: MACs and parameters of the model a plan would produce,
without rewriting it.

Every MAC-bearing node (Conv, ConvTranspose, Gemm, MatMul, as ``count.count_macs_params``
counts them at batch 1) costs its dense MACs times the kept fraction of every channel axis its
count depends on: the channel axes of its output (output channels, attention heads, ...) and
the reduction axis of its input (input channels); an axis whose channels are the output's
(depthwise conv) counts once. Every member tensor keeps the product of the kept fractions of
its member axes. The estimate equals the rewritten model's count whenever the kept fractions
are exact (every position of an axis belongs to units), which the tests check against
``count.count_macs_params`` after ``rewrite``.
"""

from __future__ import annotations

from typing import Dict, Iterable, List, Mapping, Optional, Tuple

import numpy as np
import onnx

from . import count
from .layers import layer_of


def _kept_total(fixed, items, dead: np.ndarray) -> float:
    """``fixed`` plus, for every (n, factors) in ``items``, n times the product over its factors (arrays of
    atoms) of the fraction of those atoms still alive."""
    total = float(fixed)
    for n, factors in items:
        f = 1.0
        for r in factors:
            f *= 1.0 - dead[r].mean()
        total += n * f
    return total


class CostModel:
    def __init__(self, model: onnx.ModelProto, an, root: np.ndarray, feed: Optional[Mapping[str, np.ndarray]] = None):
        g = an.graph
        self.n_atoms = len(root)
        self.root = root
        macs = count.macs_by_node(model, feed)
        self.macs_before, self.params_before = count.count_macs_params(model, feed)
        self.nodes: List[Tuple[int, List[np.ndarray]]] = []
        self.fixed_macs = 0
        for out, m in macs.items():
            i = g.producer.get(out)
            factors: List[np.ndarray] = []
            if i is not None:
                node = g.nodes[i]
                for ax, atoms in sorted(an.descs.get(out, {}).items()):
                    factors.append(root[atoms])
                kind = layer_of(node)
                x = node.input[kind.x] if kind is not None and len(node.input) > kind.x else ""
                kax = kind.reduction_axis(node, g) if x and kind.reduction_axis is not None else None
                if x and kax is not None:
                    atoms = an.descs.get(x, {}).get(kax)
                    if atoms is not None:
                        r = root[atoms]
                        if not any(_same_units(r, f) for f in factors):
                            factors.append(r)
            if factors:
                self.nodes.append((int(m), factors))
            else:
                self.fixed_macs += int(m)
        by_tensor: Dict[str, List] = {}
        for mem in an.members:
            by_tensor.setdefault(mem.tensor, []).append(mem)
        self.tensors: List[Tuple[int, List[np.ndarray]]] = []
        member_params = 0
        for name, mems in by_tensor.items():
            v = g.const(name)
            if v is None or v.dtype.kind not in "fiu" or v.dtype in (np.int32, np.int64):
                continue
            factors = []
            for mem in mems:
                r = root[mem.atoms]
                if not any(_same_units(r, f) for f in factors):
                    factors.append(r)
            self.tensors.append((int(v.size), factors))
            member_params += int(v.size)
        self.fixed_params = int(self.params_before) - member_params

    def _dead(self, removed: Iterable[int]) -> np.ndarray:
        dead = np.zeros(self.n_atoms, bool)
        rem = np.fromiter((int(u) for u in removed), dtype=np.int64)
        if rem.size:
            dead[rem] = True
        return dead

    def cost(self, removed: Iterable[int]) -> Tuple[float, float]:
        """(MACs, params) after removing the units ``removed``."""
        dead = self._dead(removed)
        return _kept_total(self.fixed_macs, self.nodes, dead), _kept_total(self.fixed_params, self.tensors, dead)

    def fraction(self, removed: Iterable[int], what: str = "macs") -> float:
        macs, params = self.cost(removed)
        if what == "macs":
            return macs / max(self.macs_before, 1)
        return params / max(self.params_before, 1)


def _same_units(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and np.array_equal(np.unique(a), np.unique(b))
