"""Step 3: importance of every unit of every group.

A criterion maps (group, graph) to one score per unit; it sees every member of the group, so
the weights of every coupled layer count, not just the first one. Criteria are pluggable:
add a function to ``CRITERIA``.
"""

from __future__ import annotations

from typing import Callable, Dict, List

import numpy as np

from .analyze import Group, GroupMember
from .graph import Graph

SCORED_ROLES = ("out", "in", "param")


def position_values(W: np.ndarray, gm: GroupMember, p: float) -> np.ndarray:
    """sum(|w|^p) over each covered position of the member's axis."""
    m = gm.member
    W = np.asarray(W, dtype=np.float64)
    if m.groups > 1:
        # grouped-conv input axis: position q of the full Cin space is column q % (Cin/g) of
        # the rows of group q // (Cin/g)
        cout, cin_g = W.shape[0], W.shape[1]
        rows_g = cout // m.groups
        per = np.abs(W) ** p
        per = per.reshape(m.groups, rows_g, cin_g, -1).sum(axis=(1, 3)).reshape(-1)
        return per[gm.positions]
    moved = np.moveaxis(np.abs(W) ** p, m.axis, 0).reshape(W.shape[m.axis], -1).sum(axis=1)
    return moved[gm.positions]


def unit_sums(values: np.ndarray, units: np.ndarray, unit_index: Dict[int, int], n: int) -> np.ndarray:
    out = np.zeros(n)
    np.add.at(out, np.array([unit_index[int(u)] for u in units], dtype=np.int64), values)
    return out


def magnitude(group: Group, graph: Graph, p: float = 2.0, reduce: str = "mean",
              normalize: bool = True, **_) -> np.ndarray:
    n = len(group.units)
    index = {int(u): i for i, u in enumerate(group.units)}
    total = np.zeros(n)
    count = np.zeros(n)
    for gm in group.members:
        if gm.member.role not in SCORED_ROLES:
            continue
        W = graph.const(gm.member.tensor)
        if W is None or W.dtype.kind != "f":
            continue
        s = unit_sums(position_values(W, gm, p), gm.units, index, n) ** (1.0 / p)
        covered = unit_sums(np.ones(len(gm.units)), gm.units, index, n) > 0
        if normalize:
            mean = s[covered].mean() if covered.any() else 0.0
            if mean > 0:
                s = s / mean
        if reduce == "max":
            total = np.maximum(total, s)
        else:
            total += s
        count += covered
    if reduce == "mean":
        total = total / np.maximum(count, 1)
    return total


def random_scores(group: Group, graph: Graph, seed: int = 0, **_) -> np.ndarray:
    rng = np.random.default_rng([seed, group.id])
    return rng.random(len(group.units))


CRITERIA: Dict[str, Callable[..., np.ndarray]] = {
    "l2": lambda g, graph, **kw: magnitude(g, graph, p=2.0, **kw),
    "l1": lambda g, graph, **kw: magnitude(g, graph, p=1.0, **kw),
    "random": random_scores,
}


def score(groups: List[Group], graph: Graph, criterion: str = "l2", reduce: str = "mean",
          seed: int = 0) -> Dict[int, np.ndarray]:
    fn = CRITERIA[criterion]
    return {g.id: fn(g, graph, reduce=reduce, seed=seed) for g in groups if g.prunable}
