"""Step 4: the plan — which units of which group survive — and its JSON form.

The plan is the one artifact the steps hand each other. JSON (see ../shared/DESIGN.md §1)::

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
from typing import Dict, Iterable, List, Optional, Sequence, Set

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


def _target(n: int, ratio: float, round_to: int, min_keep: int) -> int:
    k = n - int(math.floor(n * ratio + 1e-9))
    if round_to > 1 and k < n:
        k = min(n, int(math.ceil(k / round_to)) * round_to)
    return max(min_keep, min(n, k))


def make_plan(groups: List[Group], scores: Dict[int, np.ndarray], ratio: float, round_to: int = 1,
              protect: Sequence[str] = (), allow_inexact: bool = False, min_keep: int = 1,
              kind_ratios: Optional[Dict[str, float]] = None) -> Plan:
    """Uniform ratio per group; ``kind_ratios`` overrides it per group kind (heads, channels,
    hidden). Heads and other units never drop below ``min_keep`` per group."""
    keep: Dict[int, np.ndarray] = {}
    kind_ratios = kind_ratios or {}
    for g in groups:
        n = len(g.units)
        mask = np.ones(n, bool)
        keep[g.id] = mask
        r = kind_ratios.get(g.kind, ratio)
        if r is None:
            r = ratio
        if r <= 0 or not g.prunable or g.id not in scores or _matches(g, protect):
            continue
        if not g.exact and not allow_inexact:
            continue
        s = np.asarray(scores[g.id], dtype=np.float64)
        forced = np.array([u in g.blocked for u in g.units.tolist()])
        k = _target(n, r, round_to if g.kind != "heads" else 1, min_keep)
        cells = _cells(g)
        if cells is None:
            continue
        ncell = len(cells)
        size = len(cells[0])
        per = max(1, int(round(k / ncell)))
        if round_to > 1 and g.kind != "heads":
            while per < size and (per * ncell) % round_to:
                per += 1
        per = max(per, max(int(forced[c].sum()) for c in cells))
        if per >= size:
            continue
        mask = np.zeros(n, bool)
        for c in cells:
            order = sorted(c.tolist(), key=lambda i: (not forced[i], -s[i], i))
            mask[order[:per]] = True
        keep[g.id] = mask
    return Plan(groups, keep, {"ratio": ratio, "round_to": round_to, "protect": list(protect),
                               "kind_ratios": dict(kind_ratios)})


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
