"""Einsum: channels follow their index letter.

An index letter that reaches the output carries its channels there (a constant with the same
letter is a per-channel parameter, another activation with it is coupled). A letter summed away
is consumed by the one constant that shares it (that constant's slice is the consumer input);
summed away against another activation, or by itself, it blocks. A letter only a constant has and
the output keeps opens a new channel space on that constant. Repeated letters (diagonals) block.
"""

from typing import Dict, List, Optional, Tuple

from ..engine import AnalysisError
from . import register


def _labels(term: str, rank: int, n_ell: int) -> List[str]:
    if "..." in term:
        pre, post = term.split("...")
        k = rank - len(pre) - len(post)
        if k < 0 or k > n_ell:
            raise AnalysisError(f"Einsum term {term!r} does not fit rank {rank}")
        # ellipsis dims are right-aligned across operands (numpy broadcasting)
        return list(pre) + [f".{n_ell - k + i}" for i in range(k)] + list(post)
    if len(term) != rank:
        raise AnalysisError(f"Einsum term {term!r} does not fit rank {rank}")
    return list(term)


def parse(equation: str, ranks: List[int]) -> Tuple[List[List[str]], List[str]]:
    """Letters per input axis and per output axis; ellipsis dims become '.0', '.1', ..."""
    eq = equation.replace(" ", "")
    lhs, _, rhs = eq.partition("->")
    terms = lhs.split(",")
    if len(terms) != len(ranks):
        raise AnalysisError("Einsum equation and inputs differ in number")
    n_ell = max((r - len(t.replace("...", "")) for t, r in zip(terms, ranks) if "..." in t), default=0)
    ins = [_labels(t, r, n_ell) for t, r in zip(terms, ranks)]
    ell = [f".{i}" for i in range(n_ell)]
    if "->" in eq:
        if "..." in rhs:
            pre, post = rhs.split("...")
            out = list(pre) + ell + list(post)
        else:
            out = list(rhs)
    else:                                   # implicit: ellipsis, then letters seen once, sorted
        counts: Dict[str, int] = {}
        for labs in ins:
            for lab in labs:
                counts[lab] = counts.get(lab, 0) + 1
        out = ell + sorted(k for k, v in counts.items() if v == 1 and not k.startswith("."))
    return ins, out


@register("Einsum", doc="channels follow their index letter: kept letters pass through (coupled across "
                        "activations, per-channel for constants), letters summed against one constant are "
                        "consumed by it, a constant's own kept letters are new spaces; sums of activations block")
def einsum(ctx):
    """Einsum by index letters."""
    names = list(ctx.inputs)
    y = ctx.outputs[0]
    ranks = [ctx.rank(n) for n in names]
    if any(r is None for r in ranks):
        raise AnalysisError("rank unknown")
    eq = ctx.attr("equation", b"")
    eq = eq.decode() if isinstance(eq, bytes) else str(eq)
    ins, out = parse(eq, ranks)
    if any(len(set(labs)) != len(labs) for labs in ins) or len(set(out)) != len(out):
        ctx.block_inputs(f"Einsum {ctx.label} takes a diagonal")
        return
    const = [ctx.is_const(n) for n in names]
    if all(const):
        return
    where: Dict[str, List[Tuple[int, int]]] = {}
    for i, labs in enumerate(ins):
        for ax, lab in enumerate(labs):
            where.setdefault(lab, []).append((i, ax))

    def dim(i: int, ax: int) -> Optional[int]:
        s = ctx.shape(names[i]) if not const[i] else ctx.const_shape(names[i])
        return s[ax] if s is not None and isinstance(s[ax], int) else None

    carried = set()
    for i, labs in enumerate(ins):
        if const[i]:
            continue
        for ax, atoms in ctx.desc(names[i]).items():
            lab = labs[ax]
            others = [(j, bx) for j, bx in where[lab] if j != i]
            if lab in out:
                ok = True
                for j, bx in others:
                    if const[j]:
                        if dim(j, bx) != 1:
                            ctx.member(names[j], bx, "param", atoms)
                        continue
                    other = ctx.atoms(names[j], bx)
                    if other is not None:
                        ctx.couple(atoms, other)
                    elif dim(j, bx) != 1:
                        ctx.block(atoms, f"Einsum {ctx.label} index {lab} meets an unprunable operand")
                        ok = False
                if ok and lab not in carried:
                    ctx.set_desc(y, out.index(lab), atoms)
                    carried.add(lab)
                continue
            consts = [(j, bx) for j, bx in others if const[j] and dim(j, bx) != 1]
            acts = [(j, bx) for j, bx in others if not const[j] and dim(j, bx) != 1]
            if acts:
                ctx.block(atoms, f"Einsum {ctx.label} sums index {lab} of two activations")
            elif len(consts) != 1:
                ctx.block(atoms, f"Einsum {ctx.label} sums index {lab} away")
            else:
                j, bx = consts[0]
                ctx.member(names[j], bx, "in", atoms)
    for lab in out:
        occ = where.get(lab, [])
        if len(occ) != 1 or not const[occ[0][0]]:
            continue
        j, bx = occ[0]
        n = dim(j, bx)
        if n is None or n == 1:
            continue
        space = ctx.new_space(n, names[j])
        ctx.member(names[j], bx, "out", space)
        ctx.set_desc(y, out.index(lab), space)
