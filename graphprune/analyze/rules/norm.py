"""Normalisation layers: BatchNorm, InstanceNorm, GroupNorm, LayerNorm, PRelu."""

import numpy as np

from ..engine import AnalysisError
from . import norm_axis, register


def _params(ctx, names, atoms, axis=0):
    for n in names:
        if not n:
            continue
        if not ctx.is_const(n):
            raise AnalysisError(f"{n} is not constant")
        shape = ctx.const_shape(n)
        if len(shape) > axis and shape[axis] == len(atoms):
            ctx.member(n, axis, "param", atoms)
        elif int(np.prod(shape)) != 1:
            raise AnalysisError(f"{n} has an unexpected shape {list(shape)}")


@register("BatchNormalization", "InstanceNormalization",
          doc="per-channel pass-through on axis 1; scale/bias/mean/var are param members")
def batchnorm(ctx):
    """Per-channel normalisation over axis 1."""
    x = ctx.input(0)
    xin = ctx.atoms(x, 1)
    for ax, atoms in ctx.desc(x).items():
        if ax != 1:
            if ctx.op == "InstanceNormalization":
                ctx.inexact(atoms, f"InstanceNormalization {ctx.label} normalises over axis {ax}")
            ctx.set_desc(ctx.outputs[0], ax, atoms)
    if xin is not None:
        _params(ctx, ctx.inputs[1:], xin)
        ctx.set_desc(ctx.outputs[0], 1, xin)
    if any(o for o in ctx.outputs[1:]):
        ctx.block(xin, f"BatchNormalization {ctx.label} in training mode")


@register("GroupNormalization", doc="pass-through on axis 1, not exact, equal counts per group")
def groupnorm(ctx):
    """GroupNormalization (opset 18/21)."""
    x = ctx.input(0)
    xin = ctx.atoms(x, 1)
    for ax, atoms in ctx.desc(x).items():
        if ax != 1:
            ctx.inexact(atoms, f"GroupNormalization {ctx.label} normalises over axis {ax}")
            ctx.set_desc(ctx.outputs[0], ax, atoms)
    if xin is None:
        return
    g = int(ctx.attr("num_groups"))
    s = ctx.const_shape(ctx.input(1))
    if s is None or s[0] != len(xin):
        raise AnalysisError("per-group scale (opset 18 form) is not supported")
    _params(ctx, ctx.inputs[1:3], xin)
    ctx.constrain(list(xin.reshape(g, -1)), "GroupNormalization groups")
    ctx.inexact(xin, f"GroupNormalization {ctx.label} statistics change")
    ctx.set_desc(ctx.outputs[0], 1, xin)


@register("LayerNormalization", doc="normalised axes: pass-through but not exact; scale/bias are params")
def layernorm(ctx):
    """LayerNormalization over axes [axis, rank)."""
    x = ctx.input(0)
    r = ctx.known_rank(x)
    axis = norm_axis(int(ctx.attr("axis", -1)), r)
    for ax, atoms in ctx.desc(x).items():
        if ax >= axis:
            ctx.inexact(atoms, f"LayerNormalization {ctx.label} normalises over this axis")
            _params(ctx, ctx.inputs[1:3], atoms, axis=ax - axis)
        ctx.set_desc(ctx.outputs[0], ax, atoms)
    for o in ctx.outputs[1:]:
        if o:
            for ax, atoms in ctx.desc(x).items():
                if ax < axis:
                    ctx.set_desc(o, ax, atoms)


@register("PRelu", doc="pass-through; a per-channel slope is a param member")
def prelu(ctx):
    """PRelu(x, slope) with unidirectional broadcast of slope."""
    x, s = ctx.input(0), ctx.input(1)
    r = ctx.rank(x)
    slope = ctx.const_shape(s)
    if r is None or slope is None:
        raise AnalysisError("slope is not constant or rank unknown")
    for ax, atoms in ctx.desc(x).items():
        sax = ax - (r - len(slope))
        if sax >= 0 and slope[sax] > 1:
            ctx.member(s, sax, "param", atoms)
        ctx.set_desc(ctx.outputs[0], ax, atoms)
