"""Conv and ConvTranspose: the producers and consumers of CNN channels."""

import numpy as np

from ..engine import AnalysisError
from . import register


def _batch_through(ctx, x, y):
    """Every sample of the batch axis is convolved on its own: channels carried on axis 0 (heads
    folded into the batch, as MViTv2's pooled attention does) pass through unchanged."""
    atoms = ctx.atoms(x, 0)
    if atoms is not None:
        ctx.set_desc(y, 0, atoms)


def _channels(ctx, name, axis=1):
    shp = ctx.shape(name)
    if shp is None or len(shp) <= axis or not isinstance(shp[axis], int):
        raise AnalysisError(f"channel count of {name} is unknown")
    return shp[axis]


@register("Conv", doc="output channels are new (W axis 0, bias); input channels consumed by W axis 1; "
                      "grouped: uniform counts per group; depthwise: input and output are one space; "
                      "the batch axis passes through")
def conv(ctx):
    """Conv: new output space; input consumed by W axis 1; grouped/depthwise handled."""
    x, w = ctx.input(0), ctx.input(1)
    b = ctx.input(2)
    y = ctx.outputs[0]
    xin = ctx.atoms(x, 1)
    _batch_through(ctx, x, y)
    if not ctx.is_const(w) or (b and not ctx.is_const(b)):
        ctx.block(xin, f"Conv {ctx.label} has non-constant weights")
        return
    wshape = ctx.const_shape(w)
    g = int(ctx.attr("group", 1))
    cout, cin_g = wshape[0], wshape[1]
    cin = cin_g * g
    if xin is not None and len(xin) != cin:
        raise AnalysisError(f"input has {len(xin)} channels, weight expects {cin}")

    if g == 1:
        if xin is not None:
            ctx.member(w, 1, "in", xin)
        out = ctx.new_space(cout, w)
    elif cin_g == 1 and g == cin:
        # depthwise (channel multiplier m = cout / cin): output o belongs to input o // m
        m = cout // cin
        if xin is None:
            return      # output channels follow an input that carries none: no channel space either
        out = np.repeat(xin, m)
        node_index = ctx.index

        def set_group(rw, xin=xin):
            rw.set_attr(node_index, "group", rw.count(xin))

        ctx.on_rewrite(set_group)
    else:
        if xin is not None:
            ctx.member(w, 1, "in", xin, groups=g)
            ctx.constrain(list(xin.reshape(g, cin_g)), "grouped Conv input")
        out = ctx.new_space(cout, w)
        ctx.constrain(list(out.reshape(g, cout // g)), "grouped Conv output")
    ctx.member(w, 0, "out", out)
    if b:
        ctx.member(b, 0, "param", out)
    ctx.set_desc(y, 1, out)


@register("ConvTranspose", doc="output channels are new (W axis 1, bias); input consumed by W axis 0; "
                               "grouped ConvTranspose blocks its channels")
def conv_transpose(ctx):
    """ConvTranspose: W is [Cin, Cout/g, k...]."""
    x, w = ctx.input(0), ctx.input(1)
    b = ctx.input(2)
    y = ctx.outputs[0]
    xin = ctx.atoms(x, 1)
    _batch_through(ctx, x, y)
    g = int(ctx.attr("group", 1))
    if not ctx.is_const(w) or (b and not ctx.is_const(b)) or g != 1:
        ctx.block(xin, f"ConvTranspose {ctx.label} is grouped or has non-constant weights")
        return
    wshape = ctx.const_shape(w)
    if xin is not None:
        if len(xin) != wshape[0]:
            raise AnalysisError("input channels do not match the weight")
        ctx.member(w, 0, "in", xin)
    out = ctx.new_space(wshape[1], w)
    ctx.member(w, 1, "out", out)
    if b:
        ctx.member(b, 0, "param", out)
    ctx.set_desc(y, 1, out)
