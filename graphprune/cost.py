"""A fast cost model for the planner: MACs and parameters of the model a plan would produce,
without rewriting it.

Every MAC-bearing node (Conv, ConvTranspose, Gemm, MatMul, as ``bench.count_macs_params``
counts them at batch 1) costs its dense MACs times the kept fraction of every channel axis its
count depends on: the channel axes of its output (output channels, attention heads, ...) and
the reduction axis of its input (input channels); an axis whose channels are the output's
(depthwise conv) counts once. Every member tensor keeps the product of the kept fractions of
its member axes. The estimate equals the rewritten model's count whenever the kept fractions
are exact (every position of an axis belongs to units), which the tests check against
``bench.count_macs_params`` after ``rewrite``.
"""

from __future__ import annotations

from typing import Dict, Iterable, List, Mapping, Optional, Tuple

import numpy as np
import onnx

from . import bench


class CostModel:
    def __init__(self, model: onnx.ModelProto, an, root: np.ndarray, feed: Optional[Mapping[str, np.ndarray]] = None):
        g = an.graph
        self.n_atoms = len(root)
        self.root = root
        macs = bench.macs_by_node(model, feed)
        self.macs_before, self.params_before = bench.count_macs_params(model, feed)
        self.nodes: List[Tuple[int, List[np.ndarray]]] = []
        self.fixed_macs = 0
        for out, m in macs.items():
            i = g.producer.get(out)
            factors: List[np.ndarray] = []
            if i is not None:
                node = g.nodes[i]
                for ax, atoms in sorted(an.descs.get(out, {}).items()):
                    factors.append(root[atoms])
                x = node.input[0] if node.input else ""
                kax = self._reduction_axis(node, g)
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

    @staticmethod
    def _reduction_axis(node: onnx.NodeProto, g) -> Optional[int]:
        op = node.op_type
        if op in ("Conv", "ConvTranspose"):
            return 1
        if op == "Gemm":
            ta = next((a.i for a in node.attribute if a.name == "transA"), 0)
            return 0 if ta else 1
        if op == "MatMul":
            s = g.shape(node.input[0])
            return None if s is None else len(s) - 1
        return None

    def _dead(self, removed: Iterable[int]) -> np.ndarray:
        dead = np.zeros(self.n_atoms, bool)
        rem = np.fromiter((int(u) for u in removed), dtype=np.int64)
        if rem.size:
            dead[rem] = True
        return dead

    def cost(self, removed: Iterable[int]) -> Tuple[float, float]:
        """(MACs, params) after removing the units ``removed``."""
        dead = self._dead(removed)
        macs = float(self.fixed_macs)
        for m, factors in self.nodes:
            f = 1.0
            for r in factors:
                f *= 1.0 - dead[r].mean()
            macs += m * f
        params = float(self.fixed_params)
        for n, factors in self.tensors:
            f = 1.0
            for r in factors:
                f *= 1.0 - dead[r].mean()
            params += n * f
        return macs, params

    def fraction(self, removed: Iterable[int], what: str = "macs") -> float:
        macs, params = self.cost(removed)
        if what == "macs":
            return macs / max(self.macs_before, 1)
        return params / max(self.params_before, 1)


def _same_units(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and np.array_equal(np.unique(a), np.unique(b))
