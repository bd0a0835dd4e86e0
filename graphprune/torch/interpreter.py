"""Run (and train) an ONNX graph in torch: one function per ONNX op, evaluated eagerly in graph
order. Parameters are the graph's float constants (initializers and ``Constant`` nodes alike:
paddle2onnx keeps weights in Constant nodes) that feed differentiable inputs; integer constants
and shape operands stay buffers. :func:`write_back` copies trained values into the same tensors
of a copy of the graph, so node and tensor names, shapes and dtypes never change.

An op without a function here raises :class:`ConversionError` naming it (and the node).
"""

from __future__ import annotations

import math
from typing import Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Set

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import helper, numpy_helper

from ..errors import GraphpruneError


class ConversionError(GraphpruneError):
    """The graph has an op (or an op variant) the torch interpreter does not implement."""
    exit_code = 3


OPS: Dict[str, Callable] = {}

# inputs that are never trained (shape operands, indices, statistics, bounds), by op
FROZEN_INPUTS: Dict[str, Set[int]] = {
    "Reshape": {1}, "Slice": {1, 2, 3, 4}, "Resize": {1, 2, 3}, "Upsample": {1}, "Pad": {1, 2, 3},
    "Expand": {1}, "Tile": {1}, "ConstantOfShape": {0}, "Range": {0, 1, 2}, "Clip": {1, 2},
    "BatchNormalization": {3, 4}, "Gather": {1}, "GatherElements": {1}, "GatherND": {1}, "Squeeze": {1},
    "Unsqueeze": {1}, "Split": {1}, "ReduceMean": {1}, "ReduceSum": {1}, "ReduceMax": {1}, "ReduceMin": {1},
    "ReduceProd": {1}, "ReduceL2": {1}, "ReduceSumSquare": {1}, "TopK": {1}, "CumSum": {1}, "Where": {0},
    "Shape": {0}, "Size": {0}, "Equal": {0, 1}, "Less": {0, 1}, "Greater": {0, 1}, "LessOrEqual": {0, 1},
    "GreaterOrEqual": {0, 1}, "Cast": set(), "Trilu": {1}, "OneHot": {0, 1, 2}, "ScatterND": {1},
    "ScatterElements": {1},
}

TORCH_DTYPES = {
    onnx.TensorProto.FLOAT: torch.float32, onnx.TensorProto.DOUBLE: torch.float64,
    onnx.TensorProto.FLOAT16: torch.float16, onnx.TensorProto.BFLOAT16: torch.bfloat16,
    onnx.TensorProto.INT64: torch.int64, onnx.TensorProto.INT32: torch.int32, onnx.TensorProto.INT16: torch.int16,
    onnx.TensorProto.INT8: torch.int8, onnx.TensorProto.UINT8: torch.uint8, onnx.TensorProto.BOOL: torch.bool,
}


def op(*names):
    def deco(fn):
        for n in names:
            OPS[n] = fn
        return fn
    return deco


def _ints(t) -> List[int]:
    if t is None:
        return []
    if isinstance(t, torch.Tensor):
        return [int(v) for v in t.reshape(-1).tolist()]
    return [int(v) for v in t]


def _axis(a: int, rank: int) -> int:
    return a + rank if a < 0 else a


def _opt(ins, i):
    return ins[i] if len(ins) > i and ins[i] is not None else None


# ----------------------------------------------------------------------------- elementwise


def _unary(fn):
    return lambda ins, a, ctx: fn(ins[0])


for _name, _fn in {
    "Relu": F.relu, "Sigmoid": torch.sigmoid, "Tanh": torch.tanh, "Exp": torch.exp, "Log": torch.log,
    "Sqrt": torch.sqrt, "Neg": torch.neg, "Abs": torch.abs, "Floor": torch.floor, "Ceil": torch.ceil,
    "Round": torch.round, "Sign": torch.sign, "Sin": torch.sin, "Cos": torch.cos, "Tan": torch.tan,
    "Erf": torch.erf, "Reciprocal": torch.reciprocal, "Softplus": F.softplus, "Softsign": F.softsign,
    "Not": torch.logical_not, "IsNaN": torch.isnan, "Identity": lambda x: x, "HardSwish": F.hardswish,
    "Mish": F.mish, "Asin": torch.asin, "Acos": torch.acos, "Atan": torch.atan,
}.items():
    OPS[_name] = _unary(_fn)


@op("Dropout")
def _dropout(ins, a, ctx):
    x = ins[0]
    return (x, torch.ones_like(x, dtype=torch.bool)) if ctx.n_out > 1 else x


@op("Add")
def _add(ins, a, ctx):
    return ins[0] + ins[1]


@op("Sub")
def _sub(ins, a, ctx):
    return ins[0] - ins[1]


@op("Mul")
def _mul(ins, a, ctx):
    return ins[0] * ins[1]


@op("Div")
def _div(ins, a, ctx):
    x, y = ins
    if not x.is_floating_point():
        return torch.div(x, y, rounding_mode="trunc")
    return x / y


@op("Pow")
def _pow(ins, a, ctx):
    return torch.pow(ins[0], ins[1].to(ins[0].dtype) if ins[0].is_floating_point() else ins[1])


@op("Mod")
def _mod(ins, a, ctx):
    return torch.fmod(ins[0], ins[1]) if a.get("fmod", 0) else torch.remainder(ins[0], ins[1])


@op("Equal")
def _eq(ins, a, ctx):
    return ins[0] == ins[1]


@op("Less")
def _lt(ins, a, ctx):
    return ins[0] < ins[1]


@op("LessOrEqual")
def _le(ins, a, ctx):
    return ins[0] <= ins[1]


@op("Greater")
def _gt(ins, a, ctx):
    return ins[0] > ins[1]


@op("GreaterOrEqual")
def _ge(ins, a, ctx):
    return ins[0] >= ins[1]


@op("And")
def _and(ins, a, ctx):
    return ins[0] & ins[1]


@op("Or")
def _or(ins, a, ctx):
    return ins[0] | ins[1]


@op("Xor")
def _xor(ins, a, ctx):
    return ins[0] ^ ins[1]


@op("Where")
def _where(ins, a, ctx):
    return torch.where(ins[0].bool(), ins[1], ins[2])


def _variadic(fn):
    def f(ins, a, ctx):
        out = ins[0]
        for x in ins[1:]:
            out = fn(out, x)
        return out
    return f


OPS["Max"] = _variadic(torch.maximum)
OPS["Min"] = _variadic(torch.minimum)
OPS["Sum"] = _variadic(torch.add)


@op("Mean")
def _mean(ins, a, ctx):
    return OPS["Sum"](ins, a, ctx) / len(ins)


@op("LeakyRelu")
def _leaky(ins, a, ctx):
    return F.leaky_relu(ins[0], a.get("alpha", 0.01))


@op("Elu")
def _elu(ins, a, ctx):
    return F.elu(ins[0], a.get("alpha", 1.0))


@op("Selu")
def _selu(ins, a, ctx):
    al, g = a.get("alpha", 1.67326319217681884765625), a.get("gamma", 1.05070102214813232421875)
    x = ins[0]
    return g * torch.where(x > 0, x, al * (torch.exp(x) - 1))


@op("Celu")
def _celu(ins, a, ctx):
    return F.celu(ins[0], a.get("alpha", 1.0))


@op("HardSigmoid")
def _hsig(ins, a, ctx):
    return torch.clamp(a.get("alpha", 0.2) * ins[0] + a.get("beta", 0.5), 0.0, 1.0)


@op("Gelu")
def _gelu(ins, a, ctx):
    approx = a.get("approximate", b"none")
    approx = approx.decode() if isinstance(approx, bytes) else approx
    return F.gelu(ins[0], approximate="tanh" if approx == "tanh" else "none")


@op("PRelu")
def _prelu(ins, a, ctx):
    x, s = ins
    return torch.where(x >= 0, x, x * s)


@op("Clip")
def _clip(ins, a, ctx):
    lo = _opt(ins, 1)
    hi = _opt(ins, 2)
    lo = lo if lo is not None else a.get("min")
    hi = hi if hi is not None else a.get("max")
    x = ins[0]
    if lo is not None:
        x = torch.maximum(x, torch.as_tensor(lo, dtype=x.dtype))
    if hi is not None:
        x = torch.minimum(x, torch.as_tensor(hi, dtype=x.dtype))
    return x


@op("Cast")
def _cast(ins, a, ctx):
    to = a["to"]
    if to not in TORCH_DTYPES:
        raise ConversionError(f"Cast to {helper.tensor_dtype_to_string(to)} (node {ctx.name!r}) is not supported "
                              "by the torch interpreter")
    return ins[0].to(TORCH_DTYPES[to])


@op("CastLike")
def _castlike(ins, a, ctx):
    return ins[0].to(ins[1].dtype)


@op("Softmax", "LogSoftmax")
def _softmax(ins, a, ctx):
    x = ins[0]
    fn = torch.softmax if ctx.op == "Softmax" else torch.log_softmax
    if ctx.opset >= 13:
        return fn(x, _axis(a.get("axis", -1), x.dim()))
    ax = _axis(a.get("axis", 1), x.dim())            # opset < 13: coerced to 2-D at axis
    shp = x.shape
    return fn(x.reshape(int(np.prod(shp[:ax])), -1), 1).reshape(shp)


# ----------------------------------------------------------------------------- linear algebra


@op("MatMul")
def _matmul(ins, a, ctx):
    return torch.matmul(ins[0], ins[1])


@op("Gemm")
def _gemm(ins, a, ctx):
    A, B = ins[0], ins[1]
    if a.get("transA", 0):
        A = A.transpose(0, 1)
    if a.get("transB", 0):
        B = B.transpose(0, 1)
    y = a.get("alpha", 1.0) * (A @ B) if a.get("alpha", 1.0) != 1.0 else A @ B
    C = _opt(ins, 2)
    if C is not None:
        y = y + (a.get("beta", 1.0) * C if a.get("beta", 1.0) != 1.0 else C)
    return y


@op("Einsum")
def _einsum(ins, a, ctx):
    eq = a["equation"]
    eq = eq.decode() if isinstance(eq, bytes) else eq
    return torch.einsum(eq.replace(" ", ""), *ins)


def _conv_pads(a, x, w_spatial, strides, dil, transpose=False):
    nd = len(w_spatial)
    auto = a.get("auto_pad", b"NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else auto
    if auto in ("SAME_UPPER", "SAME_LOWER") and not transpose:
        pads_b, pads_e = [], []
        for i in range(nd):
            n = x.shape[2 + i]
            out = (n + strides[i] - 1) // strides[i]
            k = (w_spatial[i] - 1) * dil[i] + 1
            total = max((out - 1) * strides[i] + k - n, 0)
            small, big = total // 2, total - total // 2
            pads_b.append(small if auto == "SAME_UPPER" else big)
            pads_e.append(big if auto == "SAME_UPPER" else small)
        return pads_b + pads_e
    if auto == "VALID":
        return [0] * (2 * nd)
    return list(a.get("pads", [0] * (2 * nd)))


def _pad_spatial(x, pads, value=0.0):
    nd = len(pads) // 2
    spec = []
    for i in reversed(range(nd)):
        spec += [pads[i], pads[i + nd]]
    return F.pad(x, spec, value=value)


def _conv_operands(ins, a):
    """Conv / ConvTranspose: x, w, the bias (or None), the number of spatial axes, strides, dilations."""
    x, w = ins[0], ins[1]
    nd = w.dim() - 2
    return x, w, _opt(ins, 2), nd, list(a.get("strides", [1] * nd)), list(a.get("dilations", [1] * nd))


@op("Conv")
def _conv(ins, a, ctx):
    x, w, b, nd, strides, dil = _conv_operands(ins, a)
    pads = _conv_pads(a, x, list(w.shape[2:]), strides, dil)
    if pads[:nd] == pads[nd:]:
        pad = pads[:nd]
    else:
        x, pad = _pad_spatial(x, pads), [0] * nd
    fn = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}.get(nd)
    if fn is None:
        raise ConversionError(f"Conv with {nd} spatial dims (node {ctx.name!r}) is not supported")
    return fn(x, w, b, strides, pad, dil, a.get("group", 1))


@op("ConvTranspose")
def _convt(ins, a, ctx):
    x, w, b, nd, strides, dil = _conv_operands(ins, a)
    if "output_shape" in a or a.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
        raise ConversionError(f"ConvTranspose with output_shape/auto_pad (node {ctx.name!r}) is not supported")
    pads = list(a.get("pads", [0] * (2 * nd)))
    outpad = list(a.get("output_padding", [0] * nd))
    fn = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}[nd]
    y = fn(x, w, b, strides, 0, outpad, a.get("group", 1), dil)
    sl = [slice(None), slice(None)] + [slice(pads[i], y.shape[2 + i] - pads[i + nd]) for i in range(nd)]
    return y[tuple(sl)]


# ----------------------------------------------------------------------------- normalisation


@op("BatchNormalization")
def _bn(ins, a, ctx):
    x, s, b, m, v = ins[:5]
    # inference statistics always: fine-tuning a graph keeps its running statistics fixed
    return F.batch_norm(x, m, v, s, b, False, 0.0, a.get("epsilon", 1e-5))


@op("InstanceNormalization")
def _inorm(ins, a, ctx):
    return F.instance_norm(ins[0], weight=ins[1], bias=ins[2], eps=a.get("epsilon", 1e-5))


@op("LayerNormalization")
def _ln(ins, a, ctx):
    x, s = ins[0], ins[1]
    b = _opt(ins, 2)
    ax = _axis(a.get("axis", -1), x.dim())
    dims = list(range(ax, x.dim()))
    mu = x.mean(dims, keepdim=True)
    var = ((x - mu) ** 2).mean(dims, keepdim=True)
    y = (x - mu) / torch.sqrt(var + a.get("epsilon", 1e-5)) * s
    return y + b if b is not None else y


@op("GroupNormalization")
def _gn(ins, a, ctx):
    x, s, b = ins[:3]
    g = a["num_groups"]
    y = F.group_norm(x, g, None, None, a.get("epsilon", 1e-5))
    shp = [1, -1] + [1] * (x.dim() - 2)
    if s.numel() == x.shape[1]:
        return y * s.reshape(shp) + b.reshape(shp)
    rep = x.shape[1] // g                       # opset 18: scale/bias per group
    return y * s.repeat_interleave(rep).reshape(shp) + b.repeat_interleave(rep).reshape(shp)


@op("LRN")
def _lrn(ins, a, ctx):
    return F.local_response_norm(ins[0], a["size"], a.get("alpha", 1e-4), a.get("beta", 0.75), a.get("bias", 1.0))


# ----------------------------------------------------------------------------- pooling


def _pool_common(a, x):
    k = list(a["kernel_shape"])
    nd = len(k)
    strides = list(a.get("strides", [1] * nd))
    dil = list(a.get("dilations", [1] * nd))
    pads = _conv_pads(a, x, k, strides, dil)
    return k, nd, strides, dil, pads


@op("MaxPool")
def _maxpool(ins, a, ctx):
    x = ins[0]
    k, nd, strides, dil, pads = _pool_common(a, x)
    ceil = bool(a.get("ceil_mode", 0))
    if pads[:nd] != pads[nd:] or any(pads[i] > k[i] // 2 for i in range(nd)):
        x, pads = _pad_spatial(x, pads, value=float("-inf")), [0] * (2 * nd)
    fn = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}[nd]
    y = fn(x, k, strides, pads[:nd], dil, ceil_mode=ceil)
    if ctx.n_out > 1:
        raise ConversionError(f"MaxPool with indices (node {ctx.name!r}) is not supported")
    return y


@op("AveragePool")
def _avgpool(ins, a, ctx):
    x = ins[0]
    k, nd, strides, dil, pads = _pool_common(a, x)
    ceil = bool(a.get("ceil_mode", 0))
    incl = bool(a.get("count_include_pad", 0))
    if pads[:nd] != pads[nd:] or any(pads[i] > k[i] // 2 for i in range(nd)):
        if not incl:
            raise ConversionError(f"AveragePool with asymmetric pads (node {ctx.name!r}) is not supported")
        x, pads = _pad_spatial(x, pads), [0] * (2 * nd)
    fn = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}[nd]
    if nd == 1:
        return fn(x, k, strides, pads[:nd], ceil, incl)
    return fn(x, k, strides, pads[:nd], ceil, incl)


@op("GlobalAveragePool")
def _gap(ins, a, ctx):
    x = ins[0]
    return x.mean(dim=tuple(range(2, x.dim())), keepdim=True)


@op("GlobalMaxPool")
def _gmp(ins, a, ctx):
    x = ins[0]
    return x.amax(dim=tuple(range(2, x.dim())), keepdim=True)


# ----------------------------------------------------------------------------- reductions


def _reduce_axes(ins, a, ctx, x):
    if len(ins) > 1 and ins[1] is not None:
        axes = _ints(ins[1])
    else:
        axes = list(a.get("axes", []))
    if not axes:
        if a.get("noop_with_empty_axes", 0):
            return None
        axes = list(range(x.dim()))
    return [_axis(v, x.dim()) for v in axes]


def _reducer(fn):
    def f(ins, a, ctx):
        x = ins[0]
        axes = _reduce_axes(ins, a, ctx, x)
        if axes is None:
            return x
        return fn(x, axes, bool(a.get("keepdims", 1)))
    return f


OPS["ReduceMean"] = _reducer(lambda x, ax, k: x.mean(ax, keepdim=k))
OPS["ReduceSum"] = _reducer(lambda x, ax, k: x.sum(ax, keepdim=k))
OPS["ReduceMax"] = _reducer(lambda x, ax, k: x.amax(ax, keepdim=k))
OPS["ReduceMin"] = _reducer(lambda x, ax, k: x.amin(ax, keepdim=k))
OPS["ReduceSumSquare"] = _reducer(lambda x, ax, k: (x * x).sum(ax, keepdim=k))
OPS["ReduceL2"] = _reducer(lambda x, ax, k: torch.sqrt((x * x).sum(ax, keepdim=k)))
OPS["ReduceL1"] = _reducer(lambda x, ax, k: x.abs().sum(ax, keepdim=k))
OPS["ReduceLogSumExp"] = _reducer(lambda x, ax, k: torch.logsumexp(x, ax, keepdim=k))


def _prod(x, ax, k):
    for d in sorted(ax, reverse=True):
        x = x.prod(d, keepdim=k)
    return x


OPS["ReduceProd"] = _reducer(_prod)


@op("ArgMax", "ArgMin")
def _argmax(ins, a, ctx):
    x = ins[0]
    ax = _axis(a.get("axis", 0), x.dim())
    keep = bool(a.get("keepdims", 1))
    if a.get("select_last_index", 0):
        x = x.flip(ax)
        r = (torch.argmax if ctx.op == "ArgMax" else torch.argmin)(x, ax, keepdim=keep)
        return x.shape[ax] - 1 - r
    return (torch.argmax if ctx.op == "ArgMax" else torch.argmin)(x, ax, keepdim=keep)


@op("CumSum")
def _cumsum(ins, a, ctx):
    x = ins[0]
    ax = _axis(_ints(ins[1])[0], x.dim())
    if a.get("reverse", 0):
        x = x.flip(ax)
    if a.get("exclusive", 0):
        y = torch.cumsum(x, ax) - x
    else:
        y = torch.cumsum(x, ax)
    return y.flip(ax) if a.get("reverse", 0) else y


# ----------------------------------------------------------------------------- shapes


@op("Shape")
def _shape(ins, a, ctx):
    shp = list(ins[0].shape)
    r = len(shp)
    start = a.get("start", 0)
    end = a.get("end", r)
    start, end = max(0, _axis(start, r)), min(r, _axis(end, r))
    return torch.tensor(shp[start:end], dtype=torch.int64)


@op("Size")
def _size(ins, a, ctx):
    return torch.tensor(ins[0].numel(), dtype=torch.int64)


@op("Reshape")
def _reshape(ins, a, ctx):
    x = ins[0]
    shp = _ints(ins[1])
    if not a.get("allowzero", 0):
        shp = [x.shape[i] if v == 0 else v for i, v in enumerate(shp)]
    return x.reshape(shp)


@op("Flatten")
def _flatten(ins, a, ctx):
    x = ins[0]
    ax = _axis(a.get("axis", 1), x.dim())
    lead = int(np.prod(x.shape[:ax])) if ax else 1
    return x.reshape(lead, -1)


@op("Transpose")
def _transpose(ins, a, ctx):
    x = ins[0]
    perm = a.get("perm", list(reversed(range(x.dim()))))
    return x.permute(*perm)


@op("Squeeze")
def _squeeze(ins, a, ctx):
    x = ins[0]
    axes = _ints(ins[1]) if len(ins) > 1 and ins[1] is not None else list(a.get("axes", []))
    if not axes:
        return x.squeeze()
    for d in sorted((_axis(v, x.dim()) for v in axes), reverse=True):
        x = x.squeeze(d)
    return x


@op("Unsqueeze")
def _unsqueeze(ins, a, ctx):
    x = ins[0]
    axes = _ints(ins[1]) if len(ins) > 1 and ins[1] is not None else list(a.get("axes", []))
    r = x.dim() + len(axes)
    for d in sorted(_axis(v, r) for v in axes):
        x = x.unsqueeze(d)
    return x


@op("Concat")
def _concat(ins, a, ctx):
    xs = [x for x in ins if x is not None]
    ax = a["axis"]
    dt = xs[0].dtype
    return torch.cat([x.to(dt) for x in xs], _axis(ax, xs[0].dim()))


@op("Split")
def _split(ins, a, ctx):
    x = ins[0]
    ax = _axis(a.get("axis", 0), x.dim())
    sizes = _ints(ins[1]) if len(ins) > 1 and ins[1] is not None else list(a.get("split", []))
    if not sizes:
        n = ctx.n_out
        size = -(-x.shape[ax] // n)
        sizes = [min(size, x.shape[ax] - i * size) for i in range(n)]
    return tuple(torch.split(x, sizes, ax))


@op("Slice")
def _slice(ins, a, ctx):
    x = ins[0]
    if len(ins) > 1:
        starts, ends = _ints(ins[1]), _ints(ins[2])
        axes = _ints(ins[3]) if len(ins) > 3 and ins[3] is not None else list(range(len(starts)))
        steps = _ints(ins[4]) if len(ins) > 4 and ins[4] is not None else [1] * len(starts)
    else:
        starts, ends = list(a["starts"]), list(a["ends"])
        axes = list(a.get("axes", range(len(starts))))
        steps = [1] * len(starts)
    for s, e, ax, st in zip(starts, ends, axes, steps):
        ax = _axis(ax, x.dim())
        n = x.shape[ax]
        if st > 0:
            s = max(0, min(n, s + n if s < 0 else s))
            e = max(0, min(n, e + n if e < 0 else e))
            x = x.narrow(ax, s, max(0, e - s))[(slice(None),) * ax + (slice(None, None, st),)] if st > 1 \
                else x.narrow(ax, s, max(0, e - s))
        else:
            s = max(-1, min(n - 1, s + n if s < 0 else s))
            e = max(-1, min(n - 1, e + n if e < 0 else e))
            idx = torch.arange(s, e, st)
            x = x.index_select(ax, idx)
    return x


@op("Gather")
def _gather(ins, a, ctx):
    x, idx = ins
    ax = _axis(a.get("axis", 0), x.dim())
    idx = idx.long()
    idx = torch.where(idx < 0, idx + x.shape[ax], idx)
    out = x.index_select(ax, idx.reshape(-1))
    return out.reshape(tuple(x.shape[:ax]) + tuple(idx.shape) + tuple(x.shape[ax + 1:]))


@op("GatherElements")
def _gather_el(ins, a, ctx):
    x, idx = ins
    ax = _axis(a.get("axis", 0), x.dim())
    idx = idx.long()
    return torch.gather(x, ax, torch.where(idx < 0, idx + x.shape[ax], idx))


@op("Expand")
def _expand(ins, a, ctx):
    x = ins[0]
    shp = torch.broadcast_shapes(tuple(x.shape), tuple(_ints(ins[1])))
    return x.expand(shp)


@op("Tile")
def _tile(ins, a, ctx):
    return ins[0].repeat(*_ints(ins[1]))


@op("ConstantOfShape")
def _cos(ins, a, ctx):
    v = a.get("value")
    shp = _ints(ins[0])
    if v is None:
        return torch.zeros(shp, dtype=torch.float32)
    arr = numpy_helper.to_array(v)
    return torch.full(shp, arr.reshape(-1)[0].item(), dtype=TORCH_DTYPES[v.data_type])


@op("Range")
def _range(ins, a, ctx):
    s, e, d = (x.item() for x in ins)
    return torch.arange(s, e, d, dtype=ins[0].dtype)


@op("Pad")
def _pad(ins, a, ctx):
    x = ins[0]
    mode = a.get("mode", b"constant")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    if len(ins) > 1:
        pads = _ints(ins[1])
        val = ins[2] if len(ins) > 2 and ins[2] is not None and ins[2].numel() else None
        val = float(val.reshape(-1)[0]) if val is not None else 0.0
        axes = _ints(ins[3]) if len(ins) > 3 and ins[3] is not None else list(range(x.dim()))
    else:
        pads = list(a["pads"])
        val = a.get("value", 0.0)
        axes = list(range(x.dim()))
    axes = [_axis(v, x.dim()) for v in axes]
    n = len(axes)
    full_b, full_e = [0] * x.dim(), [0] * x.dim()
    for i, ax in enumerate(axes):
        full_b[ax], full_e[ax] = pads[i], pads[i + n]
    spec = []
    for ax in reversed(range(x.dim())):
        spec += [full_b[ax], full_e[ax]]
    while len(spec) > 2 and spec[-2:] == [0, 0]:
        spec = spec[:-2]
    if mode == "constant":
        return F.pad(x, spec, value=val)
    tmode = {"reflect": "reflect", "edge": "replicate", "wrap": "circular"}.get(mode)
    if tmode is None:
        raise ConversionError(f"Pad mode {mode!r} (node {ctx.name!r}) is not supported")
    return F.pad(x, spec, mode=tmode)


@op("Resize", "Upsample")
def _resize(ins, a, ctx):
    x = ins[0]
    mode = a.get("mode", b"nearest")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    ctm = a.get("coordinate_transformation_mode", b"half_pixel")
    ctm = ctm.decode() if isinstance(ctm, bytes) else ctm
    if ctx.op == "Upsample":
        scales, sizes = [float(v) for v in ins[1].reshape(-1).tolist()], None
        ctm = "asymmetric"
    else:
        scales = _opt(ins, 2)
        sizes = _opt(ins, 3)
        scales = [float(v) for v in scales.reshape(-1).tolist()] if scales is not None and scales.numel() else None
        sizes = _ints(sizes) if sizes is not None and sizes.numel() else None
    nd = x.dim() - 2
    if sizes is not None:
        out = sizes[2:]
    else:
        if scales[:2] != [1.0, 1.0]:
            raise ConversionError(f"Resize of the batch/channel axes (node {ctx.name!r}) is not supported")
        out = [int(math.floor(x.shape[2 + i] * scales[2 + i])) for i in range(nd)]
    if mode == "nearest":
        nm = a.get("nearest_mode", b"round_prefer_floor")
        nm = nm.decode() if isinstance(nm, bytes) else nm
        if ctm == "asymmetric" and (nm == "floor" or ctx.op == "Upsample"):
            return F.interpolate(x, size=out, mode="nearest")
        if ctm in ("half_pixel", "pytorch_half_pixel", "tf_half_pixel_for_nn") and \
                all(o % x.shape[2 + i] == 0 for i, o in enumerate(out)):
            return F.interpolate(x, size=out, mode="nearest")   # integer factors: every convention agrees
        if ctm == "asymmetric" and all(o % x.shape[2 + i] == 0 for i, o in enumerate(out)):
            return F.interpolate(x, size=out, mode="nearest")
        raise ConversionError(f"Resize nearest with {ctm}/{nm} (node {ctx.name!r}) is not supported")
    if mode in ("linear", "bilinear", "cubic"):
        tm = {1: "linear", 2: "bilinear", 3: "trilinear"}[nd] if mode != "cubic" else "bicubic"
        if ctm == "align_corners":
            return F.interpolate(x, size=out, mode=tm, align_corners=True)
        if ctm in ("half_pixel", "pytorch_half_pixel"):
            return F.interpolate(x, size=out, mode=tm, align_corners=False)
        raise ConversionError(f"Resize {mode} with {ctm} (node {ctx.name!r}) is not supported")
    raise ConversionError(f"Resize mode {mode!r} (node {ctx.name!r}) is not supported")


@op("DepthToSpace")
def _d2s(ins, a, ctx):
    x = ins[0]
    b = a["blocksize"]
    n, c, h, w = x.shape
    mode = a.get("mode", b"DCR")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    if mode == "DCR":
        y = x.reshape(n, b, b, c // (b * b), h, w).permute(0, 3, 4, 1, 5, 2)
    else:
        y = x.reshape(n, c // (b * b), b, b, h, w).permute(0, 1, 4, 2, 5, 3)
    return y.reshape(n, c // (b * b), h * b, w * b)


@op("SpaceToDepth")
def _s2d(ins, a, ctx):
    x = ins[0]
    b = a["blocksize"]
    n, c, h, w = x.shape
    y = x.reshape(n, c, h // b, b, w // b, b).permute(0, 3, 5, 1, 2, 4)
    return y.reshape(n, c * b * b, h // b, w // b)


@op("Trilu")
def _trilu(ins, a, ctx):
    k = _ints(ins[1])[0] if len(ins) > 1 and ins[1] is not None else 0
    return torch.triu(ins[0], k) if a.get("upper", 1) else torch.tril(ins[0], k)


@op("TopK")
def _topk(ins, a, ctx):
    x = ins[0]
    k = _ints(ins[1])[0]
    v, i = torch.topk(x, k, _axis(a.get("axis", -1), x.dim()), largest=bool(a.get("largest", 1)),
                      sorted=bool(a.get("sorted", 1)))
    return v, i


@op("OneHot")
def _onehot(ins, a, ctx):
    idx, depth, values = ins
    d = int(depth.reshape(-1)[0])
    idx = idx.long()
    idx = torch.where(idx < 0, idx + d, idx)
    oh = F.one_hot(idx, d)
    ax = a.get("axis", -1)
    if ax != -1:
        oh = oh.movedim(-1, _axis(ax, oh.dim()))
    return torch.where(oh.bool(), values[1], values[0])


# ----------------------------------------------------------------------------- the module


class _Ctx:
    __slots__ = ("op", "name", "n_out", "opset")

    def __init__(self, node: onnx.NodeProto, opset: int):
        self.op, self.name, self.n_out, self.opset = node.op_type, node.name or node.output[0], len(node.output), opset


def _node_attrs(node: onnx.NodeProto) -> dict:
    return {at.name: helper.get_attribute_value(at) for at in node.attribute}


def _constant_value(node: onnx.NodeProto) -> np.ndarray:
    at = node.attribute[0]
    v = helper.get_attribute_value(at)
    if at.name == "value":
        return numpy_helper.to_array(v)
    if at.name == "value_float":
        return np.array(v, np.float32)
    if at.name == "value_floats":
        return np.array(v, np.float32)
    if at.name == "value_int":
        return np.array(v, np.int64)
    if at.name == "value_ints":
        return np.array(v, np.int64)
    raise ConversionError(f"Constant with {at.name} (node {node.name!r}) is not supported")


def unsupported_ops(model: onnx.ModelProto) -> List[str]:
    """Op types of ``model`` (top-level graph) the interpreter lacks, in first-use order."""
    out = []
    for n in model.graph.node:
        key = n.op_type if n.domain in ("", "ai.onnx") else f"{n.domain}::{n.op_type}"
        if (n.domain not in ("", "ai.onnx") or (n.op_type not in OPS and n.op_type != "Constant")) \
                and key not in out:
            out.append(key)
    return out


def _to_torch(a: np.ndarray) -> torch.Tensor:
    a = np.array(a)            # a writable copy
    if a.dtype == np.uint16 or a.dtype.kind == "U" or a.dtype == object:
        raise ConversionError(f"constants of dtype {a.dtype} are not supported by the torch interpreter")
    return torch.from_numpy(a)


def trainable_constants(model: onnx.ModelProto, embeddings: bool = True) -> List[str]:
    """Names of the float32 constants (initializers and Constant outputs) with more than one
    element whose every reader uses them at a differentiable input (not a shape operand, an
    index, a bound or a BatchNorm statistic), in graph order. ``embeddings=False`` leaves out
    tables read only by Gather (embedding lookups)."""
    outputs = {o.name for o in model.graph.output}
    cands = {}
    for t in model.graph.initializer:
        if t.data_type == onnx.TensorProto.FLOAT and int(np.prod(t.dims)) > 1:
            cands[t.name] = True
    for n in model.graph.node:
        if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value":
            t = n.attribute[0].t
            if t.data_type == onnx.TensorProto.FLOAT and int(np.prod(t.dims)) > 1:
                cands[n.output[0]] = True
    used = set()
    lookup_only = {}
    for n in model.graph.node:
        frozen = FROZEN_INPUTS.get(n.op_type, set())
        for i, name in enumerate(n.input):
            if name in cands:
                used.add(name)
                lookup_only[name] = lookup_only.get(name, True) and n.op_type == "Gather" and i == 0
                if i in frozen or n.domain not in ("", "ai.onnx"):
                    cands[name] = False
    if not embeddings:
        for name, only in lookup_only.items():
            if only:
                cands[name] = False
    order = [t.name for t in model.graph.initializer] + \
            [n.output[0] for n in model.graph.node if n.op_type == "Constant"]
    return [k for k in order if cands.get(k) and k in used and k not in outputs]


class OnnxModule(torch.nn.Module):
    """Runs ``model`` in torch. ``forward(feed)`` (a dict of arrays/tensors, or the inputs in
    graph order as positional arguments) returns {output name: tensor}; ``extra`` names
    intermediate tensors to return too. ``trainable``: names of the constants to make
    parameters (default :func:`trainable_constants`); ``params`` maps each name to its
    parameter (``self.params`` is a ParameterList in the same order)."""

    def __init__(self, model: onnx.ModelProto, trainable: Optional[Iterable[str]] = None):
        super().__init__()
        missing = unsupported_ops(model)
        if missing:
            raise ConversionError(f"the torch interpreter lacks op {missing[0]}" +
                                  (f" (and {', '.join(missing[1:4])}{', ...' if len(missing) > 4 else ''})"
                                   if len(missing) > 1 else "") + ": the graph cannot be fine-tuned")
        self.model = model
        self.opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 13)
        train = list(trainable_constants(model) if trainable is None else trainable)
        train_set = set(train)
        self.names: List[str] = []
        self.params = torch.nn.ParameterList()
        self.index: Dict[str, int] = {}
        self.consts: Dict[str, torch.Tensor] = {}
        values: Dict[str, np.ndarray] = {}
        for t in model.graph.initializer:
            values[t.name] = numpy_helper.to_array(t)
        self.nodes = []
        for n in model.graph.node:
            if n.op_type == "Constant":
                values[n.output[0]] = _constant_value(n)
                continue
            self.nodes.append((n, _node_attrs(n), _Ctx(n, self.opset)))
        for name in train:
            if name not in values:
                raise ConversionError(f"trainable tensor {name!r} is not a constant of the graph")
            self.index[name] = len(self.names)
            self.names.append(name)
            self.params.append(torch.nn.Parameter(_to_torch(values[name])))
        for name, v in values.items():
            if name not in train_set:
                self.consts[name] = _to_torch(v)
        self.input_names = [i.name for i in model.graph.input if i.name not in values]
        self.output_names = [o.name for o in model.graph.output]

    def param(self, name: str) -> torch.nn.Parameter:
        return self.params[self.index[name]]

    def _get(self, env, name):
        if name == "":
            return None
        v = env.get(name)
        if v is not None:
            return v
        i = self.index.get(name)
        if i is not None:
            return self.params[i]
        return self.consts[name]

    def forward(self, *args, extra: Sequence[str] = (), **kw):
        if len(args) == 1 and isinstance(args[0], Mapping):
            feed = dict(args[0])
        else:
            feed = dict(zip(self.input_names, args))
        feed.update(kw)
        env: Dict[str, torch.Tensor] = {}
        for k in self.input_names:
            v = feed[k]
            env[k] = v if isinstance(v, torch.Tensor) else torch.from_numpy(np.asarray(v))
        for n, a, ctx in self.nodes:
            fn = OPS[n.op_type]
            ins = [self._get(env, i) for i in n.input]
            try:
                y = fn(ins, a, ctx)
            except ConversionError:
                raise
            except Exception as e:
                msg = (str(e).strip().splitlines() or [type(e).__name__])[0]
                raise ConversionError(f"torch interpreter failed at node {ctx.name!r} ({n.op_type}): {msg}") from e
            if isinstance(y, tuple):
                for o, v in zip(n.output, y):
                    if o:
                        env[o] = v
            else:
                env[n.output[0]] = y
        want = list(self.output_names) + [e for e in extra if e not in self.output_names]
        return {k: self._get(env, k) for k in want}


def write_back(module: OnnxModule, model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` whose trainable constants hold ``module``'s parameter values (same
    names, dtypes and shapes; initializers stay initializers, Constant nodes stay nodes)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    vals = {name: module.param(name).detach().cpu().numpy() for name in module.names}
    for i, t in enumerate(out.graph.initializer):
        if t.name in vals:
            new = numpy_helper.from_array(np.ascontiguousarray(vals[t.name], dtype=np.float32), t.name)
            if list(new.dims) != list(t.dims):
                raise ConversionError(f"trained tensor {t.name!r} changed shape")
            t.ClearField("float_data")
            t.raw_data = new.raw_data
    for n in out.graph.node:
        if n.op_type == "Constant" and n.output[0] in vals:
            t = n.attribute[0].t
            new = numpy_helper.from_array(np.ascontiguousarray(vals[n.output[0]], dtype=np.float32), t.name)
            t.ClearField("float_data")
            t.raw_data = new.raw_data
    return out
