"""Elementwise ops: unary activations pass channels through; broadcasting binary ops couple them."""

import numpy as np

from ..engine import AnalysisError
from . import register
from .shape import shape_calculus, small_const_items

UNARY = (
    "Relu", "LeakyRelu", "Elu", "Selu", "Celu", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh",
    "Softplus", "Softsign", "Gelu", "Erf", "Exp", "Log", "Neg", "Abs", "Sqrt", "Reciprocal",
    "Identity", "Cast", "CastLike", "Floor", "Ceil", "Round", "Sign", "Sin", "Cos", "Tan", "Mish",
    "ThresholdedRelu", "Not", "IsNaN", "IsInf", "Asin", "Acos", "Atan", "Sinh", "Cosh", "Asinh",
    "Acosh", "Atanh", "Shrink", "Swish",
)


@register(*UNARY, "Dropout", "Clip", doc="pass-through (elementwise); extra scalar inputs ignored")
def unary(ctx):
    """Elementwise op of one tensor; Clip bounds and Dropout ratio are scalars."""
    if ctx.op in ("Cast", "Identity") and (shape_calculus(ctx) or small_const_items(ctx)):
        return              # shape values cast to int32 and back (tf2onnx, paddle2onnx) keep their items
    x = ctx.input(0)
    for extra in ctx.inputs[1:]:
        if extra:
            v = ctx.const_shape(extra)
            if (v is None or int(np.prod(v)) != 1) and ctx.op != "CastLike":
                raise AnalysisError(f"{ctx.op} with a non-scalar extra input")
    for o in ctx.outputs:
        if o:
            ctx.pass_through(x, o)


BINARY = ("Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Sum", "Mean", "Where", "Equal",
          "Greater", "GreaterOrEqual", "Less", "LessOrEqual", "And", "Or", "Xor", "Mod", "BitShift")


@register(*BINARY, doc="numpy broadcasting: non-broadcast inputs are coupled; a constant with the "
                       "channel dimension is a param member (residual Add, squeeze-excite Mul)")
def broadcast(ctx):
    """Broadcasting elementwise op of any number of inputs."""
    if ctx.op in ("Equal", "Where") and shape_calculus(ctx):
        return
    ins = [x for x in ctx.inputs if x]
    y = ctx.outputs[0]
    ry = ctx.rank(y)
    ranks = [ctx.rank(x) for x in ins]
    if any(r is None for r in ranks):
        raise AnalysisError("rank unknown")
    ry = ry if ry is not None else max(ranks)
    # per output axis: the atoms that flow into it
    carried = {}
    for x, r in zip(ins, ranks):
        for ax, atoms in ctx.desc(x).items():
            carried.setdefault(ax + ry - r, []).append(atoms)
    for oax, lists in sorted(carried.items()):
        first = lists[0]
        for other in lists[1:]:
            if len(other) != len(first):
                raise AnalysisError("coupled channel axes differ in size")
            ctx.couple(first, other)
        for x, r in zip(ins, ranks):
            xax = oax - (ry - r)
            if xax < 0 or ctx.atoms(x, xax) is not None:
                continue
            shp = ctx.shape(x)
            dim = shp[xax] if shp is not None else None
            if dim == 1:
                continue  # broadcast along this axis
            if ctx.is_const(x):
                if ctx.const_shape(x)[xax] == 1:
                    continue
                ctx.member(x, xax, "param", first)
            else:
                ctx.block(first, f"{ctx.op} {ctx.label} adds an unprunable tensor of the same width")
        ctx.set_desc(y, oax, first)
