"""Reshape, Flatten, Transpose, Squeeze, Unsqueeze, Expand, Tile: channels change axes.

Reshape splits the input and output shapes into *runs* of axes with equal products. In a run
that holds one channel axis, the channel descriptor is broadcast over the run and reshaped:
merging (Flatten, [H, D] -> H*D) repeats atoms; splitting (C -> [G, C/G]) must leave the
channels on one output axis, so atoms are coupled along the others: whole blocks become one
unit (attention heads, GroupNorm groups), or, for a channel shuffle (Reshape -> Transpose ->
Reshape), the same index in every block becomes one unit.
"""

import numpy as np

from ...layers import node_attr
from ..engine import AnalysisError
from . import norm_axis, register
from .shape import const_items, shape_calculus


def _runs_from_left(ishape, oshape):
    """Pair contiguous axis runs of equal size product from the left until the shapes end or a
    symbolic dimension cannot be paired. Returns (runs, next input axis, next output axis)."""
    runs = []
    i = j = 0
    ni, no = len(ishape), len(oshape)
    while i < ni or j < no:
        if i < ni and ishape[i] == 1 and (j >= no or oshape[j] != 1):
            runs.append(([i], []))
            i += 1
            continue
        if j < no and oshape[j] == 1 and (i >= ni or ishape[i] != 1):
            runs.append(([], [j]))
            j += 1
            continue
        if i >= ni or j >= no:
            raise AnalysisError("reshape does not preserve the element count")
        a, b = ishape[i], oshape[j]
        if not isinstance(a, int) or not isinstance(b, int):
            if a == b and a is not None:
                runs.append(([i], [j]))
                i += 1
                j += 1
                continue
            return runs, i, j
        ia, ja = [i], [j]
        pa, pb = a, b
        i2, j2 = i + 1, j + 1
        while pa != pb:
            if pa < pb:
                if i2 >= ni or not isinstance(ishape[i2], int):
                    return runs, i, j
                pa *= ishape[i2]
                ia.append(i2)
                i2 += 1
            else:
                if j2 >= no or not isinstance(oshape[j2], int):
                    return runs, i, j
                pb *= oshape[j2]
                ja.append(j2)
                j2 += 1
        runs.append((ia, ja))
        i, j = i2, j2
    return runs, i, j


def axis_runs(ishape, oshape):
    """Pair contiguous axis runs of equal size product. Returns [(in_axes, out_axes)].

    Runs are paired from the left, then from the right; symbolic dimensions that pair with
    nothing ([N*T, C] -> [N, T, C], a batch flattened by TF's Tensordot) form one middle run,
    which may not carry channels (``map_reshape`` refuses to broadcast over it)."""
    ni, no = len(ishape), len(oshape)
    left, i, j = _runs_from_left(ishape, oshape)
    if i == ni and j == no:
        return left
    right, ri, rj = _runs_from_left(list(ishape[i:])[::-1], list(oshape[j:])[::-1])
    right = [([ni - 1 - a for a in ia][::-1], [no - 1 - b for b in ja][::-1]) for ia, ja in right][::-1]
    mid_i, mid_j = list(range(i, ni - ri)), list(range(j, no - rj))
    if not mid_i or not mid_j:
        raise AnalysisError("cannot align symbolic dimensions")
    return left + [(mid_i, mid_j)] + right


def _is_shuffle(ctx, y, out_axes):
    """Reshape -> Transpose that permutes axes inside this run -> ... : a channel shuffle."""
    cons = ctx.readers(y)
    if len(cons) != 1:
        return False
    node = cons[0]
    if node.op_type != "Transpose":
        return False
    perm = node_attr(node, "perm")
    if perm is None:
        return False
    perm = list(perm)
    moved = [k for k in range(len(perm)) if perm[k] != k]
    return bool(moved) and set(moved) <= set(out_axes)


def map_reshape(ctx, x, y, ishape, oshape):
    """Set y's descriptors from x's for a reshape ishape -> oshape. Returns {out_axis: atoms}."""
    desc = ctx.desc(x)
    if not desc:
        return {}
    out = {}
    for ia, ja in axis_runs(ishape, oshape):
        carried = [a for a in ia if a in desc]
        if not carried:
            continue
        if len(carried) > 1:
            for a in carried:
                ctx.block(desc[a], f"{ctx.op} {ctx.label} merges two channel axes")
            continue
        ax = carried[0]
        atoms = desc[ax]
        if not ja:
            ctx.block(atoms, f"{ctx.op} {ctx.label} removes a channel axis")
            continue
        idims = [ishape[k] for k in ia]
        odims = [oshape[k] for k in ja]
        if not all(isinstance(d, int) for d in idims + odims) and not (len(ia) == 1 and len(ja) == 1):
            ctx.block(atoms, f"{ctx.op} {ctx.label}: cannot align symbolic dimensions")
            continue
        if len(ia) == 1 and len(ja) == 1:
            out[ja[0]] = atoms
            continue
        bshape = [1] * len(ia)
        bshape[ia.index(ax)] = len(atoms)
        J = np.broadcast_to(atoms.reshape(bshape), idims).reshape(odims)
        if len(ja) == 1:
            out[ja[0]] = J.ravel().copy()
            continue
        R = ctx.roots(J)
        chosen = None
        for k in range(len(ja)):
            if odims[k] == 1:
                continue
            sl = [0] * len(ja)
            sl[k] = slice(None)
            line = R[tuple(sl)]
            shp = [1] * len(ja)
            shp[k] = odims[k]
            if np.array_equal(R, np.broadcast_to(line.reshape(shp), odims)):
                chosen = k
                break
        if chosen is None:
            big = [k for k in range(len(ja)) if odims[k] > 1]
            if _is_shuffle(ctx, y, ja):
                chosen = big[-1]
            else:
                # blocks of the innermost axis become units (heads of size D, GroupNorm
                # groups); with several outer axes ([3, H, D] of a fused QKV) the largest one
                # carries the units, so head h of Q, K and V goes together
                outer = big[:-1] or big
                chosen = max(outer, key=lambda k: (odims[k], -k))
            moved = np.moveaxis(J, chosen, 0).reshape(odims[chosen], -1)
            for row in moved:
                ctx.couple_all(row)
            if not _is_shuffle(ctx, y, ja):
                ctx.mark_heads(moved[:, 0].copy())
        sl = [0] * len(ja)
        sl[chosen] = slice(None)
        out[ja[chosen]] = J[tuple(sl)].copy()
    for k, atoms in out.items():
        ctx.set_desc(y, k, atoms)
    return out


def _resolve(ctx, items, ishape):
    """Output shape from target items and the input shape (symbolic dims allowed); None if unknown."""
    dims = []
    neg = None
    for i, it in enumerate(items):
        if it[0] == "lit":
            if it[1] == -1:
                if neg is not None:
                    return None
                neg = i
                dims.append(None)
            elif it[1] == 0:
                dims.append(ishape[i] if i < len(ishape) else None)
            else:
                dims.append(it[1])
        elif it[0] == "dim":
            shp = ctx.shape(it[1])
            dims.append(shp[it[2]] if shp is not None and it[2] < len(shp) else None)
        else:
            dims.append(None)
    known = [d for k, d in enumerate(dims) if k != neg]
    if any(d is None for d in known) or any(d is None for d in ishape):
        return None
    if neg is not None:
        in_static = int(np.prod([d for d in ishape if isinstance(d, int)]))
        out_static = int(np.prod([d for d in known if isinstance(d, int)]))
        if sorted(d for d in ishape if isinstance(d, str)) != sorted(d for d in known if isinstance(d, str)):
            return None
        if out_static == 0 or in_static % out_static:
            return None
        dims[neg] = in_static // out_static
    return dims


def _copied_dim(ctx, atoms, src, why: str) -> None:
    """A target dimension that copies another tensor's (``src``: that dimension's atoms): both carry no
    channels, or the same number, which are coupled; otherwise AnalysisError(why)."""
    if atoms is None and src is None:
        return
    if atoms is not None and src is not None and len(atoms) == len(src):
        ctx.couple(atoms, src)
        return
    raise AnalysisError(why)


@register("Reshape", doc="channels split/merge/move by run; target constants (or the constants of a "
                         "run-time Shape/Gather/Concat chain) are rewritten")
def reshape(ctx):
    """Reshape(data, shape)."""
    if shape_calculus(ctx):
        return
    x, t = ctx.input(0), ctx.input(1)
    y = ctx.outputs[0]
    if not ctx.desc(x):
        return
    items = ctx.shapeval(t)
    if items is None:
        items = const_items(ctx, t, 1)
    if items is None:
        raise AnalysisError("target shape is not constant and not traceable")
    ishape, oshape = ctx.shape(x), ctx.shape(y)
    if ishape is None:
        raise AnalysisError("input shape unknown")
    resolved = _resolve(ctx, items, ishape)
    if resolved is not None:
        oshape = resolved
    if oshape is None or len(oshape) != len(items):
        raise AnalysisError("output shape unknown")
    if int(ctx.attr("allowzero", 0)) and any(it[0] == "lit" and it[1] == 0 for it in items):
        raise AnalysisError("allowzero reshape")
    out = map_reshape(ctx, x, y, ishape, oshape)
    idesc = ctx.peek_desc(x)
    lits = []
    for i, it in enumerate(items):
        atoms = out.get(i)
        kind = it[0]
        if kind == "lit" and it[1] == -1:
            continue
        if kind == "lit" and it[1] == 0:
            _copied_dim(ctx, atoms, idesc.get(i), "a copied (0) dimension changes width")
            continue
        if kind == "dim":
            _copied_dim(ctx, atoms, ctx.peek_atoms(it[1], it[2]),
                        "a run-time dimension does not follow the channel width")
            continue
        if atoms is None:
            continue
        if kind == "lit" and it[2] is not None:
            lits.append((it[2], atoms))
            continue
        raise AnalysisError("target dimension of a channel axis cannot be rewritten")
    if lits:
        _rewrite_lits(ctx, lits)


def _rewrite_lits(ctx, lits):
    """lits: [((const_name, flat_index, node_index, input_k), atoms)]."""
    for (name, idx, node_index, k), atoms in lits:
        ctx.shape_member(name, [idx], atoms)
    by_slot = {}
    for (name, idx, node_index, k), atoms in lits:
        by_slot.setdefault((node_index, k, name), []).append((idx, atoms))

    def fn(rw):
        for (node_index, k, name), entries in by_slot.items():
            cur = rw.input_const(node_index, k)    # other rules may have rewritten other entries
            v = np.array(rw.const(name) if cur is None else cur).copy()
            flat = v.reshape(-1)
            for idx, atoms in entries:
                flat[idx] = rw.count(atoms)
            rw.set_input_const(node_index, k, flat.reshape(v.shape))

    ctx.on_rewrite(fn)


@register("Flatten", doc="merges axes [0, axis) and [axis, rank): channel atoms repeat")
def flatten(ctx):
    """Flatten(x, axis)."""
    x = ctx.input(0)
    y = ctx.outputs[0]
    if not ctx.desc(x):
        return
    ishape = ctx.shape(x)
    if ishape is None:
        raise AnalysisError("shape unknown")
    r = len(ishape)
    axis = norm_axis(int(ctx.attr("axis", 1)), r)

    def prod(ds):
        p = 1
        for d in ds:
            if not isinstance(d, int):
                return d if len(ds) == 1 else None
            p *= d
        return p

    oshape = [prod(ishape[:axis]), prod(ishape[axis:])]
    if oshape[1] is None or (oshape[0] is None and any(a < axis for a in ctx.desc(x))):
        raise AnalysisError("flattened size unknown")
    ishape2 = list(ishape)
    if oshape[0] is None:
        # leading (batch) axes are symbolic: treat them as one opaque axis
        if axis != 1:
            raise AnalysisError("flattened size unknown")
        oshape[0] = ishape[0] if ishape[0] is not None else "?"
        ishape2[0] = oshape[0]
    map_reshape(ctx, x, y, ishape2, oshape)


@register("Transpose", doc="channel axes move with the permutation")
def transpose(ctx):
    """Transpose(x, perm)."""
    x = ctx.input(0)
    r = ctx.rank(x)
    perm = ctx.attr("perm")
    if perm is None:
        if r is None:
            raise AnalysisError("rank unknown")
        perm = list(reversed(range(r)))
    inv = {int(p): i for i, p in enumerate(perm)}
    ctx.pass_through(x, ctx.outputs[0], inv)


def _axes(ctx):
    if ctx.input(1):
        v = ctx.const(ctx.input(1))
        if v is None:
            raise AnalysisError("axes are not constant")
        return [int(a) for a in np.atleast_1d(v)]
    a = ctx.attr("axes")
    return None if a is None else [int(v) for v in a]


@register("Squeeze", "Unsqueeze", doc="channel axes shift as size-1 axes are removed or inserted")
def squeeze(ctx):
    """Squeeze / Unsqueeze."""
    if shape_calculus(ctx):
        return
    x = ctx.input(0)
    y = ctx.outputs[0]
    axes = _axes(ctx)
    if ctx.op == "Squeeze":
        r = ctx.known_rank(x)
        if axes is None:
            shp = ctx.shape(x)
            axes = [i for i, d in enumerate(shp) if d == 1]
        axes = sorted(norm_axis(a, r) for a in axes)
        amap = {a: a - sum(1 for s in axes if s < a) for a in range(r) if a not in axes}
    else:
        ry = ctx.known_rank(y)
        axes = sorted(norm_axis(a, ry) for a in axes)
        kept = [a for a in range(ry) if a not in axes]
        amap = {i: a for i, a in enumerate(kept)}
    ctx.pass_through(x, y, amap)


@register("Expand", doc="broadcast; a target constant equal to the channel width is rewritten")
def expand(ctx):
    """Expand(x, shape)."""
    x, t = ctx.input(0), ctx.input(1)
    y = ctx.outputs[0]
    r, ry = ctx.rank(x), ctx.rank(y)
    desc = ctx.desc(x)
    items = ctx.shapeval(t)
    if not desc and ctx.is_const(x):
        # an expanded constant (class token, learned query): its axes are parameter spaces
        # that join whatever they are later coupled with
        v = ctx.const(x)
        for ax in range(v.ndim):
            if v.shape[ax] > 1:
                atoms = ctx.new_space(v.shape[ax], x)
                ctx.member(x, ax, "param", atoms)
                ctx.set_desc(x, ax, atoms)
        desc = ctx.desc(x)
    if not desc:
        # a channel-sized axis created from a run-time size follows that space
        for ax, it in enumerate(items or []):
            if it[0] == "dim":
                atoms = ctx.atoms(it[1], it[2])
                if atoms is not None:
                    ctx.set_desc(y, ax, atoms)
        return
    if items is None:
        items = const_items(ctx, t, 1)
    if items is None or r is None or ry is None:
        raise AnalysisError("target shape is not constant")
    lits = []
    for ax, atoms in desc.items():
        oax = ax + ry - r
        i = oax - (ry - len(items))
        if i >= 0:
            it = items[i]
            if it[0] == "lit" and it[1] == 1:
                pass
            elif it[0] == "lit" and it[1] == len(atoms) and it[2] is not None:
                lits.append((it[2], atoms))
            elif it[0] == "dim" and ctx.peek_atoms(it[1], it[2]) is not None:
                ctx.couple(atoms, ctx.peek_atoms(it[1], it[2]))
            else:
                raise AnalysisError("target of a channel axis cannot be rewritten")
        ctx.set_desc(y, oax, atoms)
    if lits:
        _rewrite_lits(ctx, lits)


@register("Tile", doc="a tiled channel axis repeats its atoms")
def tile(ctx):
    """Tile(x, repeats)."""
    x = ctx.input(0)
    reps = ctx.const(ctx.input(1))
    if reps is None:
        raise AnalysisError("repeats are not constant")
    for ax, atoms in ctx.desc(x).items():
        ctx.set_desc(ctx.outputs[0], ax, np.tile(atoms, int(reps[ax])))
