"""Model inputs: batch symbols, free dims and the sizes to try them at, random feeds.

``random_inputs`` makes a feed for any model (symbolic batch at ``batch``, other free dims at a
size; integer inputs inside the index bounds the graph implies: ``index_bounds`` /
``input_ranges``); ``batch_symbols`` / ``is_batch_symbol`` find the batch; ``free_dims``,
``free_sizes`` and ``at_free_sizes`` try free dims at sizes until the model runs;
``explain_run_error`` names the input behind an out-of-range failure.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np
import onnx

from .errors import InputError
from .layers import node_attr, numel

def is_batch_symbol(sym: str) -> bool:
    return "batch" in sym.lower() or sym in ("N", "B", "n", "b")


def graph_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    inits = {t.name for t in model.graph.initializer}
    inits |= {t.values.name for t in model.graph.sparse_initializer}
    return [i for i in model.graph.input if i.name not in inits]


def batch_symbols(model: onnx.ModelProto) -> set[str]:
    """Symbols of the graph inputs that denote the batch: named like "batch", or
    on the first axis of a rank >= 2 input and on no other axis."""
    first_axis: set[str] = set()
    other_axis: set[str] = set()
    every: set[str] = set()
    for ax, d, rank in _input_dims(model):
        if d.HasField("dim_param"):
            every.add(d.dim_param)
            (first_axis if ax == 0 and rank >= 2 else other_axis).add(d.dim_param)
    return {s for s in every if is_batch_symbol(s)} | (first_axis - other_axis)


def _input_dims(model: onnx.ModelProto):
    """(axis, dim, rank) of every dim of every graph input with a shape."""
    for vi in graph_inputs(model):
        tt = vi.type.tensor_type
        if not vi.type.HasField("tensor_type") or not tt.HasField("shape"):
            continue
        rank = len(tt.shape.dim)
        for ax, d in enumerate(tt.shape.dim):
            yield ax, d, rank


FREE_SIZES = (8, 32, 64, 224)   # sizes tried for free symbolic dims until the model runs (see free_dims)


def free_dims(model: onnx.ModelProto) -> bool:
    """Whether a graph input has a symbolic or unknown dim that is not the batch (random inputs
    then pick its size: 8 first; an FPN/UNet that needs multiples of 32 runs at a larger one)."""
    batch_syms = batch_symbols(model)
    for ax, d, rank in _input_dims(model):
        if d.HasField("dim_value") and d.dim_value >= 0:
            continue
        sym = d.dim_param if d.HasField("dim_param") else ""
        if not (sym and sym in batch_syms) and not (not sym and ax == 0 and rank >= 2):
            return True
    return False


def implied_sizes(model: onnx.ModelProto) -> tuple[list[int], int | None]:
    """(sizes, cap): sizes the graph implies for free input dims, tried before FREE_SIZES' guesses
    (after the first): the non-1, non-channel dims of constants combined element-wise with
    activations (a learned position encoding [1, T, d] fixes T) and the rows of position tables;
    cap: the fewest rows of a table indexed by positions made from shapes (Range, or a slice of a
    constant position_ids buffer), above which the sequence cannot go (None when there is none)."""
    shapes, _, consumers = _consts_and_consumers(model)
    makers = {o: n for n in model.graph.node for o in n.output if o}
    sizes: list[int] = []
    cap = None

    def positions(name: str, depth: int = 0):
        """The length a position-index tensor cannot exceed, when it is made from shapes."""
        n = makers.get(name)
        if n is None or depth > 6:
            return None
        if n.op_type == "Range":
            return -1                                   # as long as the sequence: bounded by the table
        if n.op_type == "Slice" and n.input and n.input[0] in shapes and shapes[n.input[0]]:
            return int(shapes[n.input[0]][-1])          # a slice of a constant position_ids buffer
        if n.op_type in ("Unsqueeze", "Expand", "Cast", "Identity", "Reshape", "Slice", "Add") and n.input:
            return positions(n.input[0], depth + 1)
        return None

    for n in model.graph.node:
        if n.op_type == "Gather" and len(n.input) == 2 and n.input[0] in shapes and len(shapes[n.input[0]]) == 2:
            p = positions(n.input[1])
            if p is not None:
                rows = int(shapes[n.input[0]][0])
                c = rows if p < 0 else min(rows, p)
                cap = c if cap is None else min(cap, c)
                sizes.append(c)
        if n.op_type in ("Add", "Sub", "Mul", "Div") and len(n.input) == 2:
            for k in (0, 1):
                c, other = n.input[k], n.input[1 - k]
                if c in shapes and other not in shapes and len(shapes[c]) >= 3:
                    sizes += [int(d) for d in shapes[c][:-1] if int(d) > 1]
    out = [x for x in dict.fromkeys(sizes) if 1 < x <= 4096 and (cap is None or x <= cap)]
    return out, cap


def free_sizes(model: onnx.ModelProto) -> list[int]:
    """Sizes at_free_sizes tries for free dims: FREE_SIZES' first, those the graph implies
    (implied_sizes), then the rest of FREE_SIZES, none above a position table's rows."""
    if not free_dims(model):
        return list(FREE_SIZES[:1])
    implied, cap = implied_sizes(model)
    sizes = [FREE_SIZES[0]] + implied + list(FREE_SIZES[1:])
    sizes = [x for x in dict.fromkeys(sizes) if cap is None or x <= cap]
    return sizes or [FREE_SIZES[0]]


def at_free_sizes(model: onnx.ModelProto, attempt):
    """``attempt(size)`` with free symbolic dims at each of free_sizes(model) in turn (FREE_SIZES,
    with the sizes the graph implies tried before guesses; only the first when the inputs have no
    free dims), until one returns; the last failure is raised. Returns (size, result)."""
    sizes = free_sizes(model)
    for k, size in enumerate(sizes):
        try:
            return size, attempt(size)
        except Exception:
            if k == len(sizes) - 1:
                raise


def random_inputs(
    model: onnx.ModelProto, seed: int = 0, batch: int = 1,
    dims: Mapping[str, int] | None = None, other: int = 8,
    ranges: Mapping[str, tuple] | None = None,
) -> dict[str, np.ndarray]:
    """A random feed for the graph inputs that are not initializers, valid for the model.

    Floats: standard normal.  Integers: uniform in the range :func:`input_ranges` finds (the
    rows of the embedding tables they index, 0/1 for masks and type ids, positions below the
    sequence length; [0, 10) when nothing bounds them); ``ranges`` ({name: (low, high)}, high
    exclusive) overrides it.  Bools: random.  Inputs whose name contains "mask": ones.
    Symbolic dimensions: a symbol in ``dims`` takes that value; a batch symbol (named like
    "batch", or on the first axis of a rank >= 2 input and on no other axis) takes ``batch``;
    any other symbol or unknown dim takes ``other`` (8)."""
    dims = dict(dims or {})
    rng = np.random.default_rng(seed)
    ins = graph_inputs(model)
    batch_syms = batch_symbols(model)
    bounds = input_ranges(model)
    bounds.update(ranges or {})

    def size(sym: str, ax: int, rank: int) -> int:
        if sym and sym in dims:
            return int(dims[sym])
        if sym and sym in batch_syms:
            return batch
        if not sym and ax == 0 and rank >= 2:
            return batch
        return other

    feed: dict[str, np.ndarray] = {}
    for vi in ins:
        if not vi.type.HasField("tensor_type"):
            raise InputError(f"graph input {vi.name!r} is not a tensor; cannot make random data for it")
        tt = vi.type.tensor_type
        try:
            dtype = onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type)
        except Exception:
            raise InputError(f"graph input {vi.name!r} has an unsupported element type") from None
        shape: list[int] = []
        if tt.HasField("shape"):
            rank = len(tt.shape.dim)
            for ax, d in enumerate(tt.shape.dim):
                if d.HasField("dim_value") and d.dim_value >= 0:
                    shape.append(int(d.dim_value))
                else:
                    shape.append(size(d.dim_param if d.HasField("dim_param") else "", ax, rank))
        if vi.name in (ranges or {}):
            lo, hi = ranges[vi.name]
            arr = _uniform(rng, lo, hi, shape, dtype)
        elif "mask" in vi.name.lower():
            arr = np.ones(shape, dtype=dtype)
        elif dtype == np.bool_:
            arr = np.asarray(rng.random(shape) < 0.5)
        elif np.issubdtype(dtype, np.integer):
            lo, hi = bounds.get(vi.name, (0, 10))
            if _is_position(vi.name) and shape:
                # positions 0, 1, ... along the last axis (wrapped below the bound)
                arr = np.broadcast_to(np.arange(shape[-1]) % max(hi - lo, 1) + lo, shape).astype(dtype)
            else:
                arr = _uniform(rng, lo, hi, shape, dtype)
        elif dtype.kind == "f" or dtype.kind == "V" or dtype.kind == "c":
            arr = rng.standard_normal(shape).astype(dtype)
        elif dtype == object:
            arr = np.full(shape, "a", dtype=object)
        else:
            arr = rng.standard_normal(shape).astype(dtype)
        feed[vi.name] = arr
    return feed


def _uniform(rng, lo, hi, shape, dtype) -> np.ndarray:
    if np.dtype(dtype).kind in "iub":
        return rng.integers(int(lo), max(int(hi), int(lo) + 1), size=shape).astype(dtype)
    return rng.uniform(float(lo), float(hi), size=shape).astype(dtype)


def _is_position(name: str) -> bool:
    return "position" in name.lower() or name.lower() in ("pos", "pos_ids", "positions")


def _is_type_ids(name: str) -> bool:
    n = name.lower()
    return "token_type" in n or "segment" in n or n in ("type_ids", "tt_ids")


# ops whose output holds (a subset or an arrangement of) the values of their data input
_VALUE_PASS = {"Cast": (0,), "Identity": (0,), "Unsqueeze": (0,), "Squeeze": (0,), "Reshape": (0,),
               "Flatten": (0,), "Expand": (0,), "Slice": (0,), "Transpose": (0,), "Tile": (0,),
               "Gather": (0,), "GatherElements": (0,), "GatherND": (0,), "Concat": None, "Split": (0,),
               "Max": None, "Min": None, "Neg": (0,), "Abs": (0,)}
# ops whose input at this position indexes along an axis of their data input (position, axis attr, default)
_INDEXES = {"Gather": (1, "axis", 0), "GatherElements": (1, "axis", 0)}
# com.microsoft EmbedLayerNormalization: input position -> the table it indexes
_EMBED_LN = {0: 2, 1: 4, 8: 3}


def _consts_and_consumers(model: onnx.ModelProto):
    g = model.graph
    shapes = {t.name: list(t.dims) for t in g.initializer}
    small = {t.name: t for t in g.initializer if numel(t.dims) <= 64}
    for n in g.node:
        if n.op_type == "Constant" and n.output:
            for a in n.attribute:
                if a.name == "value":
                    shapes[n.output[0]] = list(a.t.dims)
                    if numel(a.t.dims) <= 64:
                        small[n.output[0]] = a.t
    consumers: dict[str, list] = {}
    for n in g.node:
        for k, x in enumerate(n.input):
            if x:
                consumers.setdefault(x, []).append((n, k))
    return shapes, small, consumers


def index_bounds(model: onnx.ModelProto) -> dict[str, list[tuple[int, int, str, str]]]:
    """For every integer graph input, the index ranges it must stay in: a list of
    (low, high exclusive, op type, node name), one per constant table its values reach as
    indices (Gather, GatherElements, EmbedLayerNormalization, OneHot), followed through value
    moves (Cast, Unsqueeze, Reshape, Concat, ...) and shifts by a constant (Add/Sub)."""
    from onnx import numpy_helper

    shapes, small, consumers = _consts_and_consumers(model)
    out: dict[str, list] = {}
    for vi in graph_inputs(model):
        tt = vi.type.tensor_type
        if not vi.type.HasField("tensor_type"):
            continue
        try:
            if not np.issubdtype(onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type), np.integer):
                continue
        except Exception:
            continue
        found: list = []
        seen: set = set()
        todo = [(vi.name, 0, 0)]           # tensor, min and max constant added so far
        while todo:
            name, cmin, cmax = todo.pop()
            if (name, cmin, cmax) in seen or len(seen) > 10000:
                continue
            seen.add((name, cmin, cmax))
            for n, k in consumers.get(name, []):
                op = n.op_type
                label = n.name or (n.output[0] if n.output else op)
                if n.domain == "com.microsoft" and op == "EmbedLayerNormalization" and k in _EMBED_LN:
                    t = n.input[_EMBED_LN[k]] if len(n.input) > _EMBED_LN[k] else ""
                    if t in shapes and shapes[t]:
                        found.append((max(0, -cmin), shapes[t][0] - cmax, op, label))
                    continue
                if n.domain not in ("", "ai.onnx"):
                    continue
                if op in _INDEXES and k == _INDEXES[op][0]:
                    data = n.input[0]
                    if data in shapes and shapes[data]:
                        ax = int(node_attr(n, _INDEXES[op][1], _INDEXES[op][2]))
                        rank = len(shapes[data])
                        if -rank <= ax < rank:
                            found.append((max(0, -cmin), shapes[data][ax] - cmax, op, label))
                    continue
                if op == "OneHot" and k == 0 and len(n.input) > 1 and n.input[1] in small:
                    depth = int(np.asarray(numpy_helper.to_array(small[n.input[1]])).reshape(-1)[0])
                    found.append((max(0, -cmin), depth - cmax, op, label))
                    continue
                if op in ("Add", "Sub") and len(n.input) == 2:
                    other = n.input[1 - k]
                    if other not in small:
                        continue
                    c = np.asarray(numpy_helper.to_array(small[other]))
                    if c.size == 0 or c.dtype.kind not in "iu":
                        continue
                    if op == "Sub":
                        if k != 0:
                            continue
                        c = -c
                    todo.append((n.output[0], cmin + int(c.min()), cmax + int(c.max())))
                    continue
                slots = _VALUE_PASS.get(op, ())
                if slots is None or k in slots:
                    for o in n.output:
                        if o:
                            todo.append((o, cmin, cmax))
        if found:
            out[vi.name] = found
    return out


def input_ranges(model: onnx.ModelProto) -> dict[str, tuple[int, int]]:
    """{integer input: (low, high exclusive)} that random feeds use: the tightest of the index
    bounds (:func:`index_bounds`); type ids (``token_type_ids``, ``segment_ids``) at most
    [0, 2)."""
    out = {}
    for name, found in index_bounds(model).items():
        lo = max(f[0] for f in found)
        hi = min(f[1] for f in found)
        if hi > lo:
            out[name] = (lo, hi)
    for vi in graph_inputs(model):
        if _is_type_ids(vi.name):
            lo, hi = out.get(vi.name, (0, 2))
            out[vi.name] = (lo, min(hi, lo + 2))
    return out


def explain_run_error(model: onnx.ModelProto, feed: Mapping[str, np.ndarray] | None, err: BaseException) -> str:
    """A sentence naming the input and node behind an onnxruntime failure, when the failure is
    an index out of range at a node some integer input reaches ('' otherwise)."""
    import re

    msg = str(err)
    m = re.search(r"running (\w+) node\. Name:'([^']*)'", msg)
    if not m or not re.search(r"out of (data )?bounds|out of range|must be within", msg):
        return ""
    op, node = m.group(1), m.group(2)
    for name, found in index_bounds(model).items():
        for lo, hi, fop, label in found:
            if label == node:
                got = ""
                if feed is not None and name in feed and np.size(feed[name]):
                    a = np.asarray(feed[name])
                    got = f" (fed values in [{a.min()}, {a.max()}])"
                return (f"input {name!r}{got} indexes {fop} {node!r}, which takes [{lo}, {hi - 1}]: "
                        f"pass --input {name}={lo}:{hi} or --inputs SAMPLE.npz")
    return f"an input value is out of range at {op} {node!r}: pass --input NAME=LOW:HIGH or --inputs SAMPLE.npz"


def parse_input_range(text: str) -> tuple[str, tuple]:
    """``NAME=LOW:HIGH`` (high exclusive) -> (name, (low, high)); ValueError when malformed."""
    name, sep, rng = text.rpartition("=")
    lo, sep2, hi = rng.partition(":")
    if not sep or not name or not sep2:
        raise ValueError(f"--input {text!r}: expected NAME=LOW:HIGH")
    try:
        low, high = (int(lo), int(hi)) if "." not in rng and "e" not in rng.lower() else (float(lo), float(hi))
    except ValueError:
        raise ValueError(f"--input {text!r}: LOW and HIGH must be numbers") from None
    if not high > low:
        raise ValueError(f"--input {text!r}: HIGH must be greater than LOW (HIGH is exclusive)")
    return name, (low, high)
