"""Spatial ops (pooling, Pad, Resize) and reductions (Reduce*, Softmax, ArgMax)."""

import numpy as np

from ..engine import AnalysisError
from . import norm_axis, register


@register("MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "LpPool", "GlobalLpPool",
          "MaxRoiPool", doc="channel axis 1 and the batch axis pass through; spatial axes carry no channels")
def pool(ctx):
    """Pooling works per sample and channel."""
    x = ctx.input(0)
    for ax, atoms in ctx.desc(x).items():
        if ax not in (0, 1) or (ax == 0 and ctx.op == "MaxRoiPool"):
            raise AnalysisError(f"channels on pooled axis {ax}")
        for o in ctx.outputs:
            if o:
                ctx.set_desc(o, ax, atoms)


@register("Pad", doc="pass-through where the pads of the channel axis are zero")
def pad(ctx):
    """Pad: pads from input (opset >= 11) or attribute."""
    x = ctx.input(0)
    r = ctx.rank(x)
    if ctx.input(1):
        pads = ctx.const(ctx.input(1))
        if pads is None:
            raise AnalysisError("pads are not constant")
        axes_in = ctx.input(3)
        axes = ctx.const(axes_in) if axes_in else None
        if axes_in and axes is None:
            raise AnalysisError("pad axes are not constant")
    else:
        pads = np.array(ctx.attr("pads", []))
        axes = None
    if r is None:
        raise AnalysisError("rank unknown")
    axes = list(range(r)) if axes is None else [norm_axis(int(a), r) for a in axes]
    n = len(axes)
    padded = {a for i, a in enumerate(axes) if pads[i] != 0 or pads[i + n] != 0}
    for ax, atoms in ctx.desc(x).items():
        if ax in padded:
            raise AnalysisError(f"pads channel axis {ax}")
        ctx.set_desc(ctx.outputs[0], ax, atoms)


@register("Resize", "Upsample", doc="pass-through where the channel axis is not scaled")
def resize(ctx):
    """Resize: scales/sizes must leave channel axes alone."""
    x = ctx.input(0)
    desc = ctx.desc(x)
    if desc:
        scales = None
        if ctx.op == "Upsample":
            scales = ctx.const(ctx.input(1)) if ctx.input(1) else np.array(ctx.attr("scales", []))
        else:
            if len(ctx.inputs) > 2 and ctx.input(2):
                scales = ctx.const(ctx.input(2))
            if (scales is None or scales.size == 0) and len(ctx.inputs) > 3 and ctx.input(3):
                sizes = ctx.const(ctx.input(3))
                shp = ctx.shape(x)
                if sizes is None or shp is None:
                    raise AnalysisError("sizes are not constant")
                axes = ctx.attr("axes")
                if axes is not None:
                    raise AnalysisError("Resize with axes and sizes")
                for ax in desc:
                    if sizes[ax] != shp[ax]:
                        raise AnalysisError("resizes a channel axis")
                    _rewrite_sizes(ctx, ctx.input(3), ax, desc[ax])
                scales = np.ones(len(sizes))
        if scales is None or scales.size == 0:
            raise AnalysisError("scales are not constant")
        axes = ctx.attr("axes")
        for ax in desc:
            pos = ax if axes is None else (list(axes).index(ax) if ax in axes else None)
            if pos is not None and float(scales[pos]) != 1.0:
                raise AnalysisError("scales a channel axis")
    ctx.pass_through(x, ctx.outputs[0])


def _rewrite_sizes(ctx, name, ax, atoms):
    ctx.shape_member(name, [ax], atoms)
    node_index, k = ctx.index, 3

    def fn(rw):
        v = np.array(rw.const(name))
        v[ax] = rw.count(atoms)
        rw.set_input_const(node_index, k, v)

    ctx.on_rewrite(fn)


REDUCE = ("ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2",
          "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare")


@register(*REDUCE, doc="kept axes pass through; a reduced channel axis is not exact")
def reduce(ctx):
    """Reductions: axes from attribute or (opset 18, ReduceSum 13) second input."""
    x = ctx.input(0)
    r = ctx.known_rank(x)
    axes = ctx.attr("axes")
    if ctx.input(1):
        v = ctx.const(ctx.input(1))
        if v is None:
            raise AnalysisError("axes are not constant")
        axes = v.tolist()
    if axes is None or len(axes) == 0:
        if int(ctx.attr("noop_with_empty_axes", 0)):
            ctx.pass_through(x, ctx.outputs[0])
            return
        axes = list(range(r))
    axes = sorted(norm_axis(int(a), r) for a in axes)
    keep = int(ctx.attr("keepdims", 1))
    for ax, atoms in ctx.desc(x).items():
        if ax in axes:
            ctx.inexact(atoms, f"{ctx.op} {ctx.label} reduces over this channel axis")
            # the statistic is computed from every channel; removing one changes it
            continue
        to = ax if keep else ax - sum(1 for a in axes if a < ax)
        ctx.set_desc(ctx.outputs[0], to, atoms)


@register("Softmax", "LogSoftmax", "Hardmax", doc="pass-through; normalising over a channel axis is not exact")
def softmax(ctx):
    """Softmax over one axis (opset >= 13)."""
    x = ctx.input(0)
    r = ctx.known_rank(x)
    axis = norm_axis(int(ctx.attr("axis", -1)), r)
    for ax, atoms in ctx.desc(x).items():
        if ax == axis or (ctx.opset() < 13 and ax >= axis):
            ctx.inexact(atoms, f"{ctx.op} {ctx.label} normalises over this channel axis")
        ctx.set_desc(ctx.outputs[0], ax, atoms)


@register("ArgMax", "ArgMin", "TopK", "CumSum", "LRN", "LpNormalization", "MeanVarianceNormalization",
          doc="pass-through on other axes; the channels of the op's own axis are blocked")
def axis_ops(ctx):
    """Ops whose result along their axis depends on every channel's position or value."""
    x = ctx.input(0)
    r = ctx.known_rank(x)
    if ctx.op == "LRN":
        axes = [1]
    elif ctx.op == "MeanVarianceNormalization":
        axes = [norm_axis(a, r) for a in ctx.attr("axes", [0, 2, 3])]
    elif ctx.op == "CumSum":
        v = ctx.const(ctx.input(1))
        if v is None:
            raise AnalysisError("axis is not constant")
        axes = [norm_axis(int(v), r)]
    else:
        axes = [norm_axis(int(ctx.attr("axis", -1 if ctx.op in ("TopK", "LpNormalization") else 0)), r)]
    keep = int(ctx.attr("keepdims", 1))
    for ax, atoms in ctx.desc(x).items():
        if ax in axes:
            ctx.block(atoms, f"{ctx.op} {ctx.label} works across channels")
            continue
        to = ax if (keep or ctx.op not in ("ArgMax", "ArgMin")) else ax - sum(1 for a in axes if a < ax)
        for o in ctx.outputs:
            if o:
                ctx.set_desc(o, to, atoms)
