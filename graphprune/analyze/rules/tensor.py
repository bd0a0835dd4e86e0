"""Concat, Split, Slice and Gather: channel axes assembled from or cut into sub-ranges."""

import numpy as np

from ..engine import AnalysisError
from . import norm_axis, register
from .shape import shape_calculus


def _dim(ctx, name, axis):
    shp = ctx.shape(name)
    if shp is None or not isinstance(shp[axis], int):
        raise AnalysisError(f"size of axis {axis} of {name} is unknown")
    return shp[axis]


@register("Concat", doc="on a channel axis: output = inputs at offsets; other axes: inputs coupled")
def concat(ctx):
    """Concat; on shape values it is shape arithmetic."""
    if shape_calculus(ctx):
        return
    ins = [x for x in ctx.inputs if x]
    y = ctx.outputs[0]
    r = ctx.rank(y) or ctx.rank(ins[0])
    if r is None:
        raise AnalysisError("rank unknown")
    axis = norm_axis(int(ctx.attr("axis")), r)
    axes = set()
    for x in ins:
        axes |= set(ctx.desc(x))
    for ax in sorted(axes):
        if ax == axis:
            parts = []
            for x in ins:
                a = ctx.atoms(x, ax)
                parts.append(a if a is not None else
                             ctx.fixed(_dim(ctx, x, ax), f"Concat {ctx.label} joins an unprunable input"))
            ctx.set_desc(y, ax, np.concatenate(parts))
        else:
            first = None
            for x in ins:
                a = ctx.atoms(x, ax)
                if a is None:
                    first = None
                    break
                if first is None:
                    first = a
                else:
                    ctx.couple(first, a)
            if first is None:
                for x in ins:
                    ctx.block(ctx.atoms(x, ax), f"Concat {ctx.label} joins an unprunable input")
            else:
                ctx.set_desc(y, ax, first)


@register("Split", doc="on a channel axis: outputs are sub-ranges; split sizes are rewritten")
def split(ctx):
    """Split by sizes (input or attribute), or into equal parts."""
    x = ctx.input(0)
    r = ctx.known_rank(x)
    axis = norm_axis(int(ctx.attr("axis", 0)), r)
    outs = ctx.outputs
    desc = ctx.desc(x)
    for ax, atoms in desc.items():
        if ax != axis:
            for o in outs:
                ctx.set_desc(o, ax, atoms)
    atoms = desc.get(axis)
    if atoms is None:
        return
    if ctx.input(1):
        sizes = ctx.const(ctx.input(1))
        if sizes is None:
            raise AnalysisError("split sizes are not constant")
        sizes = [int(s) for s in sizes]
    elif ctx.attr("split") is not None:
        sizes = [int(s) for s in ctx.attr("split")]
    else:
        n = len(outs)
        total = len(atoms)
        step = -(-total // n)
        sizes = [min(step, total - i * step) for i in range(n)]
    if sum(sizes) != len(atoms):
        raise AnalysisError("split sizes do not add up")
    segs = []
    off = 0
    for o, s in zip(outs, sizes):
        seg = atoms[off:off + s]
        segs.append(seg)
        ctx.set_desc(o, axis, seg)
        off += s
    node_index = ctx.index
    opset = ctx.opset()
    ctx.shape_member(ctx.input(1) or f"{ctx.label}.split", list(range(len(sizes))), atoms)

    def fn(rw):
        new = np.array([rw.count(s) for s in segs], dtype=np.int64)
        if opset >= 13:
            rw.remove_attr(node_index, "num_outputs")
            rw.set_input_const(node_index, 1, new)
        else:
            rw.set_attr(node_index, "split", [int(v) for v in new])

    ctx.on_rewrite(fn)


@register("Slice", doc="on a channel axis: output is a sub-range (step 1); bounds are rewritten")
def slice_(ctx):
    """Slice (opset >= 10: starts/ends/axes/steps inputs)."""
    if shape_calculus(ctx):
        return
    x = ctx.input(0)
    r = ctx.known_rank(x)
    if ctx.opset() < 10:
        starts, ends = ctx.attr("starts"), ctx.attr("ends")
        axes = ctx.attr("axes", list(range(len(starts))))
        steps = [1] * len(starts)
    else:
        vals = [ctx.const(n) if n else None for n in (ctx.input(1), ctx.input(2), ctx.input(3), ctx.input(4))]
        if vals[0] is None or vals[1] is None or (ctx.input(3) and vals[2] is None) or (ctx.input(4) and vals[3] is None):
            raise AnalysisError("slice bounds are not constant")
        starts, ends = vals[0].tolist(), vals[1].tolist()
        axes = vals[2].tolist() if vals[2] is not None else list(range(len(starts)))
        steps = vals[3].tolist() if vals[3] is not None else [1] * len(starts)
    axes = [norm_axis(int(a), r) for a in axes]
    y = ctx.outputs[0]
    for ax, atoms in ctx.desc(x).items():
        if ax not in axes:
            ctx.set_desc(y, ax, atoms)
            continue
        i = axes.index(ax)
        if steps[i] != 1:
            raise AnalysisError("strided slice of a channel axis")
        n = len(atoms)
        s, e = _clamp(starts[i], n), _clamp(ends[i], n)
        part = atoms[s:e]
        ctx.set_desc(y, ax, part)
        if ctx.opset() < 10:
            raise AnalysisError("Slice-1 on a channel axis")
        _rewrite_bounds(ctx, atoms, s, e, i)


def _clamp(v, n):
    v = int(v)
    if v < 0:
        v += n
    return max(0, min(n, v))


def _rewrite_bounds(ctx, atoms, s, e, i):
    node_index = ctx.index
    starts_name, ends_name = ctx.input(1), ctx.input(2)
    ctx.shape_member(starts_name, [i], atoms)
    ctx.shape_member(ends_name, [i], atoms)

    def fn(rw):
        keep = rw.keep_mask(atoms)
        st = np.array(rw.const(starts_name), dtype=np.int64).copy()
        en = np.array(rw.const(ends_name), dtype=np.int64).copy()
        st[i] = int(keep[:s].sum())
        en[i] = int(keep[:e].sum())
        rw.set_input_const(node_index, 1, st)
        rw.set_input_const(node_index, 2, en)

    ctx.on_rewrite(fn)


@register("Gather", doc="constant indices on a channel axis pick channels (indices rewritten); "
                        "a constant table (embedding) makes a new space whose member is the table")
def gather(ctx):
    """Gather(data, indices, axis)."""
    if shape_calculus(ctx):
        return
    data, idx = ctx.input(0), ctx.input(1)
    y = ctx.outputs[0]
    r = ctx.known_rank(data)
    axis = norm_axis(int(ctx.attr("axis", 0)), r)
    ind = ctx.const(idx) if not (ctx.is_const(data) and r == 2 and axis == 0) else None
    ri = ctx.rank(idx)
    if ri is None:
        ri = ind.ndim if ind is not None else None
    if ri is None:
        raise AnalysisError("rank of indices unknown")
    if ctx.is_const(data) and r == 2 and axis == 0:
        # embedding table: rows are looked up, columns are a new channel space
        out = ctx.new_space(ctx.const_shape(data)[1], data)
        ctx.member(data, 1, "param", out)
        for ax, atoms in ctx.desc(idx).items():
            ctx.set_desc(y, ax, atoms)
        ctx.set_desc(y, ri, out)
        return
    for ax, atoms in ctx.desc(idx).items():
        ctx.set_desc(y, axis + ax, atoms)
    for ax, atoms in ctx.desc(data).items():
        if ax < axis:
            ctx.set_desc(y, ax, atoms)
        elif ax > axis:
            ctx.set_desc(y, ax + ri - 1, atoms)
        else:
            if ind is None:
                raise AnalysisError("gathers channels with non-constant indices")
            flat = np.where(ind < 0, ind + len(atoms), ind).astype(np.int64)
            if ind.ndim == 0:
                ctx.block(atoms[[int(flat)]], f"Gather {ctx.label} picks one channel")
            elif ind.ndim == 1:
                ctx.set_desc(y, axis, atoms[flat])
            else:
                raise AnalysisError("multi-dimensional indices on a channel axis")
            _rewrite_indices(ctx, atoms, flat)


def _rewrite_indices(ctx, atoms, flat):
    node_index = ctx.index
    ctx.shape_member(ctx.input(1), list(range(flat.size)), atoms)

    def fn(rw):
        keep = rw.keep_mask(atoms)
        newpos = np.cumsum(keep) - 1
        if flat.ndim == 0:
            rw.set_input_const(node_index, 1, np.array(newpos[int(flat)], dtype=np.int64))
        else:
            sel = flat[keep[flat]]
            rw.set_input_const(node_index, 1, newpos[sel].astype(np.int64))

    ctx.on_rewrite(fn)
