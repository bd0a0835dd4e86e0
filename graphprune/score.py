"""The score step: importance of every unit of every group.

A criterion maps (group, graph) to one score per unit; it sees every member of the group, so
the weights of every coupled layer count, not just the first one. Criteria are pluggable:
add a function to ``CRITERIA``, or pass any :class:`Criterion` (a callable) where a criterion
name is accepted (``graphprune.prune(model, criterion=my_fn)``).

Data-free: ``l2``, ``l1`` (weight norms of every member), ``bn-scale`` (|gamma| of the
BatchNorms), ``fpgm`` (distance of a unit's filters from the others: the geometric-median
criterion), ``lamp`` (LAMP: a unit's squared norm over the squared norms of the units at least as
large; scale-free across layers), ``random``, ``obspa`` (``obs`` on synthetic inputs).
With calibration data (the statistics of every consumer's input, see calib.py): ``activation``
(Wanda: |W| summed over rows times the input channel's L2 norm), ``fluctuation`` (FLAP: input
variance times the squared weight column norm), ``obs`` (Optimal Brain Surgeon: the least output
error of removing the unit when the consumer's other columns are refit, with the layer Hessian
X·Xᵀ), ``taylor`` (the squared first-order change of the model outputs per unit mask,
estimated in onnxruntime by finite differences).

A criterion's attribute ``needs`` says what the pipeline must provide: ``"calib"`` (statistics
of calibration data in ``calib=``), ``"synthetic"`` (the same on synthetic inputs), ``"gram"``
(Gram matrices too), ``"samples"`` (the model and samples, for ``prepare``). A criterion with a
``prepare(groups, graph, **kw)`` attribute computes everything at once; its result reaches the
criterion as ``prepared=``.
"""

from __future__ import annotations

from typing import Callable, Dict, List, Optional, Protocol, Sequence, Tuple, Union, runtime_checkable

import numpy as np
from threadpoolctl import threadpool_limits

from .analyze import ConsumerInput, Group, GroupMember, consumer_inputs
from .graph import Graph

SCORED_ROLES = ("out", "in", "param")


def _axis_power_sums(W: np.ndarray, axis: int, p: float) -> np.ndarray:
    """sum(|w|^p) over every axis but ``axis``, in one pass, without float64 copies."""
    letters = "abcdefghijklmnop"[:W.ndim]
    if p == 2.0:
        return np.einsum(f"{letters},{letters}->{letters[axis]}", W, W).astype(np.float64)
    A = np.abs(W) if p == 1.0 else np.abs(W) ** p
    return A.sum(axis=tuple(i for i in range(W.ndim) if i != axis), dtype=np.float64)


def position_values(W: np.ndarray, gm: GroupMember, p: float) -> np.ndarray:
    """sum(|w|^p) over each covered position of the member's axis."""
    m = gm.member
    if W.dtype not in (np.float32, np.float64):
        W = W.astype(np.float32)
    if m.groups > 1:
        # grouped-conv input axis: position q of the full Cin space is column q % (Cin/g) of
        # the rows of group q // (Cin/g)
        cout, cin_g = W.shape[0], W.shape[1]
        rows_g = cout // m.groups
        per = np.abs(W.astype(np.float64)) ** p
        per = per.reshape(m.groups, rows_g, cin_g, -1).sum(axis=(1, 3)).reshape(-1)
        return per[gm.positions]
    return _axis_power_sums(W, m.axis, p)[gm.positions]


class UnitIndex(dict):
    """unit id -> position in group.units, with a vectorised lookup for arrays of units."""

    def __init__(self, units: np.ndarray):
        super().__init__((int(u), i) for i, u in enumerate(units.tolist()))
        self._order = np.argsort(units, kind="stable")
        self._sorted = np.asarray(units)[self._order]

    def positions(self, units: np.ndarray) -> np.ndarray:
        return self._order[np.searchsorted(self._sorted, units)]


def unit_sums(values: np.ndarray, units: np.ndarray, unit_index: Dict[int, int], n: int) -> np.ndarray:
    out = np.zeros(n)
    if isinstance(unit_index, UnitIndex):
        idx = unit_index.positions(np.asarray(units, dtype=np.int64))
    else:
        idx = np.array([unit_index[int(u)] for u in units], dtype=np.int64)
    np.add.at(out, idx, values)
    return out


def _normalized(s: np.ndarray, covered: np.ndarray, how) -> np.ndarray:
    if how is True:
        how = "mean"
    if not how or how == "none" or not covered.any():
        return s
    v = s[covered]
    if how == "mean":
        d = v.mean()
    elif how == "max":
        d = v.max()
    elif how == "std":
        sd = v.std()
        return (s - v.mean()) / sd if sd > 0 else s - v.mean()
    else:
        raise ValueError(f"unknown normalisation {how!r}")
    return s / d if d > 0 else s


def combine(parts: Sequence[Tuple[np.ndarray, np.ndarray]], n: int, reduce: str = "mean",
            normalize="mean") -> np.ndarray:
    """Reduce per-member unit scores (score vector, covered mask) into one score per unit."""
    if reduce not in ("mean", "sum", "max"):
        raise ValueError(f"unknown reduction {reduce!r}")
    total = np.full(n, -np.inf) if reduce == "max" else np.zeros(n)
    count = np.zeros(n)
    for s, covered in parts:
        s = _normalized(s, covered, normalize)
        if reduce == "max":
            total = np.where(covered, np.maximum(total, s), total)
        else:
            total = total + np.where(covered, s, 0.0)
        count += covered
    if reduce == "max":
        total = np.where(count > 0, total, 0.0)
    if reduce == "mean":
        total = total / np.maximum(count, 1)
    return total


def _index(group: Group) -> Dict[int, int]:
    return UnitIndex(group.units)


def _covered(gm: GroupMember, index: Dict[int, int], n: int) -> np.ndarray:
    return unit_sums(np.ones(len(gm.units)), gm.units, index, n) > 0


def _float_weights(group: Group, graph: Graph, roles: Sequence[str]):
    """(member, its constant) for every member of the group in one of ``roles`` whose tensor is a
    floating-point constant."""
    for gm in group.members:
        if gm.member.role not in roles:
            continue
        W = graph.const(gm.member.tensor)
        if W is None or W.dtype.kind != "f":
            continue
        yield gm, W


def _combined_or_l2(parts: Sequence[Tuple[np.ndarray, np.ndarray]], group: Group, graph: Graph, reduce: str,
                    normalize) -> np.ndarray:
    """combine(parts); the l2 magnitude when no member could be scored (no parts)."""
    if not parts:
        return magnitude(group, graph, p=2.0, reduce=reduce, normalize=normalize)
    return combine(parts, len(group.units), reduce, normalize)


def magnitude(group: Group, graph: Graph, p: float = 2.0, reduce: str = "mean",
              normalize="mean", **_) -> np.ndarray:
    n = len(group.units)
    index = _index(group)
    parts = []
    for gm, W in _float_weights(group, graph, SCORED_ROLES):
        s = unit_sums(position_values(W, gm, p), gm.units, index, n) ** (1.0 / p)
        parts.append((s, _covered(gm, index, n)))
    return combine(parts, n, reduce, normalize)


def _node_of(graph: Graph, label: str) -> Optional[int]:
    idx = getattr(graph, "_graphprune_label_index", None)
    if idx is None:
        idx = {lab: i for i, lab in enumerate(graph.labels)}
        graph._graphprune_label_index = idx
    return idx.get(label)


def bn_scale(group: Group, graph: Graph, reduce: str = "mean", normalize="mean", **kw) -> np.ndarray:
    """|gamma| of every BatchNormalization scale in the group (network slimming); groups
    without one fall back to l2."""
    n = len(group.units)
    index = _index(group)
    parts = []
    for gm in group.members:
        if gm.member.role != "param":
            continue
        i = _node_of(graph, gm.member.node)
        if i is None:
            continue
        node = graph.nodes[i]
        if node.op_type != "BatchNormalization" or len(node.input) < 2 or node.input[1] != gm.member.tensor:
            continue
        W = graph.const(gm.member.tensor)
        if W is None:
            continue
        s = unit_sums(np.abs(np.asarray(W, np.float64).reshape(-1))[gm.positions], gm.units, index, n)
        parts.append((s, _covered(gm, index, n)))
    return _combined_or_l2(parts, group, graph, reduce, normalize)


def _unit_rows(W: np.ndarray, gm: GroupMember, index: Dict[int, int], n: int) -> Optional[np.ndarray]:
    """[n, d]: the slices of every unit along the member axis, flattened and concatenated."""
    m = gm.member
    if m.groups > 1:
        return None
    moved = np.moveaxis(np.asarray(W, np.float64), m.axis, 0)
    moved = moved.reshape(moved.shape[0], -1)[gm.positions]
    ui = np.array([index[int(u)] for u in gm.units])
    counts = np.bincount(ui, minlength=n)
    if (counts == 0).any() or len(set(counts.tolist())) != 1:
        return None
    order = np.argsort(ui, kind="stable")
    return moved[order].reshape(n, -1)


def fpgm(group: Group, graph: Graph, reduce: str = "mean", normalize="mean", **_) -> np.ndarray:
    """Sum of distances from a unit's filters to every other unit's (FPGM): units near the
    geometric median are replaceable by the others and go first."""
    n = len(group.units)
    index = _index(group)
    parts = []
    for gm, W in _float_weights(group, graph, ("out",)):
        F = _unit_rows(W, gm, index, n)
        if F is None:
            continue
        sq = np.einsum("ij,ij->i", F, F)
        d2 = np.maximum(sq[:, None] + sq[None, :] - 2 * F @ F.T, 0.0)
        parts.append((np.sqrt(d2).sum(1), np.ones(n, bool)))
    return _combined_or_l2(parts, group, graph, reduce, normalize)


def lamp(group: Group, graph: Graph, reduce: str = "mean", **_) -> np.ndarray:
    """LAMP on the group's squared l2 scores: s_u^2 / sum of s_v^2 over units with s_v >= s_u.
    Scale-free, so it ranks across layers without further normalisation."""
    s = magnitude(group, graph, p=2.0, reduce=reduce, normalize="mean") ** 2
    order = np.argsort(s, kind="stable")
    tail = np.cumsum(s[order][::-1])[::-1]
    out = np.empty_like(s)
    out[order] = s[order] / np.maximum(tail, 1e-300)
    return out


def random_scores(group: Group, graph: Graph, seed: int = 0, **_) -> np.ndarray:
    rng = np.random.default_rng([seed, group.id])
    return rng.random(len(group.units))


# ----------------------------------------------------------------------------- data-aware


def weight_matrix(W: np.ndarray, ci: ConsumerInput, graph: Graph) -> Optional[np.ndarray]:
    """The consumer weight as [outputs, inputs] with input columns in the order of the
    activation's channels (Conv: channel-major im2col order, like W.reshape(Cout, -1)):
    ``LayerKind.to_matrix`` of the consumer, None when its layer has no such view."""
    kind = ci.kind(graph)
    if kind is None or kind.to_matrix is None:
        return None
    M = kind.to_matrix(W, graph.nodes[ci.node])
    return None if M is None else np.asarray(M, np.float64)


def _stats_parts(group: Group, graph: Graph, calib, fn) -> List[Tuple[np.ndarray, np.ndarray]]:
    n = len(group.units)
    index = _index(group)
    parts = []
    for ci in consumer_inputs(group, graph):
        st = calib.get_stats(ci.tensor, ci.axis) if calib is not None else None
        W = graph.const(ci.member.member.tensor)
        if st is None or W is None or W.dtype.kind != "f":
            continue
        gm = ci.member
        v = fn(W, gm, st)
        parts.append((unit_sums(v, gm.units, index, n), _covered(gm, index, n)))
    return parts


def _need_calib(name: str, calib) -> None:
    if calib is None:
        from .errors import UsageError
        raise UsageError(f"criterion {name!r} needs calibration data: pass --calib FILE.npz or --calib-dir DIR "
                         f"(Options(calib=...) in Python)")


def activation(group: Group, graph: Graph, reduce: str = "mean", normalize="mean", calib=None, **_) -> np.ndarray:
    """Wanda: sum over the consumer's rows of |W_ij| times the L2 norm of input channel j."""
    _need_calib("activation", calib)
    parts = _stats_parts(group, graph, calib,
                         lambda W, gm, st: position_values(W, gm, 1.0) * st.norm[gm.positions])
    return _combined_or_l2(parts, group, graph, reduce, normalize)


def fluctuation(group: Group, graph: Graph, reduce: str = "mean", normalize="mean", calib=None, **_) -> np.ndarray:
    """FLAP: variance of input channel j times the squared norm of weight column j: how much of
    the consumer's output varies with the channel (its mean can be folded into the bias)."""
    _need_calib("fluctuation", calib)
    parts = _stats_parts(group, graph, calib,
                         lambda W, gm, st: position_values(W, gm, 2.0) * st.var[gm.positions])
    return _combined_or_l2(parts, group, graph, reduce, normalize)


DAMP = 1e-2


def damped_inverse(H: np.ndarray, damp: Optional[float] = None) -> np.ndarray:
    damp = DAMP if damp is None else damp
    d = np.diag(H)
    lam = damp * (float(d.mean()) if d.size and d.mean() > 0 else 1.0)
    return np.linalg.inv(H + lam * np.eye(H.shape[0]))


def obs_errors(Wm: np.ndarray, Hinv: np.ndarray, cols_of_unit: Sequence[np.ndarray]) -> np.ndarray:
    """OBS: output error of removing column set Q with the others refit optimally,
    tr(W_Q (Hinv_QQ)^-1 W_Q^T), for every unit's column set."""
    out = np.zeros(len(cols_of_unit))
    sizes = {len(c) for c in cols_of_unit}
    if sizes == {1}:
        q = np.array([c[0] for c in cols_of_unit])
        return (Wm[:, q] ** 2).sum(0) / np.maximum(np.diag(Hinv)[q], 1e-300)
    for i, q in enumerate(cols_of_unit):
        if len(q) == 0:
            continue
        Wq = Wm[:, q]
        try:
            out[i] = float(np.sum((Wq @ np.linalg.inv(Hinv[np.ix_(q, q)])) * Wq))
        except np.linalg.LinAlgError:
            out[i] = float(np.sum(Wq ** 2 / np.maximum(np.diag(Hinv)[q], 1e-300)))
    return out


GREEDY_FLOPS = 3e10   # per group: above this the one-shot OBS errors are used


def obs_greedy(layers: Sequence[Tuple[np.ndarray, np.ndarray]], cols_of_unit: Sequence[Sequence[np.ndarray]],
               steps: int, trace: Optional[list] = None) -> np.ndarray:
    """Sequential OBS over the consumers of one group, jointly: repeatedly remove the unit whose
    removal (with every consumer's remaining columns refit) adds the least output error, then
    update each consumer's weights and inverse Hessian as OBS prescribes, for ``steps`` units.
    A unit's score is the error its removal added (made non-decreasing along the removal
    order, so a threshold removes a prefix of that order); units never removed score above
    all others. ``layers``: (W as [outputs, columns], H^-1) per consumer; ``cols_of_unit[k][u]``:
    unit u's columns in consumer k (all units the same count per consumer). ``trace`` collects
    (unit, added error) in removal order.

    The updates are lazily batched (``_LazyLayer``, ``_LazyBlockLayer``): the same order and
    errors as one full rank-q update of W and H⁻¹ per removal, up to float rounding, about 13×
    faster on MiniLM's FFN groups."""
    cols = [np.stack([np.asarray(c, np.int64) for c in cu]) for cu in cols_of_unit]      # [units, q]
    with threadpool_limits(1, user_api="blas"):     # many small BLAS calls: threads only contend
        return _obs_greedy_columns(layers, cols, steps, trace)


OBS_BLOCK = 64   # removals accumulated before they are folded into W and H^-1 (one gemm each)


class _LazyLayer:
    """One consumer of the one-column-per-unit greedy OBS, with lazily batched updates.

    The current weights and inverse Hessian are the folded ``W0``/``Hi0`` minus the removals of
    this block as low-rank factors, ``W = W0 - A Vᵀ`` and ``H⁻¹ = Hi0 - V Vᵀ`` (removing column p
    with h = H⁻¹[:, p] appends v = h/√h_p and a = W[:, p]/√h_p). The greedy choice only reads the
    alive columns' squared norms ``N`` and ``diag(H⁻¹)`` ``D``; they are kept current per step
    with ``G = W0ᵀW0`` and ``P = W0ᵀA`` in O(d · block) (no pass over W or H⁻¹ per removal, and
    small enough products that numpy's own loops, not threaded BLAS, do them: threaded gemv per
    step is several times slower on a busy machine). Every ``OBS_BLOCK`` removals the factors are
    folded in (gemms), the removed columns dropped (the matrices shrink as units go) and ``N``,
    ``D`` recomputed exactly. Rows of ``V``, ``A``, ``P`` below are the factors' columns."""

    def __init__(self, W: np.ndarray, Hi: np.ndarray, col_of_unit: np.ndarray, block: int):
        d = Hi.shape[0]
        self.W0 = np.ascontiguousarray(W, dtype=np.float64).copy()
        self.Hi0 = np.ascontiguousarray(Hi, dtype=np.float64).copy()
        self.Hi0 = (self.Hi0 + self.Hi0.T) / 2           # rows are read as columns
        self.G = self.W0.T @ self.W0
        self.unit_col = np.asarray(col_of_unit, np.int64).copy()          # unit -> local column
        self.dead = np.zeros(d, bool)
        self.block = block
        self._alloc(d)
        self.refresh()

    def _alloc(self, d: int):
        self.V = np.zeros((self.block, d))
        self.A = np.zeros((self.block, self.W0.shape[0]))
        self.P = np.zeros((self.block, d))
        self.t = 0

    def refresh(self):
        self.D = np.diag(self.Hi0)[self.unit_col].copy()
        self.N = np.diag(self.G)[self.unit_col].copy()

    def errors(self) -> np.ndarray:
        return self.N / np.maximum(self.D, 1e-300)

    def remove(self, u: int, alive: np.ndarray):
        p, t = int(self.unit_col[u]), self.t
        V, A, P = self.V[:t], self.A[:t], self.P[:t]
        vp = V[:, p].copy()
        h = self.Hi0[p] - np.einsum("td,t->d", V, vp)
        hpp = float(h[p])
        self.dead[p] = True
        if not hpp > 0.0:           # singular: the dense path's pinv of [0] changes nothing
            return
        s = 1.0 / np.sqrt(hpp)
        v = h * s
        a = (self.W0[:, p] - np.einsum("to,t->o", A, vp)) * s
        w0a = (self.G[p] - np.einsum("td,t->d", P, vp)) * s             # W0ᵀ a
        aw = w0a - np.einsum("td,t->d", V, np.einsum("to,o->t", A, a))   # W ᵀ a, current W
        L = self.unit_col[alive]
        vl = v[L]
        self.D[alive] -= vl * vl
        self.N[alive] += vl * (vl * float(a @ a) - 2.0 * aw[L])
        self.V[t], self.A[t], self.P[t] = v, a, w0a
        self.t += 1
        if self.t == self.block:
            self.fold()

    def fold(self):
        t = self.t
        keep = np.nonzero(~self.dead)[0]
        V, A, P = self.V[:t, keep], self.A[:t], self.P[:t, keep]
        Hi, G = self.Hi0[np.ix_(keep, keep)], self.G[np.ix_(keep, keep)]
        if t:       # W = W0 - AᵀV: WᵀW = G - VᵀP - PᵀV + Vᵀ(AAᵀ)V = G - VᵀR - RᵀV, R = P - (AAᵀ)V/2
            Hi -= V.T @ V
            VR = V.T @ (P - 0.5 * ((A @ A.T) @ V))
            G -= VR
            G -= VR.T
        self.W0 = np.ascontiguousarray(self.W0[:, keep] - A.T @ V)
        self.Hi0, self.G = np.ascontiguousarray(Hi), np.ascontiguousarray(G)
        new = np.zeros(self.dead.size, np.int64)        # dead units map to 0: never read again
        new[keep] = np.arange(keep.size)
        self.unit_col = new[self.unit_col]
        self.dead = np.zeros(keep.size, bool)
        self._alloc(keep.size)
        self.refresh()


class _LazyBlockLayer(_LazyLayer):
    """``_LazyLayer`` for units of q > 1 columns each (heads, conv channels): a removal appends
    r ≤ q factor rows (v = F ᵀH⁻¹[Q, :] with F Fᵀ the pseudo-inverse of H⁻¹_QQ, from its
    eigendecomposition, as the dense update's inverse/pinv), and the greedy choice reads the
    alive units' q×q blocks of H⁻¹ and of WᵀW."""

    def __init__(self, W: np.ndarray, Hi: np.ndarray, cols_of_unit: np.ndarray, block: int):
        self.q = cols_of_unit.shape[1]
        self.gone = np.zeros(len(cols_of_unit), bool)
        super().__init__(W, Hi, cols_of_unit, block * self.q)

    def refresh(self):
        C = self.unit_col
        self.D = self.Hi0[C[:, :, None], C[:, None, :]]                 # [n, q, q]
        self.D[self.gone] = np.eye(self.q)                              # never read; kept invertible
        self.N = self.G[C[:, :, None], C[:, None, :]]

    def errors(self) -> np.ndarray:
        try:
            inv = np.linalg.inv(self.D)
        except np.linalg.LinAlgError:
            inv = np.linalg.pinv(self.D)
        return np.einsum("mqp,mqp->m", inv, self.N)

    def remove(self, u: int, alive: np.ndarray):
        Q, t = self.unit_col[u], self.t
        V, A, P = self.V[:t], self.A[:t], self.P[:t]
        VQ = V[:, Q]                                                    # [t, q]
        h = self.Hi0[Q] - VQ.T @ V                                      # H⁻¹[Q, :], [q, d]
        hqq = (h[:, Q] + h[:, Q].T) / 2
        e, U = np.linalg.eigh(hqq)
        ok = e > max(float(e.max(initial=0.0)), 0.0) * 1e-15
        self.dead[Q] = True
        self.gone[u] = True
        self.D[u] = np.eye(self.q)
        if not ok.any():
            return
        F = U[:, ok] / np.sqrt(e[ok])                                  # [q, r]
        v = F.T @ h                                                     # [r, d]
        wq = self.W0[:, Q] - A.T @ VQ                                   # W[:, Q], [out, q]
        a = F.T @ wq.T                                                  # [r, out]
        w0a = F.T @ (self.G[Q] - VQ.T @ P)                              # a W0, [r, d]
        aw = w0a - (a @ A.T) @ V                                        # a W, current W
        C = self.unit_col[alive]                                        # [m, q]
        vc, xc = v[:, C], aw[:, C]                                      # [r, m, q]
        self.D[alive] -= np.einsum("rmq,rmp->mqp", vc, vc)
        cross = np.einsum("rmq,rmp->mqp", vc, xc)
        self.N[alive] += np.einsum("rmq,rs,smp->mqp", vc, a @ a.T, vc) - cross - cross.transpose(0, 2, 1)
        r = v.shape[0]
        self.V[t:t + r], self.A[t:t + r], self.P[t:t + r] = v, a, w0a
        self.t += r
        if self.t + self.q > self.block:
            self.fold()


def _obs_greedy_columns(layers, col_of_unit: Sequence[np.ndarray], steps: int,
                        trace: Optional[list] = None) -> np.ndarray:
    """``obs_greedy`` with the updates batched as in SparseGPT's lazy batch updates (see
    ``_LazyLayer``); ``col_of_unit[k]``: [units, q] columns of consumer k."""
    n = len(col_of_unit[0])
    Ls = [_LazyLayer(W, H, c[:, 0], OBS_BLOCK) if c.shape[1] == 1 else _LazyBlockLayer(W, H, c, OBS_BLOCK)
          for (W, H), c in zip(layers, col_of_unit)]
    alive = np.ones(n, bool)
    score = np.zeros(n)
    level = 0.0
    for _ in range(min(steps, n - 1)):
        err = sum(L.errors() for L in Ls)
        err[~alive] = np.inf
        u = int(np.argmin(err))
        e = float(err[u])
        level = max(level, e)
        score[u] = level
        if trace is not None:
            trace.append((u, e))
        alive[u] = False
        for L in Ls:
            L.remove(u, alive)
    idx = np.nonzero(alive)[0]
    if idx.size:
        for L in Ls:
            L.fold()
        top = max(level, 1e-300)
        err = sum(L.errors() for L in Ls)[idx]
        rank = np.argsort(np.argsort(err, kind="stable"), kind="stable")
        score[idx] = top * (2.0 + rank)
    return score


def obs(group: Group, graph: Graph, reduce: str = "mean", normalize="mean", calib=None,
        name: str = "obs", greedy: bool = True, max_ratio: float = 0.9, **_) -> np.ndarray:
    """Optimal Brain Surgeon per consumer with the layer Hessian H = X·Xᵀ / n (im2col patches for
    a Conv): removing unit u costs tr(W_Q (H^-1_QQ)^-1 W_Q^T) over its columns Q when the kept
    columns are refit (the refit itself is ``--repair lstsq``). Consumers without a Gram matrix
    (grouped convs) use the diagonal: sum |W_q|^2 E[x_q^2]."""
    _need_calib(name, calib)
    n = len(group.units)
    index = _index(group)
    parts = []
    exact: List[Tuple[np.ndarray, np.ndarray, List[np.ndarray], np.ndarray]] = []
    for ci in consumer_inputs(group, graph):
        gm = ci.member
        W = graph.const(gm.member.tensor)
        if W is None or W.dtype.kind != "f":
            continue
        Wm = weight_matrix(W, ci, graph)
        st = None
        if Wm is not None:
            for k, v in calib.items():
                if k.tensor == ci.tensor and k.axis == ci.axis and v.gram is not None \
                        and v.gram.shape[0] == Wm.shape[1]:
                    st = v
                    break
        if st is None:
            st = calib.get_stats(ci.tensor, ci.axis)
            if st is None:
                continue
            v = position_values(W, gm, 2.0) * (st.sumsq / max(st.n, 1))[gm.positions]
            parts.append((unit_sums(v, gm.units, index, n), _covered(gm, index, n)))
            continue
        Hinv = damped_inverse(st.gram.astype(np.float64) / max(st.gram_n, 1))
        per = Wm.shape[1] // len(gm.member.atoms)
        cols = []
        for u in group.units.tolist():
            pos = gm.positions[gm.units == u]
            cols.append((pos[:, None] * per + np.arange(per)[None, :]).reshape(-1))
        s = obs_errors(Wm, Hinv, cols)
        parts.append((s, _covered(gm, index, n)))
        exact.append((Wm, Hinv, cols, _covered(gm, index, n)))
    if not parts:
        return magnitude(group, graph, p=2.0, reduce=reduce, normalize=normalize)
    steps = int(np.ceil(max_ratio * n))
    if greedy and len(exact) == len(parts) and n > 1 and all(cov.all() for *_, cov in exact) \
            and all(len({len(c) for c in cols}) == 1 for _, _, cols, _ in exact):
        flops = sum(steps * (H.shape[0] ** 2 * len(cols[0]) + W.shape[0] * H.shape[0] * len(cols[0]))
                    for W, H, cols, _ in exact)
        if flops <= GREEDY_FLOPS:
            s = obs_greedy([(W, H) for W, H, _, _ in exact], [cols for _, _, cols, _ in exact], steps)
            return combine([(s, np.ones(n, bool))], n, reduce, normalize)
    return combine(parts, n, reduce, normalize)


def obspa(group: Group, graph: Graph, **kw) -> np.ndarray:
    """``obs`` with the Hessians of synthetic inputs (no data needed), in the spirit of SPA's
    OBSPA."""
    return obs(group, graph, name="obspa", **kw)


def taylor(group: Group, graph: Graph, prepared=None, calib=None, **_) -> np.ndarray:
    """First-order Taylor: sum over calibration samples of ||df/dm_u||^2, the squared change of
    the model outputs per unit of the unit's mask (computed once for every group by
    ``prepare`` with onnxruntime finite differences)."""
    _need_calib("taylor", calib)
    return np.asarray(prepared[group.id], dtype=np.float64)


def _taylor_prepare(groups: List[Group], graph: Graph, model=None, samples=None, eps: float = 1e-2,
                    threads: int = 1, **_) -> Dict[int, np.ndarray]:
    from .calib import mask_sensitivity

    cons = {g.id: consumer_inputs(g, graph) for g in groups}
    return mask_sensitivity(model, graph, groups, cons, samples, eps=eps, threads=threads)


activation.needs = "calib"
fluctuation.needs = "calib"
obs.needs = "gram"
obspa.needs = "synthetic"
taylor.needs = "samples"
taylor.prepare = _taylor_prepare


CRITERIA: Dict[str, Callable[..., np.ndarray]] = {
    "l2": lambda g, graph, **kw: magnitude(g, graph, p=2.0, **kw),
    "l1": lambda g, graph, **kw: magnitude(g, graph, p=1.0, **kw),
    "bn-scale": bn_scale,
    "fpgm": fpgm,
    "lamp": lamp,
    "random": random_scores,
    "activation": activation,
    "fluctuation": fluctuation,
    "taylor": taylor,
    "obs": obs,
    "obspa": obspa,
}


@runtime_checkable
class Criterion(Protocol):
    """An importance function: one score per unit of ``group`` (higher = more important).

    Args:
        group: the group to score (``group.units``, ``group.members``: the constant slices of
            every layer the units touch, with their role ``out`` / ``in`` / ``param``).
        graph: the analysed model's read-only index (``graph.const(name)`` reads a weight).
        **kw: ``reduce``, ``seed``, ``normalize``, and for criteria that declare ``needs``:
            ``calib`` (activation statistics), ``prepared`` (the result of ``prepare``).
            Accept and ignore what you do not use.

    Returns:
        A float array of ``len(group.units)`` scores; non-finite scores count as 0.

    Optional attributes: ``needs`` (``"calib"``, ``"gram"``, ``"synthetic"`` or ``"samples"``,
    see the module docstring), ``prepare(groups, graph, **kw)``, ``name`` (the name written in
    the report; default: the function's ``__name__``).
    """

    def __call__(self, group: Group, graph: Graph, **kw) -> np.ndarray: ...


CriterionLike = Union[str, Criterion]


def resolve(criterion: CriterionLike) -> Criterion:
    """The criterion function of a name in ``CRITERIA``, or ``criterion`` itself when it is
    callable. Raises KeyError for an unknown name."""
    return criterion if callable(criterion) else CRITERIA[criterion]


def criterion_name(criterion: CriterionLike) -> str:
    """The name of a criterion as the report writes it."""
    if isinstance(criterion, str):
        return criterion
    return str(getattr(criterion, "name", None) or getattr(criterion, "__name__", None) or type(criterion).__name__)


def needs(criterion: CriterionLike) -> Optional[str]:
    """What the pipeline must collect for ``criterion`` (its ``needs`` attribute, or None)."""
    return getattr(resolve(criterion), "needs", None)


def score(groups: List[Group], graph: Graph, criterion: CriterionLike = "l2", reduce: str = "mean",
          seed: int = 0, normalize="mean", **kw) -> Dict[int, np.ndarray]:
    """One score per unit of every prunable group: ``{group.id: scores}``."""
    fn = resolve(criterion)
    todo = [g for g in groups if g.prunable]
    prep = getattr(fn, "prepare", None)
    if prep is not None and todo:
        kw["prepared"] = prep(todo, graph, **kw)
    out = {}
    for g in todo:
        s = np.asarray(fn(g, graph, reduce=reduce, seed=seed, normalize=normalize, **kw), dtype=np.float64)
        out[g.id] = np.where(np.isfinite(s), s, 0.0)
    return out
