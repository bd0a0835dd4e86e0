"""Shape arithmetic: Shape, Constant, ConstantOfShape and the ops exporters use to build
Reshape targets at run time (Shape -> Gather -> Unsqueeze -> Concat).

A *shape value* is a list of items, one per element of a 1-D int tensor:
  ("lit", value, src)   a literal; src = (const_name, flat_index, node_index, input_k) or None
  ("dim", tensor, axis) the run-time size of an axis of a tensor
  ("unk",)              anything else (its value never depends on a prunable channel count:
                        the engine blocks channel dims that reach arithmetic it cannot follow)
"""

import numpy as np

from . import norm_axis, register


def const_items(ctx, name, k):
    v = ctx.const(name)
    if v is None or v.dtype.kind not in "iu":
        return None
    return [("lit", int(x), (name, i, ctx.index, k)) for i, x in enumerate(v.ravel().tolist())]


def small_const_items(ctx) -> bool:
    """A small integer constant passed on by Cast/Identity becomes the output's shape value, its
    items still naming the constant (paddle2onnx casts int32 Constants into Reshape targets)."""
    x = ctx.input(0)
    shp = ctx.const_shape(x) if ctx.is_const(x) else None
    if shp is None or len(shp) > 1 or int(np.prod(shp)) > 16:
        return False
    items = const_items(ctx, x, 0)
    if items is None:
        return False
    ctx.set_shapeval(ctx.outputs[0], items)
    return True


def items_of(ctx, name, k):
    sv = ctx.shapeval(name)
    if sv is not None:
        return sv
    return const_items(ctx, name, k)


def shape_calculus(ctx) -> bool:
    """Propagate shape values through Gather/Concat/Slice/Unsqueeze/Squeeze/Cast/Identity."""
    if not any(ctx.has_shapeval(x) for x in ctx.inputs):
        return False
    op = ctx.op
    y = ctx.outputs[0]
    if op == "Concat":
        out = []
        for k, x in enumerate(ctx.inputs):
            its = items_of(ctx, x, k) if x else []
            if its is None:
                return False
            out.extend(its)
        ctx.set_shapeval(y, out)
        return True
    src = ctx.shapeval(ctx.input(0))
    if src is None:
        return False
    if op == "Gather":
        ind = ctx.const(ctx.input(1))
        if ind is None or ind.ndim > 1:
            return False
        idx = [int(i) for i in np.atleast_1d(ind)]
        ctx.set_shapeval(y, [src[i] for i in idx])
        return True
    if op == "Slice":
        vals = [ctx.const(n) if n else None for n in (ctx.input(1), ctx.input(2), ctx.input(3), ctx.input(4))]
        if vals[0] is None or vals[1] is None:
            return False
        step = int(vals[3][0]) if vals[3] is not None else 1
        ctx.set_shapeval(y, src[int(vals[0][0]):int(vals[1][0]) if int(vals[1][0]) < 2**62 else None:step])
        return True
    if op in ("Unsqueeze", "Squeeze", "Identity", "Cast", "Reshape", "Flatten"):
        ctx.set_shapeval(y, list(src))
        return True
    if op == "Equal":
        other = items_of(ctx, ctx.input(1), 1)
        if other is None:
            return False
        other = other * len(src) if len(other) == 1 else other
        out = []
        for a, b in zip(src, other):
            if a[0] == "lit" and b[0] == "lit":
                out.append(("lit", int(a[1] == b[1]), None))
            elif "dim" in (a[0], b[0]) and "lit" in (a[0], b[0]) and (a if a[0] == "lit" else b)[1] < 0:
                out.append(("lit", 0, None))  # a size is never negative
            else:
                out.append(("unk",))
        ctx.set_shapeval(y, out)
        return True
    if op == "Where":
        a, b = items_of(ctx, ctx.input(1), 1), items_of(ctx, ctx.input(2), 2)
        if a is None or b is None:
            return False
        n = len(src)
        a, b = (a * n if len(a) == 1 else a), (b * n if len(b) == 1 else b)
        out = []
        for c, x, z in zip(src, a, b):
            out.append((x if c[1] else z) if c[0] == "lit" else ("unk",))
        ctx.set_shapeval(y, out)
        return True
    return False


@register("Shape", doc="no channels out; records which axis sizes the shape value reads")
def shape(ctx):
    """Shape(x, start, end) -> shape value of ('dim', x, axis) items."""
    x = ctx.input(0)
    r = ctx.rank(x)
    ctx.desc(x)  # reading sizes is fine; what uses them is checked where they are used
    if r is None:
        return
    start = norm_axis(int(ctx.attr("start", 0)), r)
    end = ctx.attr("end")
    end = r if end is None else norm_axis(int(end), r)
    start, end = max(0, min(r, start)), max(0, min(r, end))
    ctx.set_shapeval(ctx.outputs[0], [("dim", x, a) for a in range(start, end)])


@register("Constant", doc="constants carry no channels")
def constant(ctx):
    """Constant node: its value is read through Graph.const."""


@register("ConstantOfShape", doc="output axes sized by a channel count follow that channel space")
def constant_of_shape(ctx):
    """ConstantOfShape(shape): a filled tensor; channel-sized axes follow their space."""
    sv = ctx.shapeval(ctx.input(0))
    if sv is None:
        return
    for ax, it in enumerate(sv):
        if it[0] == "dim":
            atoms = ctx.atoms(it[1], it[2])
            if atoms is not None:
                ctx.set_desc(ctx.outputs[0], ax, atoms)
