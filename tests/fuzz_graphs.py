"""Random valid ONNX graphs for property-based fuzzing of graphprune.

One generator, two sources of randomness:

* ``HypoChooser(data)`` draws every structural choice from hypothesis (so failing cases shrink);
* ``RngChooser(seed)`` draws them from a seeded numpy RNG (``tools/fuzz_long.py``, no hypothesis).

``build_case(chooser)`` returns a ``Case``: the dense model, the pruning options and a short
human-readable recipe (one entry per generated block). Weights come from a numpy RNG seeded by a
drawn integer, so a case is fully determined by the choices.

Graphs are built directly with onnx.helper (through ``helpers_graphs.GraphBuilder``) and mix:
Conv (dense, grouped, depthwise with channel multiplier, strided, dilated, with/without bias),
BatchNormalization, activations (Relu, Sigmoid, HardSwish, Clip, LeakyRelu, Silu as x*Sigmoid(x)),
residual Add/Mul between same-shape tensors, Concat and Split on the channel axis (sizes input,
equal parts, opset-18 ``num_outputs``), Slice on channels, Reshape/Transpose/Reshape channel
shuffle, squeeze-excite, pooling, GlobalAveragePool->Flatten->Gemm and Flatten->MatMul heads and
MatMul on a [B, S, C] layout (MatMul -> Add bias -> Gelu/Relu -> MatMul). Opsets 13..21, each op in
its correct form for the opset (Gelu is a node from opset 20, an Erf expansion before;
HardSwish from opset 14, x*HardSigmoid(x) before; Split's ``num_outputs`` from 18).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import onnx

from helpers_graphs import GraphBuilder

OPSETS = tuple(range(13, 22))
ROUND_TO = (1, 2, 4, 8)
CRITERIA = ("l1", "l2", "random")
ACTS = ("Relu", "Sigmoid", "HardSwish", "Clip", "LeakyRelu", "Silu")

try:
    from dataclasses import fields as _fields

    from graphprune.pipeline import Options as _Options

    _OPTION_FIELDS = {f.name for f in _fields(_Options)}
except Exception:  # noqa: BLE001
    _OPTION_FIELDS = set()

MAX_C = 24          # channel widths stay small: the fuzz budget is a few hundred ms a graph
MAX_HW = 12


# ----------------------------------------------------------------------------- choosers


class RngChooser:
    """Choices from a seeded numpy Generator."""

    def __init__(self, seed: int):
        self.rng = np.random.default_rng(seed)

    def integer(self, lo: int, hi: int) -> int:
        return int(self.rng.integers(lo, hi + 1))

    def choice(self, seq: Sequence):
        return seq[int(self.rng.integers(0, len(seq)))]

    def chance(self, p: float) -> bool:
        return bool(self.rng.random() < p)

    def ratio(self) -> float:
        return round(float(self.rng.uniform(0.0, 0.9)), 3)


class HypoChooser:
    """Choices drawn from a hypothesis ``data`` object. Every choice shrinks towards the first
    option / the low end / ``False`` (the simpler graph)."""

    def __init__(self, data):
        from hypothesis import strategies as st

        self.data = data
        self.st = st

    def integer(self, lo: int, hi: int) -> int:
        return self.data.draw(self.st.integers(lo, hi))

    def choice(self, seq: Sequence):
        return seq[self.data.draw(self.st.integers(0, len(seq) - 1))]

    def chance(self, p: float) -> bool:
        return self.data.draw(self.st.integers(0, 999)) >= int(round(1000 * (1 - p)))

    def ratio(self) -> float:
        # a 0.0 .. 0.9 grid (0.1 steps plus a finer residue) that shrinks to 0.5, not to 0
        k = self.data.draw(self.st.integers(0, 90))
        return round(((k + 50) % 91) / 100.0, 3)


# ----------------------------------------------------------------------------- tensors and case


@dataclass
class T:
    """A live tensor: kind 'img' [B, C, H, W], 'seq' [B, S, C] or 'flat' [B, C]."""
    name: str
    kind: str
    c: int
    h: int = 0
    w: int = 0
    s: int = 0

    def same_shape(self, o: "T") -> bool:
        return (self.kind, self.c, self.h, self.w, self.s) == (o.kind, o.c, o.h, o.w, o.s)


@dataclass
class Case:
    model: onnx.ModelProto
    opts: Dict
    recipe: List[str] = field(default_factory=list)
    opset: int = 17

    def describe(self) -> str:
        o = self.opts
        return (f"opset {self.opset}, ratio {o['ratio']}, round_to {o['round_to']}, criterion {o['criterion']}, "
                f"seed {o['seed']}: " + " | ".join(self.recipe))


def _divisors(n: int) -> List[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def _conv_out(n: int, k: int, s: int, d: int, p: int) -> int:
    return (n + 2 * p - d * (k - 1) - 1) // s + 1


class FuzzBuilder(GraphBuilder):
    """GraphBuilder plus the opset-correct composite blocks the fuzzer needs."""

    def __init__(self, opset: int, seed: int, batch, const_nodes: bool = False):
        super().__init__(opset=opset, seed=seed, const_nodes=const_nodes)
        self.batch = batch
        self.weights: Dict[Tuple, List[str]] = {}   # conv weight shape -> names (for sharing)

    def conv_w(self, x: str, cin: int, cout: int, k: int, group: int, stride: int, dilation: int, pad: int,
               bias: bool, share: bool = False) -> str:
        """A Conv whose weight may be an existing one of the same shape (shared weights)."""
        shape = (cout, cin // group, k, k)
        if share and self.weights.get(shape):
            name = self.fresh("conv")
            wname = self.weights[shape][0]
            ins = [x, wname]
            if bias:
                ins.append(self.const(f"{name}.bias", self.randn(cout, scale=0.1)))
            return self.node("Conv", ins, name=name, kernel_shape=[k, k], pads=[pad] * 4,
                             strides=[stride, stride], dilations=[dilation, dilation], group=group)
        y = self.conv(x, cin, cout, k=k, group=group, stride=stride, dilation=dilation, pad=pad, bias=bias)
        self.weights.setdefault(shape, []).append(self.nodes[-1].input[1])
        return y

    def reduce(self, op: str, x: str, axes: Sequence[int], keepdims: int) -> str:
        if self.opset >= 18 or (op == "ReduceSum" and self.opset >= 13):
            name = self.fresh(op.lower())
            return self.node(op, [x, self.ints(f"{name}.axes", axes)], name=name, keepdims=keepdims)
        return self.node(op, [x], axes=list(axes), keepdims=keepdims)

    def squeeze(self, x: str, axes: Sequence[int]) -> str:
        name = self.fresh("squeeze")
        return self.node("Squeeze", [x, self.ints(f"{name}.axes", axes)], name=name)

    def pad(self, x: str, pads: Sequence[int], mode: str) -> str:
        name = self.fresh("pad")
        ins = [x, self.ints(f"{name}.pads", pads)]
        if mode == "constant":
            ins.append(self.const(f"{name}.value", np.array(0.5, np.float32), as_node=False))
        return self.node("Pad", ins, name=name, mode=mode)

    def resize2x(self, x: str) -> str:
        name = self.fresh("resize")
        scales = self.const(f"{name}.scales", np.array([1, 1, 2, 2], np.float32), as_node=False)
        return self.node("Resize", [x, "", scales], name=name, mode="nearest")

    def layernorm(self, x: str, c: int) -> str:
        name = self.fresh("ln")
        sc = self.const(f"{name}.weight", (1 + 0.1 * self.rng.standard_normal(c)).astype(np.float32))
        bi = self.const(f"{name}.bias", (0.1 * self.rng.standard_normal(c)).astype(np.float32))
        if self.opset >= 17:
            return self.node("LayerNormalization", [x, sc, bi], name=name, axis=-1, epsilon=1e-5)
        mu = self.reduce("ReduceMean", x, [-1], 1)
        d = self.node("Sub", [x, mu])
        var = self.reduce("ReduceMean", self.node("Mul", [d, d]), [-1], 1)
        eps = self.const(f"{name}.eps", np.array(1e-5, np.float32))
        n = self.node("Div", [d, self.node("Sqrt", [self.node("Add", [var, eps])])])
        return self.node("Add", [self.node("Mul", [n, sc]), bi])

    @property
    def dyn(self) -> bool:
        return not isinstance(self.batch, int)

    def bdim(self) -> int:
        """The batch entry of a Reshape target: 0 (copy) for a symbolic batch."""
        return 0 if self.dyn else self.batch

    # -- activations
    def act(self, x: str, kind: str, ch) -> str:
        if kind == "Relu":
            return self.node("Relu", [x])
        if kind == "Sigmoid":
            return self.node("Sigmoid", [x])
        if kind == "LeakyRelu":
            return self.node("LeakyRelu", [x], alpha=0.1)
        if kind == "HardSwish":
            if self.opset >= 14:
                return self.node("HardSwish", [x])
            hs = self.node("HardSigmoid", [x], alpha=1.0 / 6, beta=0.5)
            return self.node("Mul", [x, hs])
        if kind == "Clip":
            name = self.fresh("clip")
            ins = [x, self.const(f"{name}.min", np.array(0.0, np.float32))]
            if ch.chance(0.7):
                ins.append(self.const(f"{name}.max", np.array(6.0, np.float32)))
            return self.node("Clip", ins, name=name)
        if kind == "Silu":
            return self.node("Mul", [x, self.node("Sigmoid", [x])])
        if kind == "Gelu":
            if self.opset >= 20:
                return self.node("Gelu", [x])
            name = self.fresh("gelu")
            d = self.node("Div", [x, self.const(f"{name}.sqrt2", np.array(math.sqrt(2.0), np.float32))])
            e = self.node("Add", [self.node("Erf", [d]), self.const(f"{name}.one", np.array(1.0, np.float32))])
            h = self.node("Mul", [x, e])
            return self.node("Mul", [h, self.const(f"{name}.half", np.array(0.5, np.float32))])
        raise ValueError(kind)

    def linear(self, x: str, k: int, n: int, bias: bool = True) -> str:
        name = self.fresh("lin")
        W = self.randn(k, n, scale=1.0 / np.sqrt(k))
        y = self.node("MatMul", [x, self.const(f"{name}.weight", W)], name=name)
        if bias:
            y = self.node("Add", [y, self.const(f"{name}.bias", self.randn(n, scale=0.1))])
        return y


# ----------------------------------------------------------------------------- blocks


def _pick(ch, live: List[T], pool: List[T], kinds=("img",)) -> Optional[T]:
    """Mostly the newest live tensor; sometimes an older one (fan-out makes a DAG)."""
    cands = [t for t in live if t.kind in kinds]
    if cands and ch.chance(0.75):
        return cands[-1]
    cands = [t for t in pool if t.kind in kinds]
    return ch.choice(cands) if cands else None


IMG_OPS = ("conv", "conv", "conv", "bn", "act", "residual", "residual", "concat", "split", "slice", "shuffle",
           "se", "pool", "to_seq", "head", "head", "pad", "resize", "deconv", "gather", "chan_const", "reduce_mul",
           "nhwc_matmul", "binary", "self_slice_add", "concat_spatial", "tap")


def _img_block(b: FuzzBuilder, ch, t: T, pool: List[T], recipe: List[str], taps: List[str]) -> List[T]:
    """One random block on image tensor ``t``; returns the new tensors."""
    op = ch.choice(IMG_OPS)
    C, H, W = t.c, t.h, t.w

    if op == "conv":
        kind = ch.choice(["dense", "grouped", "depthwise"])
        k = ch.choice([1, 3, 3, 5]) if min(H, W) >= 3 else 1
        stride = 2 if (min(H, W) >= 4 and ch.chance(0.25)) else 1
        dil = 2 if (k > 1 and min(H, W) >= 2 * (k - 1) + 1 and ch.chance(0.25)) else 1
        pad = dil * (k - 1) // 2 if ch.chance(0.8) else 0
        if _conv_out(min(H, W), k, stride, dil, pad) < 1:
            pad = dil * (k - 1) // 2
        bias = ch.chance(0.6)
        group = 1
        if kind == "grouped":
            gs = [g for g in _divisors(C) if 1 < g < C]
            if gs:
                group = ch.choice(gs)
                cout = group * ch.integer(1, max(1, min(4, MAX_C // group)))
            else:
                kind = "dense"
        if kind == "depthwise" and C > 1:
            group = C
            cout = C * ch.choice([1, 1, 2, 3] if C <= 8 else [1])
        elif kind == "depthwise":
            kind = "dense"
        if kind == "dense":
            cout = ch.integer(1, MAX_C)
        share = ch.chance(0.2)
        y = b.conv_w(t.name, C, cout, k, group, stride, dil, pad, bias, share=share)
        recipe.append(f"conv[{kind} {C}->{cout} k{k} s{stride} d{dil} p{pad} g{group}{' b' if bias else ''}"
                      f"{' shared' if share else ''}]")
        out = T(y, "img", cout, _conv_out(H, k, stride, dil, pad), _conv_out(W, k, stride, dil, pad))
        if ch.chance(0.5):
            out = T(b.bn(out.name, cout), "img", cout, out.h, out.w)
            recipe.append("bn")
        if ch.chance(0.6):
            a = ch.choice(ACTS)
            out = T(b.act(out.name, a, ch), "img", cout, out.h, out.w)
            recipe.append(a)
        return [out]

    if op == "bn":
        recipe.append("bn")
        return [T(b.bn(t.name, C), "img", C, H, W)]

    if op == "act":
        a = ch.choice(ACTS)
        recipe.append(a)
        return [T(b.act(t.name, a, ch), "img", C, H, W)]

    if op == "residual":
        mates = [o for o in pool if o.same_shape(t) and o.name != t.name]
        how = ch.choice(["Add", "Add", "Mul", "Sub"])
        if mates and ch.chance(0.5):
            o = ch.choice(mates)
            recipe.append(f"{how}[pool {C}]")
        elif ch.chance(0.1):
            o = t
            recipe.append(f"{how}[self {C}]")
        else:
            k = ch.choice([1, 3]) if min(H, W) >= 3 else 1
            g = C if (C > 1 and ch.chance(0.3)) else 1
            br = b.conv_w(t.name, C, C, k, g, 1, 1, (k - 1) // 2, ch.chance(0.5), share=ch.chance(0.3))
            if ch.chance(0.5):
                br = b.bn(br, C)
            if ch.chance(0.5):
                br = b.act(br, ch.choice(ACTS), ch)
            o = T(br, "img", C, H, W)
            recipe.append(f"{how}[branch conv{k} g{g} {C}]")
        ins = [t.name, o.name] if ch.chance(0.5) else [o.name, t.name]
        return [T(b.node(how, ins), "img", C, H, W)]

    if op == "concat":
        mates = [o for o in pool if o.kind == "img" and (o.h, o.w) == (H, W)]
        n = ch.integer(1, 2)
        parts = [t] + [ch.choice(mates) for _ in range(n)]
        if ch.chance(0.3):
            parts = parts[::-1]
        c = sum(p.c for p in parts)
        recipe.append("concat[" + "+".join(str(p.c) for p in parts) + "]")
        return [T(b.node("Concat", [p.name for p in parts], axis=ch.choice([1, -3])), "img", c, H, W)]

    if op == "split" and C >= 2:
        n = ch.integer(2, min(4, C))
        forms = ["input", "input"]
        if b.opset >= 18:
            forms.append("num_outputs")     # opset 18: the last part may be smaller
        elif C % n == 0:
            forms.append("equal")
        form = ch.choice(forms)
        if form == "input":
            cuts = sorted(set(ch.integer(1, C - 1) for _ in range(n - 1)))
            sizes = [e - s for s, e in zip([0] + cuts, cuts + [C])]
            parts = b.split(t.name, sizes, axis=ch.choice([1, 1, -3]), form="input")
        elif form == "num_outputs":
            step = -(-C // n)
            sizes = [min(step, C - i * step) for i in range(n)]
            if sizes[-1] <= 0:
                n, sizes = 2, [-(-C // 2), C // 2]
            name = b.fresh("split")
            parts = b.node("Split", [t.name], n_out=n, name=name, axis=1, num_outputs=n)
        else:
            sizes = [C // n] * n
            parts = b.node("Split", [t.name], n_out=n, axis=1)
        parts = [parts] if isinstance(parts, str) else parts
        recipe.append(f"split[{form} {sizes}]")
        return [T(p, "img", s, H, W) for p, s in zip(parts, sizes)]

    if op == "slice" and C >= 2:
        a = ch.integer(0, C - 1)
        e = ch.integer(a + 1, C)
        step = 2 if (e - a >= 3 and ch.chance(0.15)) else 1
        starts = a - C if ch.chance(0.3) else a
        ends = (2 ** 63 - 1) if (e == C and ch.chance(0.5)) else e
        name = b.fresh("slice")
        ins = [t.name, b.ints(f"{name}.starts", [starts]), b.ints(f"{name}.ends", [ends]),
               b.ints(f"{name}.axes", [ch.choice([1, -3])])]
        if step != 1 or ch.chance(0.3):
            ins.append(b.ints(f"{name}.steps", [step]))
        y = b.node("Slice", ins, name=name)
        c = len(range(a, e, step))
        recipe.append(f"slice[{a}:{e}:{step} of {C}]")
        return [T(y, "img", c, H, W)]

    if op == "shuffle" and C >= 4:
        gs = [g for g in _divisors(C) if 1 < g < C]
        if gs:
            g = ch.choice(gs)
            h = b.reshape(t.name, [b.bdim(), g, C // g, H, W])
            h = b.node("Transpose", [h], perm=[0, 2, 1, 3, 4])
            last = [b.bdim(), C, H, W] if ch.chance(0.5) else [b.bdim(), -1, H, W]
            h = b.reshape(h, last)
            recipe.append(f"shuffle[g{g} of {C}]")
            return [T(h, "img", C, H, W)]

    if op == "se" and C >= 2:
        r = ch.integer(1, max(1, C // 2))
        s = b.node("GlobalAveragePool", [t.name])
        s = b.relu(b.conv(s, C, r, k=1, bias=ch.chance(0.7)))
        s = b.node(ch.choice(["Sigmoid", "HardSigmoid"]), [b.conv(s, r, C, k=1, bias=ch.chance(0.7))])
        y = b.node("Mul", [t.name, s] if ch.chance(0.5) else [s, t.name])
        recipe.append(f"se[{C}->{r}->{C}]")
        return [T(y, "img", C, H, W)]

    if op == "pool" and min(H, W) >= 2:
        kind = ch.choice(["MaxPool", "AveragePool"])
        y = b.node(kind, [t.name], kernel_shape=[2, 2], strides=[2, 2])
        recipe.append(kind)
        return [T(y, "img", C, H // 2, W // 2)]

    if op == "to_seq":
        h = b.reshape(t.name, [b.bdim(), C, H * W])
        h = b.node("Transpose", [h], perm=[0, 2, 1])
        recipe.append(f"to_seq[{C}x{H * W}]")
        return [T(h, "seq", C, s=H * W)]

    if op == "head":
        how = ch.choice(["gap_flatten", "flatten", "gap_squeeze", "reduce_mean", "runtime_view"])
        if how == "gap_flatten":
            h, f = b.node("Flatten", [b.node("GlobalAveragePool", [t.name])], axis=1), C
        elif how == "flatten":
            h, f = b.node("Flatten", [t.name], axis=1), C * H * W
        elif how == "gap_squeeze":
            h, f = b.squeeze(b.node("GlobalAveragePool", [t.name]), [2, 3]), C
        elif how == "reduce_mean":
            h, f = b.reduce(ch.choice(["ReduceMean", "ReduceMax", "ReduceSum"]), t.name, [2, 3], 0), C
        else:
            # torch's x.view(x.size(0), -1): Shape -> Gather -> Unsqueeze -> Concat -> Reshape
            shp = b.node("Shape", [t.name])
            n = b.node("Gather", [shp, b.ints(b.fresh("idx"), 0)], axis=0)
            n = b.unsqueeze(n, [0])
            tgt = b.node("Concat", [n, b.ints(b.fresh("minus1"), [-1])], axis=0)
            h, f = b.node("Reshape", [t.name, tgt]), C * H * W
        recipe.append(how)
        return [T(h, "flat", f)]

    if op == "pad":
        mode = ch.choice(["constant", "reflect", "edge"])
        p = [0, 0, ch.integer(0, 1), ch.integer(0, 1), 0, 0, ch.integer(0, 1), ch.integer(0, 1)]
        if mode == "reflect" and min(H, W) < 2:
            mode = "edge"
        chan = mode == "constant" and ch.chance(0.15)
        if chan:
            p[1] = 1
        recipe.append(f"pad[{mode}{' chan' if chan else ''}]")
        return [T(b.pad(t.name, p, mode), "img", C + (1 if chan else 0), H + p[2] + p[6], W + p[3] + p[7])]

    if op == "resize" and max(H, W) <= 6:
        recipe.append("resize2x")
        return [T(b.resize2x(t.name), "img", C, 2 * H, 2 * W)]

    if op == "deconv" and max(H, W) <= 6:
        cout = ch.integer(1, MAX_C)
        recipe.append(f"deconv[{C}->{cout}]")
        y = b.conv_transpose(t.name, C, cout, k=2, stride=2, bias=ch.chance(0.5))
        return [T(y, "img", cout, 2 * H, 2 * W)]

    if op == "gather" and C >= 2:
        n = ch.integer(1, C)
        idx = [ch.integer(0, C - 1) for _ in range(n)]
        if ch.chance(0.5):
            idx = sorted(set(idx))
        idx = [i - C if ch.chance(0.2) else i for i in idx]
        name = b.fresh("gather")
        y = b.node("Gather", [t.name, b.ints(f"{name}.idx", idx)], name=name, axis=1)
        recipe.append(f"gather[{idx} of {C}]")
        return [T(y, "img", len(idx), H, W)]

    if op == "chan_const":
        how = ch.choice(["Add", "Sub", "Mul", "Div", "PRelu"])
        shape = ch.choice([(C, 1, 1), (1, C, 1, 1), (1,), ()])
        if how == "PRelu":
            shape = ch.choice([(C, 1, 1), (1,)])
        val = b.randn(*shape, scale=0.3)
        if how == "Div":
            val = (1.0 + np.abs(val)).astype(np.float32)
        c = b.const(b.fresh("cc"), val)
        ins = [t.name, c] if (how in ("PRelu", "Div") or ch.chance(0.5)) else [c, t.name]
        recipe.append(f"{how}[const {shape}]")
        return [T(b.node(how, ins), "img", C, H, W)]

    if op == "reduce_mul":
        red = b.reduce(ch.choice(["ReduceMean", "ReduceMax", "ReduceSum"]), t.name, [2, 3], 1)
        red = b.node("Sigmoid", [red])
        recipe.append("reduce_mul")
        return [T(b.node("Mul", [t.name, red]), "img", C, H, W)]

    if op == "nhwc_matmul":
        cout = ch.integer(1, MAX_C)
        h = b.node("Transpose", [t.name], perm=[0, 2, 3, 1])
        h = b.linear(h, C, cout, bias=ch.chance(0.6))
        h = b.node("Transpose", [h], perm=[0, 3, 1, 2])
        recipe.append(f"nhwc_matmul[{C}->{cout}]")
        return [T(h, "img", cout, H, W)]

    if op == "binary":
        mates = [o for o in pool if o.same_shape(t) and o.name != t.name]
        if mates:
            o = ch.choice(mates)
            how = ch.choice(["Max", "Min", "Where", "Sum"])
            if how == "Where":
                cond = b.node("Greater", [t.name, o.name])
                y = b.node("Where", [cond, t.name, o.name])
            else:
                y = b.node(how, [t.name, o.name])
            recipe.append(f"{how}[pool {C}]")
            return [T(y, "img", C, H, W)]

    if op == "self_slice_add" and C >= 2:
        k = ch.integer(1, C // 2)
        a0, a1 = ch.integer(0, C - k), ch.integer(0, C - k)
        outs = []
        for a in (a0, a1):
            name = b.fresh("slice")
            outs.append(b.node("Slice", [t.name, b.ints(f"{name}.starts", [a]), b.ints(f"{name}.ends", [a + k]),
                                         b.ints(f"{name}.axes", [1])], name=name))
        recipe.append(f"self_slice_add[{a0}:{a0 + k} + {a1}:{a1 + k} of {C}]")
        return [T(b.node("Add", outs), "img", k, H, W)]

    if op == "concat_spatial":
        mates = [o for o in pool if o.kind == "img" and o.c == C and o.h == H]
        o = ch.choice(mates)
        recipe.append(f"concat_w[{C}]")
        return [T(b.node("Concat", [t.name, o.name], axis=3), "img", C, H, W + o.w)]

    if op == "tap":
        taps.append(t.name)     # an intermediate that is also a graph output
        recipe.append("tap")
        a = ch.choice(ACTS)
        return [T(b.act(t.name, a, ch), "img", C, H, W)]

    # fallback (op not applicable to this tensor): a plain conv
    cout = ch.integer(1, MAX_C)
    recipe.append(f"conv[fallback {C}->{cout}]")
    return [T(b.relu(b.conv(t.name, C, cout, k=1)), "img", cout, H, W)]


def _seq_block(b: FuzzBuilder, ch, t: T, pool: List[T], recipe: List[str], taps: List[str]) -> List[T]:
    op = ch.choice(["mlp", "mlp", "linear", "act", "residual", "attention", "layernorm", "tap", "einsum"])
    C = t.c
    if op == "einsum":
        return _einsum_block(b, ch, t, recipe)
    if op == "mlp":
        hid = ch.integer(1, 2 * MAX_C)
        cout = C if ch.chance(0.5) else ch.integer(1, MAX_C)
        a = ch.choice(["Gelu", "Relu"])
        h = b.act(b.linear(t.name, C, hid, bias=ch.chance(0.8)), a, ch)
        h = b.linear(h, hid, cout, bias=ch.chance(0.8))
        if cout == C and ch.chance(0.6):
            h = b.node("Add", [t.name, h])
            recipe.append(f"mlp_res[{C}->{hid}->{C} {a}]")
        else:
            recipe.append(f"mlp[{C}->{hid}->{cout} {a}]")
        return [T(h, "seq", cout, s=t.s)]
    if op == "attention":
        heads = ch.choice([1, 2, 4])
        dh = ch.integer(1, 6)
        D = heads * dh
        q, k, v = (b.linear(t.name, C, D, bias=ch.chance(0.7)) for _ in range(3))
        tgt = [b.bdim(), t.s, heads, dh] if ch.chance(0.5) else [b.bdim(), 0, heads, -1]
        q = b.node("Transpose", [b.reshape(q, tgt)], perm=[0, 2, 1, 3])
        k = b.node("Transpose", [b.reshape(k, tgt)], perm=[0, 2, 3, 1])
        v = b.node("Transpose", [b.reshape(v, tgt)], perm=[0, 2, 1, 3])
        s = b.node("Mul", [b.node("MatMul", [q, k]), b.const(b.fresh("scale"), np.array(dh ** -0.5, np.float32))])
        a = b.node("MatMul", [b.node("Softmax", [s], axis=-1), v])
        a = b.node("Transpose", [a], perm=[0, 2, 1, 3])
        a = b.reshape(a, [b.bdim(), t.s, D] if ch.chance(0.5) else [b.bdim(), 0, -1])
        h = b.linear(a, D, C, bias=ch.chance(0.7))
        if ch.chance(0.7):
            h = b.node("Add", [t.name, h])
        recipe.append(f"attention[{C} h{heads} dh{dh}]")
        return [T(h, "seq", C, s=t.s)]
    if op == "layernorm":
        recipe.append(f"layernorm[{C}]")
        return [T(b.layernorm(t.name, C), "seq", C, s=t.s)]
    if op == "linear":
        n = ch.integer(1, MAX_C)
        recipe.append(f"linear[{C}->{n}]")
        return [T(b.linear(t.name, C, n, bias=ch.chance(0.7)), "seq", n, s=t.s)]
    if op == "act":
        a = ch.choice(ACTS + ("Gelu",))
        recipe.append(a)
        return [T(b.act(t.name, a, ch), "seq", C, s=t.s)]
    if op == "tap":
        taps.append(t.name)
        recipe.append("tap")
        return [T(b.act(t.name, "Relu", ch), "seq", C, s=t.s)]
    mates = [o for o in pool if o.same_shape(t) and o.name != t.name]
    if mates:
        o = ch.choice(mates)
        how = ch.choice(["Add", "Mul"])
        recipe.append(f"{how}[seq {C}]")
        return [T(b.node(how, [t.name, o.name]), "seq", C, s=t.s)]
    n = ch.integer(1, MAX_C)
    recipe.append(f"linear[{C}->{n}]")
    return [T(b.linear(t.name, C, n), "seq", n, s=t.s)]


def _einsum_block(b: FuzzBuilder, ch, t: T, recipe: List[str]) -> List[T]:
    """TF/Keras-style Einsum: an EinsumDense MLP (kernel [C, D] or [D, C], ellipsis or not) or
    multi-head attention with [C, heads, dh] kernels and Einsum scores/values."""
    C = t.c
    if ch.chance(0.5):
        hid = ch.integer(1, 2 * MAX_C)
        eq1, k1 = ch.choice([("btc,cd->btd", (C, hid)), ("...c,cd->...d", (C, hid)), ("btc,dc->btd", (hid, C))])
        h = b.node("Einsum", [t.name, b.const(b.fresh("ein.kernel"), b.randn(*k1, scale=C ** -0.5))], equation=eq1)
        if ch.chance(0.5):
            h = b.node("Einsum", [h, b.const(b.fresh("ein.gamma"), b.randn(hid))], equation="btd,d->btd")
        h = b.act(h, ch.choice(["Relu", "Gelu"]), ch)
        h = b.node("Einsum", [h, b.const(b.fresh("ein.kernel"), b.randn(hid, C, scale=hid ** -0.5))],
                   equation="btd,dc->btc")
        recipe.append(f"einsum_mlp[{C}->{hid} {eq1}]")
        return [T(b.node("Add", [t.name, h]) if ch.chance(0.6) else h, "seq", C, s=t.s)]
    heads, dh = ch.choice([1, 2, 4]), ch.integer(1, 6)

    def dense(tag):
        y = b.node("Einsum", [t.name, b.const(b.fresh(f"ein.{tag}"), b.randn(C, heads, dh, scale=C ** -0.5))],
                   equation="btc,cnh->btnh")
        return b.node("Add", [y, b.const(b.fresh(f"ein.{tag}.bias"), b.randn(heads, dh, scale=0.1))]) \
            if ch.chance(0.7) else y
    q, k, v = dense("q"), dense("k"), dense("v")
    s = b.node("Einsum", [q, k], equation="bqnh,bknh->bnqk")
    p = b.node("Softmax", [b.node("Mul", [s, b.const(b.fresh("scale"), np.array(dh ** -0.5, np.float32))])], axis=-1)
    a = b.node("Einsum", [p, v], equation="bnqk,bknh->bqnh")
    h = b.node("Einsum", [a, b.const(b.fresh("ein.o"), b.randn(heads, dh, C, scale=(heads * dh) ** -0.5))],
               equation="bqnh,nhc->bqc")
    recipe.append(f"einsum_attention[{C} h{heads} dh{dh}]")
    return [T(b.node("Add", [t.name, h]) if ch.chance(0.7) else h, "seq", C, s=t.s)]


def _flat_block(b: FuzzBuilder, ch, t: T, recipe: List[str]) -> List[T]:
    n = ch.integer(1, MAX_C)
    if ch.chance(0.5):
        tb = ch.choice([1, 0])
        y = b.gemm(t.name, t.c, n, trans_b=tb)
        recipe.append(f"gemm[{t.c}->{n} tB{tb}]")
    else:
        y = b.linear(t.name, t.c, n, bias=ch.chance(0.7))
        recipe.append(f"matmul[{t.c}->{n}]")
    if ch.chance(0.4):
        y = b.relu(y)
        recipe.append("Relu")
    return [T(y, "flat", n)]


# ----------------------------------------------------------------------------- the case


def build_case(ch, max_blocks: int = 8, layout: Optional[str] = None) -> Case:
    """A random model and options. ``layout``: 'img' ([B, C, H, W] input), 'seq' ([B, S, C] input)
    or None (drawn: mostly 'img')."""
    opset = ch.choice(OPSETS)
    seed = ch.integer(0, 2 ** 16)
    batch = "N" if ch.chance(0.2) else 1
    b = FuzzBuilder(opset, seed, batch, const_nodes=ch.chance(0.15))
    recipe: List[str] = []
    if layout is None:
        layout = "img" if ch.chance(0.8) else "seq"
    if layout == "img":
        cin = ch.integer(1, 4)
        h = ch.integer(4, MAX_HW)
        w = h if ch.chance(0.7) else ch.integer(4, MAX_HW)
        x = b.input("x", [batch, cin, h, w])
        first = T(x, "img", cin, h, w)
        recipe.append(f"input[{batch},{cin},{h},{w}]")
        # an input is never pruned: start with a conv so there is something to do
        c0 = ch.integer(2, MAX_C)
        y = b.conv(x, cin, c0, k=ch.choice([1, 3]), bias=ch.chance(0.6))
        start = T(y, "img", c0, h, w)
        recipe.append(f"conv[stem {cin}->{c0}]")
    else:
        s, c = ch.integer(1, 8), ch.integer(2, MAX_C)
        x = b.input("x", [batch, s, c])
        first = T(x, "seq", c, s=s)
        recipe.append(f"input[{batch},{s},{c}]")
        c0 = ch.integer(2, MAX_C)
        start = T(b.linear(x, c, c0), "seq", c0, s=s)
        recipe.append(f"linear[stem {c}->{c0}]")

    pool: List[T] = [first, start]
    consumed = {first.name}
    if ch.chance(0.1):
        # a second graph input the width of the stem: whatever it joins keeps its channels
        x2 = b.input("x2", _shape(start, batch))
        pool.append(T(x2, start.kind, start.c, start.h, start.w, start.s))
        consumed.add(x2)
        recipe.append("input2")
    live: List[T] = [start]
    taps: List[str] = []
    n_blocks = ch.integer(1, max_blocks)
    for _ in range(n_blocks):
        t = _pick(ch, live, pool[1:], ("img", "seq", "flat"))
        if t is None:
            break
        if t.kind == "img":
            new = _img_block(b, ch, t, pool, recipe, taps)
        elif t.kind == "seq":
            new = _seq_block(b, ch, t, pool, recipe, taps)
        else:
            new = _flat_block(b, ch, t, recipe)
        _mark_consumed(b, consumed)
        pool.extend(new)
        live = [p for p in pool if p.name not in consumed]
    # optional heads on the leaves, so interior widths are prunable
    leaves = [p for p in pool if p.name not in consumed]
    outs: List[T] = []
    for leaf in leaves:
        if leaf.kind == "img" and ch.chance(0.7):
            n = ch.integer(1, 8)
            outs.append(T(b.conv(leaf.name, leaf.c, n, k=1), "img", n, leaf.h, leaf.w))
            recipe.append(f"out_conv[{leaf.c}]")
        elif leaf.kind == "seq" and ch.chance(0.7):
            n = ch.integer(1, 8)
            outs.append(T(b.linear(leaf.name, leaf.c, n), "seq", n, s=leaf.s))
            recipe.append(f"out_linear[{leaf.c}]")
        else:
            outs.append(leaf)
    by_name = {p.name: p for p in pool}
    outs += [by_name[t] for t in dict.fromkeys(taps) if t not in {o.name for o in outs}]
    # declared output shapes are the generator's own bookkeeping: the full checker compares them
    # with what onnx infers, so a generator slip shows up as a 'generator' failure
    model = b.model(*[o.name for o in outs], output_shapes=[_shape(o, batch) for o in outs])
    opts = {"ratio": ch.ratio(), "round_to": ch.choice(ROUND_TO), "criterion": ch.choice(CRITERIA),
            "seed": ch.integer(0, 3)}
    # the per-kind ratios (attention heads, MLP/CNN channels) where this graphprune has them
    for key in ("head_ratio", "mlp_ratio"):
        if key in _OPTION_FIELDS and ch.chance(0.25):
            opts[key] = ch.ratio()
    return Case(model, opts, recipe, opset)


def _shape(t: T, batch) -> list:
    return {"img": [batch, t.c, t.h, t.w], "seq": [batch, t.s, t.c], "flat": [batch, t.c]}[t.kind]


def _mark_consumed(b: GraphBuilder, consumed: set) -> None:
    for n in b.nodes:
        consumed.update(i for i in n.input if i)


# ----------------------------------------------------------------------------- the property


class FuzzFailure(AssertionError):
    """A property violation; ``kind`` names the failure class (for tools/fuzz_long.py)."""

    def __init__(self, kind: str, msg: str):
        super().__init__(f"[{kind}] {msg}")
        self.kind = kind


def check_case(case: Case) -> dict:
    """The fuzz property. Raises FuzzFailure; returns the report when everything holds.

    1. the dense model passes the full checker (otherwise the generator is wrong: kind 'generator');
    2. prune() completes; 3. the pruned model passes the full checker; 4. it runs in onnxruntime
    with the dense model's output names and shapes (finite values); 5. the oracle passes;
    6. the report, applied as a plan, gives the same model bytes."""
    from graphprune.bench import random_inputs, run_model
    from graphprune.pipeline import Options, prune

    m = case.model
    try:
        onnx.checker.check_model(m, full_check=True)
    except Exception as e:  # noqa: BLE001
        raise FuzzFailure("generator", f"dense model fails the checker: {_first(e)}")
    try:
        res = prune(m, Options(bench=False, **case.opts))
    except Exception as e:  # noqa: BLE001
        raise FuzzFailure(_classify_prune_error(m, case.opts, e), _first(e)) from e
    try:
        onnx.checker.check_model(res.model, full_check=True)
    except Exception as e:  # noqa: BLE001
        raise FuzzFailure("checker", f"pruned model fails the checker: {_first(e)}")
    feed = random_inputs(m, seed=11)
    try:
        dense = run_model(m, feed)
    except Exception as e:  # noqa: BLE001
        raise FuzzFailure("generator", f"dense model does not run: {_first(e)}")
    try:
        got = run_model(res.model, feed)
    except Exception as e:  # noqa: BLE001
        raise FuzzFailure("ort", f"pruned model does not run: {_first(e)}")
    if list(dense) != list(got):
        raise FuzzFailure("outputs", f"output names changed {list(dense)} -> {list(got)}")
    for k in dense:
        if dense[k].shape != got[k].shape:
            raise FuzzFailure("shape", f"output {k} changed shape {dense[k].shape} -> {got[k].shape}")
        if np.isfinite(dense[k]).all() and not np.isfinite(got[k]).all():
            raise FuzzFailure("nonfinite", f"output {k} is not finite")
    v = res.report["verify"]
    if not v["passed"]:
        raise FuzzFailure("oracle", f"masked-dense oracle failed: {v}")
    # the report is itself a plan (`prune --plan REPORT.json`): applying it gives the same model
    try:
        again = prune(m, Options(ratio=0.0, bench=False, verify=False), plan_json=res.report)
    except Exception as e:  # noqa: BLE001
        raise FuzzFailure(f"plan-roundtrip:{type(e).__name__}", _first(e)) from e
    if again.model.SerializeToString(deterministic=True) != res.model.SerializeToString(deterministic=True):
        raise FuzzFailure("plan-roundtrip", "applying the report as a plan gives a different model")
    return res.report


def zero_width_tensors(model: onnx.ModelProto) -> List[str]:
    """Names of initializers and inferred tensors with a 0-sized dimension."""
    out = [t.name for t in model.graph.initializer if any(d == 0 for d in t.dims)]
    try:
        inf = onnx.shape_inference.infer_shapes(model)
    except Exception:  # noqa: BLE001
        return out
    for vi in list(inf.graph.value_info) + list(inf.graph.output):
        tt = vi.type.tensor_type
        if tt.HasField("shape") and any(d.HasField("dim_value") and d.dim_value == 0 for d in tt.shape.dim):
            out.append(vi.name)
    return out


def _classify_prune_error(m: onnx.ModelProto, opts: Dict, e: BaseException) -> str:
    """A failure kind for an exception out of prune(): when the pruned model (made again without
    the oracle) has a zero-width tensor, that is the cause; else the exception's type."""
    kind = f"prune:{type(e).__name__}"
    try:
        from graphprune.pipeline import Options, prune

        res = prune(m, Options(bench=False, verify=False, **opts))
    except Exception as e2:  # noqa: BLE001
        return f"prune:{type(e2).__name__}"
    if zero_width_tensors(res.model):
        return "zero-width"
    return kind


def _first(e: BaseException) -> str:
    s = str(e).strip()
    return (s.splitlines()[0] if s else type(e).__name__)[:300]


SPARSE_PATTERNS = ("unstructured", "2:4", "1:4", "block:2x1", "block:4x2")


def check_sparse_case(case: Case, pattern: str, sparsity: float) -> dict:
    """The sparse-layer property: with ``--sparsity`` / ``--pattern`` on top of the case's
    structured options and every eligible layer forced onto the kernels, prune() completes; the
    kernels agree with the densified model (1e-4 relative) and the densified model with the
    masked-dense oracle carrying the sparse zeros; the sparse model runs with the dense model's
    output names and shapes; its densified form passes the full checker and has no custom op."""
    from graphprune.bench import random_inputs, run_model
    from graphprune.pipeline import Options, prune
    from graphprune.sparsify import densify, uses_kernels

    m = case.model
    opts = dict(case.opts)
    opts.update(pattern=pattern, sparsity=None if ":" in pattern and not pattern.startswith("block")
                else sparsity, sparse_kernels="always")
    try:
        res = prune(m, Options(bench=False, **opts))
    except Exception as e:  # noqa: BLE001
        raise FuzzFailure(f"sparse:{type(e).__name__}", _first(e)) from e
    sp = res.report["sparse"]
    v = sp.get("verify", {})
    if sp["masked"] and not v.get("passed", False):
        raise FuzzFailure("sparse-oracle", f"sparse verify failed: {v}")
    if sp["masked"] and sp["converted"] != sp["masked"]:
        why = [e.get("why") for e in sp["layers"] if not e["kernel"]]
        raise FuzzFailure("sparse-kernel", f"{sp['masked'] - sp['converted']} masked layers not converted: {why[:2]}")
    if sp["converted"]:
        kv = v.get("kernels_vs_densified", {})
        if not (kv.get("passed") and kv.get("max_rel_diff", 1) <= 1e-4 or kv.get("max_abs_diff", 1) <= 1e-5):
            raise FuzzFailure("sparse-kernel", f"kernels vs densified: {kv}")
        if not uses_kernels(res.model):
            raise FuzzFailure("sparse-kernel", "layers reported converted but no custom op in the model")
    feed = random_inputs(m, seed=11)
    dense = run_model(m, feed)
    try:
        got = run_model(res.model, feed)
    except Exception as e:  # noqa: BLE001
        raise FuzzFailure("sparse-ort", f"sparse model does not run: {_first(e)}")
    if list(dense) != list(got) or any(dense[k].shape != got[k].shape for k in dense):
        raise FuzzFailure("sparse-shape", "outputs changed names or shapes")
    d = densify(res.model)
    try:
        onnx.checker.check_model(d, full_check=True)
    except Exception as e:  # noqa: BLE001
        raise FuzzFailure("densify-checker", _first(e))
    if uses_kernels(d):
        raise FuzzFailure("densify", "custom ops left after densify")
    return res.report
