"""Gemm and MatMul: dense layers with a constant weight; products of two activations."""

from ..engine import AnalysisError
from . import register


@register("Gemm", doc="B constant: output axis 1 is new (B rows/cols per transB, C bias); "
                      "A's reduction axis consumed by B")
def gemm(ctx):
    """Gemm: Y = alpha * A' B' + beta * C."""
    a, b, c = ctx.input(0), ctx.input(1), ctx.input(2)
    y = ctx.outputs[0]
    ta, tb = int(ctx.attr("transA", 0)), int(ctx.attr("transB", 0))
    k_axis = 0 if ta else 1
    m_axis = 1 - k_axis
    ain = ctx.atoms(a, k_axis)
    am = ctx.atoms(a, m_axis)
    if not ctx.is_const(b) or (c and not ctx.is_const(c)):
        ctx.block(ain, f"Gemm {ctx.label} has a non-constant weight")
        ctx.block(am, f"Gemm {ctx.label} has a non-constant weight")
        return
    B = _Shape(ctx.const_shape(b))
    b_k, b_n = (1, 0) if tb else (0, 1)
    if ain is not None:
        if len(ain) != B.shape[b_k]:
            raise AnalysisError("input width does not match the weight")
        ctx.member(b, b_k, "in", ain)
    if am is not None:
        ctx.set_desc(y, 0, am)
    out = ctx.new_space(B.shape[b_n], b)
    ctx.member(b, b_n, "out", out)
    if c:
        C = _Shape(ctx.const_shape(c))
        if C.ndim >= 1 and C.shape[-1] == B.shape[b_n] and B.shape[b_n] > 1:
            ctx.member(c, C.ndim - 1, "param", out)
            if C.ndim == 2 and C.shape[0] > 1:
                ctx.block(out, f"Gemm {ctx.label} has a 2-D bias")
    ctx.set_desc(y, 1, out)


@register("MatMul", doc="constant weight W[K,N]: output last axis is new, input last axis consumed; "
                        "two activations: batch axes pass through, the contracted axis is blocked")
def matmul(ctx):
    """MatMul with numpy broadcasting semantics."""
    a, b = ctx.input(0), ctx.input(1)
    y = ctx.outputs[0]
    ra, rb, ry = ctx.rank(a), ctx.rank(b), ctx.rank(y)
    if ra is None or rb is None:
        raise AnalysisError("rank unknown")
    if ra < 2 or rb < 2:
        raise AnalysisError("1-D MatMul operand")
    ry = ry if ry is not None else max(ra, rb)
    if ctx.is_const(b) and not ctx.is_const(a):
        _const_weight(ctx, b, a, ra, y, ry, w_left=False)
        return
    if ctx.is_const(a) and not ctx.is_const(b):
        _const_weight(ctx, a, b, rb, y, ry, w_left=True)
        return
    # two activations: batch axes couple, M comes from A, N from B, K is contracted
    ka, kb = ctx.atoms(a, ra - 1), ctx.atoms(b, rb - 2)
    ctx.block(ka, f"MatMul {ctx.label} contracts two activations")
    ctx.block(kb, f"MatMul {ctx.label} contracts two activations")
    for ax, atoms in ctx.desc(a).items():
        if ax == ra - 2:
            ctx.set_desc(y, ry - 2, atoms)
        elif ax < ra - 2:
            _batch(ctx, a, ax, ra, atoms, b, rb, y, ry)
    for ax, atoms in ctx.desc(b).items():
        if ax == rb - 1:
            ctx.set_desc(y, ry - 1, atoms)
        elif ax < rb - 2 and ctx.peek_atoms(y, ax + ry - rb) is None:
            _batch(ctx, b, ax, rb, atoms, a, ra, y, ry)


def _const_weight(ctx, w, x, rx, y, ry, w_left):
    """MatMul of an activation ``x`` (rank rx) with a constant 2-D ``w``: x @ W[K, N], or W[M, K] @ x when
    ``w_left``. x's contracted axis is W's "in" member, its other axes pass to y (aligned on the right),
    W's other axis is a new channel space on y's last (x @ W) or second-last (W @ x) axis."""
    W = _Shape(ctx.const_shape(w))
    if W.ndim != 2:
        ctx.block_inputs(f"MatMul {ctx.label} with a batched constant")
        return
    x_k, w_in, w_out, y_out = (rx - 2, 1, 0, ry - 2) if w_left else (rx - 1, 0, 1, ry - 1)
    xin = ctx.atoms(x, x_k)
    if xin is not None:
        ctx.member(w, w_in, "in", xin)
    for ax, atoms in ctx.desc(x).items():
        if ax != x_k:
            ctx.set_desc(y, ax + ry - rx, atoms)
    out = ctx.new_space(W.shape[w_out], w)
    ctx.member(w, w_out, "out", out)
    ctx.set_desc(y, y_out, out)


class _Shape:
    """Just the shape of a constant (its data is not read)."""

    def __init__(self, shape):
        self.shape = tuple(shape)
        self.ndim = len(self.shape)


def _batch(ctx, x, ax, rx, atoms, other, ro, y, ry):
    oax = ax + ro - rx
    oshp = ctx.shape(other)
    other_atoms = ctx.atoms(other, oax) if oax >= 0 else None
    if other_atoms is not None:
        ctx.couple(atoms, other_atoms)
    elif oax >= 0 and (oshp is None or oshp[oax] != 1):
        ctx.block(atoms, f"MatMul {ctx.label} batch axis meets an unprunable operand")
        return
    ctx.set_desc(y, ax + ry - rx, atoms)
