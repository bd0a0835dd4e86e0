"""Typed reports: what ``graphprune.prune`` and ``graphprune.analyze`` return.

:class:`Report` is the report JSON of ``graphprune run`` as dataclasses; ``Report.from_json(d)``
reads one and ``to_json()`` gives the same dict back (same keys, same order: the schema of
``docs/report.md`` is unchanged). Keys a dataclass does not name (added by newer versions, or
by options such as ``--repair``) stay in ``extra`` and are written back in their place.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar, Dict, List, Optional, Type, TypeVar

T = TypeVar("T", bound="Record")


@dataclass
class Record:
    """A JSON object with typed fields; unknown keys kept in ``extra``, key order kept."""
    extra: Dict[str, Any] = field(default_factory=dict, repr=False, kw_only=True)
    _order: List[str] = field(default_factory=list, repr=False, compare=False, kw_only=True)
    _nested: ClassVar[Dict[str, Type["Record"]]] = {}     # field -> record type (lists: of that type)

    @classmethod
    def from_json(cls: Type[T], d: Dict[str, Any]) -> T:
        """Read a JSON object (a dict as ``json.load`` returns it)."""
        names = {f.name for f in fields(cls)} - {"extra", "_order"}
        kw: Dict[str, Any] = {}
        extra: Dict[str, Any] = {}
        for k, v in d.items():
            if k not in names:
                extra[k] = v
                continue
            sub = cls._nested.get(k)
            if sub is not None and isinstance(v, list):
                v = [sub.from_json(x) if isinstance(x, dict) else x for x in v]
            elif sub is not None and isinstance(v, dict):
                v = sub.from_json(v)
            kw[k] = v
        return cls(**kw, extra=extra, _order=list(d))

    def to_json(self) -> Dict[str, Any]:
        """The JSON object (a new dict; nested records converted)."""
        names = [f.name for f in fields(self) if f.name not in ("extra", "_order")]
        order = list(self._order) + [n for n in names if n not in self._order and getattr(self, n) is not None]
        order += [k for k in self.extra if k not in order]
        out: Dict[str, Any] = {}
        for k in order:
            if k in names:
                v = getattr(self, k)
                if v is None and k not in self._order:
                    continue
                out[k] = _plain(v)
            elif k in self.extra:
                out[k] = copy.deepcopy(self.extra[k])
        return out


def _plain(v: Any) -> Any:
    if isinstance(v, Record):
        return v.to_json()
    if isinstance(v, list):
        return [_plain(x) for x in v]
    return copy.deepcopy(v)


@dataclass
class Counts(Record):
    """A before/after count (MACs at batch 1, parameters)."""
    before: int = 0
    after: int = 0

    @property
    def ratio(self) -> float:
        """before / after."""
        return self.before / max(self.after, 1)


@dataclass
class Latency(Record):
    """Latency of the dense and the pruned model in onnxruntime, or why it was skipped."""
    before: Optional[float] = None
    after: Optional[float] = None
    speedup: Optional[float] = None
    threads: Optional[int] = None
    skipped: Optional[str] = None


@dataclass
class Verification(Record):
    """The masked-dense oracle's verdict (``verify.verify``), or why it was skipped."""
    passed: Optional[bool] = None
    max_abs_diff: Optional[float] = None
    max_rel_diff: Optional[float] = None
    skipped: Optional[str] = None


@dataclass
class GroupReport(Record):
    """One group of the plan: its channels before and after, and the kept positions of every
    member tensor (``members``: dicts ``tensor``, ``axis``, ``role``, ``kept``...)."""
    id: int = 0
    name: str = ""
    kind: str = "channels"
    channels_before: int = 0
    channels_after: int = 0
    exact: bool = True
    members: List[Dict[str, Any]] = field(default_factory=list)


@dataclass
class Summary(Record):
    """Group counts and the options of the run."""
    groups: int = 0
    prunable_groups: int = 0
    pruned_groups: int = 0
    options: Dict[str, Any] = field(default_factory=dict)


@dataclass
class Report(Record):
    """The report of one pruning run (``graphprune run``'s report JSON).

    Attributes:
        groups: every group with its kept channels.
        summary: group counts and options.
        verify: the oracle's verdict (None when not run).
        macs, params: before/after counts.
        latency_ms: the benchmark (None when not run).
        repair: what repair did (None without ``repair``).
        timings_s: seconds per step.
    """
    groups: List[GroupReport] = field(default_factory=list)
    summary: Summary = field(default_factory=Summary)
    verify: Optional[Verification] = None
    macs: Counts = field(default_factory=Counts)
    params: Counts = field(default_factory=Counts)
    latency_ms: Optional[Latency] = None
    repair: Optional[Dict[str, Any]] = None
    timings_s: Dict[str, float] = field(default_factory=dict)
    _nested: ClassVar[Dict[str, Type[Record]]] = {
        "groups": GroupReport, "summary": Summary, "verify": Verification, "macs": Counts, "params": Counts,
        "latency_ms": Latency}

    @property
    def pruned(self) -> bool:
        """Whether any group lost channels."""
        return self.summary.pruned_groups > 0


@dataclass
class GroupInfo(Record):
    """One group as ``graphprune.analyze`` sees it.

    Attributes:
        id, name, kind: as in the plan.
        channels: its number of units (channels, heads).
        state: ``prunable``, ``partial`` (some units blocked), ``inexact`` (prunes only with
            ``allow_inexact``) or ``blocked``.
        reasons: why units are blocked (for ``inexact``: what is not exact), sorted.
        blocked: the number of blocked units.
    """
    id: int = 0
    name: str = ""
    kind: str = "channels"
    channels: int = 0
    state: str = "blocked"
    reasons: List[str] = field(default_factory=list)
    blocked: int = 0


@dataclass
class AnalysisReport(Record):
    """What ``graphprune.analyze`` returns: every coupled channel group and why some are blocked.

    Attributes:
        groups: every group.
        prunable: the number of groups that would prune (exact ones, unless ``allow_inexact``).
        inexact_only: prunable groups left whole because they are inexact.
        why: when nothing is prunable, the reason in one sentence; else None.
        static_batch_hint: the number of prunable groups with ``static_batch=1`` when that is
            more (channels merged into the symbolic batch), else None.
    """
    groups: List[GroupInfo] = field(default_factory=list)
    prunable: int = 0
    inexact_only: int = 0
    why: Optional[str] = None
    static_batch_hint: Optional[int] = None
    _nested: ClassVar[Dict[str, Type[Record]]] = {"groups": GroupInfo}
