"""Per-op channel rules: one small module per op family, all in one registry.

A rule is ``fn(ctx: NodeCtx) -> None``. It reads its inputs' channel descriptors
(``ctx.atoms`` / ``ctx.desc``), sets its outputs' descriptors, couples atoms, records members
(constant slices), constraints and rewrite callbacks. Any input channel axis a rule does not
read is blocked by the engine, so a rule that forgets a case is safe, never silently wrong.
Ops without a rule block every channel they touch.

The table of ops and what they do is in docs/ops.md (generated from RULE_DOCS).
"""

from typing import Callable, Dict, Tuple

RULES: Dict[Tuple[str, str], Callable] = {}
RULE_DOCS: Dict[str, str] = {}


def register(*ops: str, domain: str = "", doc: str = ""):
    def deco(fn):
        for op in ops:
            RULES[(domain, op)] = fn
            RULE_DOCS[op if not domain else f"{domain}::{op}"] = doc or (fn.__doc__ or "").strip().splitlines()[0]
        return fn
    return deco


def norm_axis(axis: int, rank: int) -> int:
    return axis + rank if axis < 0 else axis


from . import conv, gemm, einsum, norm, elementwise, pool, tensor, reshape, shape, contrib  # noqa: E402,F401
