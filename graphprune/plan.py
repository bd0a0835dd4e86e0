"""The plan step: the plan — which units of which group survive — and its JSON form.

The plan is the one artifact the steps hand each other. JSON (docs/design.md §1)::

    {"groups": [{"id", "name", "channels_before", "channels_after", "exact", "blocked",
                 "members": [{"tensor", "axis", "role", "kept", ["positions"], ["groups"]}]}]}

``kept`` lists surviving indices along ``axis`` of the input model's tensor. ``positions``
(only when the group covers part of the axis, e.g. a Concat consumer) lists the indices the
group covers; ``groups`` marks a grouped-conv input axis (indices in the full Cin space).
Shape members (role ``shape``) name the constants whose values encode a width.
"""

from __future__ import annotations

import fnmatch
import math
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Set, Tuple

import numpy as np

from .analyze import Group
from .errors import UsageError


@dataclass
class Plan:
    groups: List[Group]
    keep: Dict[int, np.ndarray]                 # group id -> bool mask over group.units
    options: Dict[str, object] = field(default_factory=dict)

    def removed_units(self) -> Set[int]:
        out: Set[int] = set()
        for g in self.groups:
            mask = self.keep.get(g.id)
            if mask is not None:
                out.update(g.units[~mask].tolist())
        return out

    def n_pruned_groups(self) -> int:
        return sum(1 for g in self.groups if g.id in self.keep and not self.keep[g.id].all())

    def to_json(self) -> dict:
        removed = self.removed_units()
        rem = np.array(sorted(removed), dtype=np.int64)
        out = []
        for g in self.groups:
            mask = self.keep.get(g.id, np.ones(len(g.units), bool))
            members = []
            for gm in g.members:
                m = gm.member
                keep_pos = gm.positions[~np.isin(gm.units, rem)]
                d = {"tensor": m.tensor, "axis": int(m.axis), "role": m.role, "kept": keep_pos.tolist()}
                if not gm.whole:
                    d["positions"] = gm.positions.tolist()
                if m.groups > 1:
                    d["groups"] = int(m.groups)
                members.append(d)
            for sm in g.shape_members:
                members.append({"tensor": sm.tensor, "axis": 0, "role": "shape", "index": list(sm.index)})
            entry = {
                "id": g.id,
                "name": g.name,
                "kind": g.kind,
                "channels_before": int(len(g.units)),
                "channels_after": int(mask.sum()),
                "exact": g.exact,
                "members": members,
            }
            if g.blocked:
                entry["blocked"] = sorted(set(g.blocked.values()))
                entry["blocked_channels"] = len(g.blocked)
            if g.inexact:
                entry["inexact"] = sorted(set(g.inexact.values()))
            out.append(entry)
        return {"groups": out}

    @classmethod
    def from_json(cls, data: dict, groups: List[Group]) -> "Plan":
        """Read kept indices from an (edited) plan and turn them into unit decisions."""
        try:
            entries = data["groups"]
        except (KeyError, TypeError):
            raise UsageError("plan has no 'groups' list")
        removed: Set[int] = set()
        kept: Set[int] = set()
        index = {}
        for g in groups:
            for gm in g.members:
                index[(gm.member.tensor, gm.member.axis, g.id)] = gm
        by_id = {g.id: g for g in groups}
        for e in entries:
            gid = e.get("id")
            if gid not in by_id:
                raise UsageError(f"plan group {gid} does not exist in this model")
            for md in e.get("members", []):
                if md.get("role") == "shape":
                    continue
                gm = index.get((md.get("tensor"), md.get("axis"), gid))
                if gm is None:
                    raise UsageError(f"plan member {md.get('tensor')} axis {md.get('axis')} is not in group {gid}")
                keep_pos = set(int(k) for k in md.get("kept", []))
                pos = gm.positions.tolist()
                if not keep_pos <= set(pos):
                    raise UsageError(f"plan member {md['tensor']} keeps indices outside its range")
                for p, u in zip(pos, gm.units.tolist()):
                    (kept if p in keep_pos else removed).add(u)
        clash = kept & removed
        if clash:
            raise UsageError(f"plan is inconsistent: {len(clash)} channel(s) kept in one member and removed in another")
        keep = {}
        for g in groups:
            mask = ~np.isin(g.units, np.array(sorted(removed), dtype=np.int64))
            if not mask.all():
                if any(u in g.blocked for u in g.units[~mask].tolist()):
                    raise UsageError(f"plan removes blocked channels of group {g.id} ({g.describe_block()})")
                if not mask.any():
                    raise UsageError(f"plan removes every channel of group {g.id}")
                _check_constraints(g, mask)
            keep[g.id] = mask
        return cls(groups, keep, {"source": "plan"})


def _check_constraints(g: Group, mask: np.ndarray) -> None:
    kept = set(g.units[mask].tolist())
    for blocks, why in zip(g.constraints, g.constraint_reasons):
        counts = {sum(1 for u in b.tolist() if u in kept) for b in blocks}
        if len(counts) > 1:
            raise UsageError(f"plan keeps unequal channel counts across blocks ({why})")


def _matches(g: Group, patterns: Sequence[str]) -> bool:
    if not patterns:
        return False
    names = {g.name}
    for gm in g.members:
        names.add(gm.member.tensor)
        names.add(gm.member.node)
    return any(fnmatch.fnmatchcase(n, p) or n == p for n in names for p in patterns)


def kept_count(n: int, ratio: float, round_to: int, min_keep: int) -> int:
    k = n - int(math.floor(n * ratio + 1e-9))
    if round_to > 1 and k < n:
        k = min(n, int(math.ceil(k / round_to)) * round_to)
    return max(min_keep, min(n, k))


def eligible(g: Group, scores: Dict[int, np.ndarray], protect: Sequence[str], allow_inexact: bool) -> bool:
    """Whether ``g`` may lose units: prunable, scored, not protected, exact (or inexact allowed)."""
    if not g.prunable or g.id not in scores or _matches(g, protect):
        return False
    return g.exact or allow_inexact


def _forced(g: Group, s: np.ndarray) -> np.ndarray:
    """Units that must stay: blocked ones, and the best unit of every layer slice (producer
    rows, consumer columns: a Split part, a Slice, a Gather pick, one conv of a partly blocked
    group) that would otherwise lose every channel and become a zero-width tensor."""
    from .score import UnitIndex

    forced = np.array([u in g.blocked for u in g.units.tolist()], dtype=bool)
    index = UnitIndex(g.units)
    seen = set()
    for gm in g.members:
        if gm.member.role not in ("out", "in"):
            continue
        idx = np.unique(index.positions(gm.units))
        key = idx.tobytes()
        if key in seen or idx.size == 0:
            continue
        seen.add(key)
        if not forced[idx].any():
            forced[idx[int(np.argmax(s[idx]))]] = True
    return forced


def select_units(g: Group, s: np.ndarray, k: int, round_to: int) -> Optional[np.ndarray]:
    """Keep mask with about ``k`` units kept, equal per constraint cell, multiples of
    ``round_to`` where it can; None when nothing would be removed."""
    n = len(g.units)
    forced = _forced(g, s)
    cells = _cells(g)
    if cells is None:
        return None
    ncell = len(cells)
    size = len(cells[0])
    per = max(1, int(round(k / ncell)))
    if round_to > 1 and g.kind != "heads":
        while per < size and (per * ncell) % round_to:
            per += 1
    per = max(per, max(int(forced[c].sum()) for c in cells))
    if per >= size:
        return None
    mask = np.zeros(n, bool)
    for c in cells:
        order = sorted(c.tolist(), key=lambda i: (not forced[i], -s[i], i))
        mask[order[:per]] = True
    return mask


def kept_bounds(n: int, min_ratio: float, max_ratio: Optional[float], min_keep: int) -> Tuple[int, int]:
    """(least, most) units a group may keep."""
    lo = max(min_keep, n - int(math.floor(n * (max_ratio if max_ratio is not None else 1.0) + 1e-9)))
    hi = n - int(math.floor(n * min_ratio + 1e-9))
    return min(lo, n), max(min(hi, n), min(lo, n))


def make_plan(groups: List[Group], scores: Dict[int, np.ndarray], ratio: float, round_to: int = 1,
              protect: Sequence[str] = (), allow_inexact: bool = False, min_keep: int = 1,
              kind_ratios: Optional[Dict[str, float]] = None, min_ratio: float = 0.0,
              max_ratio: Optional[float] = None) -> Plan:
    """Uniform ratio per group; ``kind_ratios`` overrides it per group kind (heads, channels,
    hidden), clamped to [min_ratio, max_ratio]. Heads and other units never drop below
    ``min_keep`` per group."""
    keep: Dict[int, np.ndarray] = {}
    kind_ratios = kind_ratios or {}
    for g in groups:
        n = len(g.units)
        keep[g.id] = np.ones(n, bool)
        r = kind_ratios.get(g.kind, ratio)
        if r is None:
            r = ratio
        if r > 0:
            r = max(r, min_ratio)
        if max_ratio is not None:
            r = min(r, max_ratio)
        if r <= 0 or not eligible(g, scores, protect, allow_inexact):
            continue
        k = kept_count(n, r, round_to if g.kind != "heads" else 1, min_keep)
        mask = select_units(g, np.asarray(scores[g.id], dtype=np.float64), k, round_to)
        if mask is not None:
            keep[g.id] = mask
    return Plan(groups, keep, {"ratio": ratio, "round_to": round_to, "protect": list(protect),
                               "kind_ratios": dict(kind_ratios), "scope": "uniform"})


def normalize_scores(s: np.ndarray, how: str) -> np.ndarray:
    s = np.asarray(s, dtype=np.float64)
    if how in (None, "none") or s.size == 0:
        return s
    if how == "mean":
        m = s.mean()
        return s / m if m > 0 else s
    if how == "max":
        m = s.max()
        return s / m if m > 0 else s
    if how == "std":
        sd = s.std()
        return (s - s.mean()) / sd if sd > 0 else s - s.mean()
    raise UsageError(f"unknown normalisation {how!r}")


def global_plan(groups: List[Group], scores: Dict[int, np.ndarray], ratio: float = 0.5, round_to: int = 1,
                protect: Sequence[str] = (), allow_inexact: bool = False, min_keep: int = 1,
                min_ratio: float = 0.0, max_ratio: Optional[float] = 0.9, normalize: str = "mean",
                target: Optional[Tuple[str, float]] = None, cost=None, per_cost: bool = True) -> Plan:
    """Rank every unit of every eligible group on one scale (scores normalised per group by
    ``normalize``) and remove those below a global threshold. The threshold removes ``ratio``
    of all eligible units, or, with ``target=("macs"|"params", F)`` and a cost model, is the
    lowest one whose plan costs at most F of the dense model (bisection). With ``per_cost``
    and a target, a unit's score is divided by what it costs (the dense MACs or params per unit
    of its group), so cheap units are not removed before expensive ones of equal importance."""
    elig = [g for g in groups if eligible(g, scores, protect, allow_inexact)]
    ns: Dict[int, np.ndarray] = {}
    for g in elig:
        s = normalize_scores(scores[g.id], normalize)
        ns[g.id] = s
    if target is not None and per_cost and cost is not None:
        what = target[0]
        for g in elig:
            c = cost.fraction(g.units.tolist(), what)
            unit_cost = max(1.0 - c, 1e-12) / len(g.units)
            s = ns[g.id]
            ns[g.id] = s / unit_cost if normalize != "std" else s - np.log(unit_cost)
    bounds = {g.id: kept_bounds(len(g.units), min_ratio, max_ratio, min_keep) for g in elig}
    forced = {g.id: np.array([u in g.blocked for u in g.units.tolist()]) for g in elig}

    def plan_at(t: float) -> Dict[int, np.ndarray]:
        keep = {}
        for g in elig:
            s = ns[g.id]
            k = int(((s >= t) | forced[g.id]).sum())
            lo, hi = bounds[g.id]
            k = min(max(k, lo), hi)
            if k >= len(g.units):
                continue
            if round_to > 1 and g.kind != "heads":
                k = min(len(g.units), int(math.ceil(k / round_to)) * round_to)
            mask = select_units(g, s, k, round_to)
            if mask is not None:
                keep[g.id] = mask
        return keep

    def removed(keep: Dict[int, np.ndarray]) -> List[int]:
        out: List[int] = []
        by_id = {g.id: g for g in elig}
        for gid, mask in keep.items():
            out.extend(by_id[gid].units[~mask].tolist())
        return out

    values = np.unique(np.concatenate([ns[g.id] for g in elig])) if elig else np.zeros(0)
    info: Dict[str, object] = {"scope": "global", "normalize": normalize}
    if values.size == 0:
        best = {}
    elif target is None:
        total = sum(len(g.units) for g in elig)
        want = ratio * total

        def measure(keep):
            return float(len(removed(keep)))
        lo, hi = 0, len(values) - 1        # find the smallest threshold removing >= want units
        best = plan_at(values[0])
        while lo <= hi:
            mid = (lo + hi) // 2
            keep = plan_at(values[mid])
            if measure(keep) >= want:
                best, hi = keep, mid - 1
            else:
                lo = mid + 1
        if measure(best) < want:
            best = plan_at(values[-1] + 1.0)
    else:
        what, frac = target
        if cost is None:
            raise UsageError("a MACs/params target needs a cost model")

        def reached(keep):
            return cost.fraction(removed(keep), what)
        lo, hi = 0, len(values)
        best = None
        while lo < hi:                     # smallest threshold index with cost <= frac
            mid = (lo + hi) // 2
            t = values[mid] if mid < len(values) else values[-1] + abs(values[-1]) + 1.0
            keep = plan_at(t)
            if reached(keep) <= frac:
                best, hi = keep, mid
            else:
                lo = mid + 1
        if best is None:
            best = plan_at(values[-1] + abs(values[-1]) + 1.0)
        info["target"] = {what: frac, "estimated": float(reached(best))}
    keep = {g.id: np.ones(len(g.units), bool) for g in groups}
    keep.update(best)
    info.update({"ratio": ratio, "round_to": round_to, "protect": list(protect), "min_ratio": min_ratio,
                 "max_ratio": max_ratio})
    return Plan(groups, keep, info)


def uniform_for_target(groups: List[Group], scores: Dict[int, np.ndarray], target: Tuple[str, float], cost,
                       round_to: int = 1, protect: Sequence[str] = (), allow_inexact: bool = False,
                       min_keep: int = 1, kind_ratios: Optional[Dict[str, float]] = None,
                       min_ratio: float = 0.0, max_ratio: Optional[float] = None) -> Plan:
    """The smallest uniform ratio whose plan costs at most the target fraction (bisection)."""
    what, frac = target
    cap = max_ratio if max_ratio is not None else 0.99

    def at(r: float) -> Plan:
        kr = {k: (None if v is None else v) for k, v in (kind_ratios or {}).items()}
        return make_plan(groups, scores, r, round_to, protect, allow_inexact, min_keep, kr, min_ratio, max_ratio)

    lo, hi = 0.0, cap
    best = at(hi)
    if cost.fraction(best.removed_units(), what) <= frac:
        for _ in range(30):
            mid = (lo + hi) / 2
            p = at(mid)
            if cost.fraction(p.removed_units(), what) <= frac:
                best, hi = p, mid
            else:
                lo = mid
            if hi - lo < 1e-4:
                break
    best.options["target"] = {what: frac, "estimated": float(cost.fraction(best.removed_units(), what))}
    return best


def _cells(g: Group) -> Optional[List[np.ndarray]]:
    """Partition of the group's unit indices into equal cells that satisfy every constraint."""
    n = len(g.units)
    if not g.constraints:
        return [np.arange(n)]
    index = {int(u): i for i, u in enumerate(g.units)}
    labels = [[] for _ in range(n)]
    for blocks in g.constraints:
        seen = np.zeros(n, int)
        for bi, b in enumerate(blocks):
            for u in b.tolist():
                if u in index:
                    labels[index[u]].append(bi)
                    seen[index[u]] += 1
        if (seen > 1).any():
            return None
        for i in range(n):
            if seen[i] == 0:
                labels[i].append(-1)
    cells: Dict[tuple, List[int]] = {}
    for i, lab in enumerate(labels):
        cells.setdefault(tuple(lab), []).append(i)
    sizes = {len(c) for c in cells.values()}
    if len(sizes) != 1:
        return None
    # every block of every constraint must hold the same number of cells
    for ci, blocks in enumerate(g.constraints):
        per_block: Dict[int, int] = {}
        for lab in cells:
            per_block[lab[ci]] = per_block.get(lab[ci], 0) + 1
        if len(set(per_block.values())) != 1:
            return None
    return [np.array(c) for c in cells.values()]
