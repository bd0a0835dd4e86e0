"""The public Python API: ``import graphprune``.

::

    import graphprune

    result = graphprune.prune("model.onnx", ratio=0.5)     # or an onnx.ModelProto
    print(result.report.macs.ratio, result.report.verify.passed)
    graphprune.save(result.model, "model.pruned.onnx")

    info = graphprune.analyze("model.onnx")                # groups, and why some are blocked
    for g in info.groups:
        print(g.id, g.state, g.name, g.reasons[:1])

Every option of :class:`graphprune.Options` is a keyword argument of :func:`prune`; a
criterion is a name of ``score.CRITERIA`` or any :class:`graphprune.Criterion` (a function
``(group, graph, **kw) -> scores``). Errors are :mod:`graphprune.errors` exceptions with a
one-line message.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Optional, Union

import onnx

from .errors import UsageError
from .pipeline import AnalyzedModel, Options, Result, calibration, check_verified, plan_for
from .pipeline import prune as _run
from .plan import Plan
from .report import AnalysisReport, GroupInfo, Report

ModelLike = Union[str, "os.PathLike[str]", onnx.ModelProto]

__all__ = ["load", "save", "analyze", "plan", "prune", "PruneResult"]


def load(path: Union[str, "os.PathLike[str]"], *, static_batch: Optional[int] = None,
         lazy: Optional[bool] = None) -> onnx.ModelProto:
    """Read and validate an ONNX model (``io.load_model``).

    Args:
        path: the ``.onnx`` file; its external data must sit in its folder.
        static_batch: fix the inputs' symbolic batch to this size (``--static-batch``).
        lazy: leave external data on disk and read it on demand (default: above 1 GiB).

    Returns:
        The model. Raises ``errors.InputError`` (one line) when the file is missing, not ONNX,
        truncated, fails the checker or its external data is missing.
    """
    from .io import load_model, with_static_batch

    m = load_model(path, lazy=lazy)
    return with_static_batch(m, static_batch) if static_batch is not None else m


def save(model: onnx.ModelProto, path: Union[str, "os.PathLike[str]"], *,
         external_data: Optional[bool] = None) -> None:
    """Write ``model`` atomically and deterministically (``io.save_model``).

    Args:
        model: the model (left unchanged; lazily loaded tensors are streamed from their file).
        path: where to write it.
        external_data: None: automatic (over 1.8 GB); True: large tensors to ``<name>.data``;
            False: everything inline.

    Raises ``errors.OutputError`` (one line) on failure, leaving no temporary files.
    """
    from .io import save_model

    save_model(model, path, external_data=external_data)


def _model(model: ModelLike, static_batch: Optional[int]) -> onnx.ModelProto:
    if isinstance(model, onnx.ModelProto):
        if static_batch is not None:
            from .io import with_static_batch
            return with_static_batch(model, static_batch)
        return model
    if isinstance(model, (str, os.PathLike)):
        return load(model, static_batch=static_batch)
    raise UsageError(f"expected a path or an onnx.ModelProto, got {type(model).__name__}")


@dataclass
class PruneResult:
    """What :func:`prune` returns.

    Attributes:
        model: the pruned model (save it with :func:`save`).
        plan: the plan it was made from (``plan.to_json()`` is the editable plan JSON).
        report: the typed report (``report.to_json()``: the CLI's report JSON).
        timings: seconds per step.
    """
    model: onnx.ModelProto
    plan: Plan
    report: Report
    timings: Dict[str, float] = field(default_factory=dict)

    def save(self, path: Union[str, "os.PathLike[str]"], report: Optional[Union[str, "os.PathLike[str]"]] = None,
             *, external_data: Optional[bool] = None) -> None:
        """Write the model to ``path`` and, when given, the report JSON to ``report``."""
        save(self.model, path, external_data=external_data)
        if report is not None:
            from .io import save_json_atomic
            save_json_atomic(self.report.to_json(), report)


def prune(model: ModelLike, options: Optional[Options] = None, *, plan: Optional[dict] = None,
          static_batch: Optional[int] = None, check: bool = True,
          progress: Optional[Callable[[str], None]] = None, **kw: Any) -> PruneResult:
    """Prune a model end to end: analyze, score, plan, rewrite, verify, [repair], count, bench.

    Args:
        model: a path (loaded with :func:`load`) or an ``onnx.ModelProto`` (never modified).
        options: an :class:`Options`; or pass its fields as keywords (``ratio=0.5``,
            ``criterion="obs"``, ``calib=...``, ``bench=False`` ...), not both.
        plan: an (edited) plan JSON to apply instead of scoring (``graphprune prune --plan``).
        static_batch: fix the inputs' symbolic batch first.
        check: raise ``errors.VerifyError`` when the masked-dense oracle disagrees.
        progress: called with each step's name as it starts.
        **kw: fields of :class:`Options`.

    Returns:
        A :class:`PruneResult`. Raises ``errors.UsageError`` for bad options.
    """
    if options is not None and kw:
        raise UsageError("pass an Options or its fields as keywords, not both")
    try:
        opts = options if options is not None else Options(**kw)
    except TypeError as e:
        raise UsageError(f"bad option: {e}") from None
    opts.check()
    m = _model(model, static_batch)
    res: Result = _run(m, opts, progress or (lambda step: None), plan_json=plan)
    if static_batch is not None:
        res.report["summary"]["options"]["static_batch"] = static_batch
    if check:
        check_verified(res.report)
    return PruneResult(res.model, res.plan, Report.from_json(res.report), res.timings)


def analyze(model: ModelLike, *, allow_inexact: bool = False, static_batch: Optional[int] = None,
            hints: bool = True) -> AnalysisReport:
    """Find every coupled channel group of a model and say why some cannot prune.

    Args:
        model: a path or an ``onnx.ModelProto``.
        allow_inexact: count groups that feed a normalisation over channels as prunable.
        static_batch: fix the inputs' symbolic batch first.
        hints: when some groups are blocked, analyse a batch-1 copy too and say whether a static
            batch would prune more (``static_batch_hint``; skipped above 1 GiB).

    Returns:
        An :class:`~graphprune.report.AnalysisReport`.
    """
    from .explain import group_state, n_inexact_only, n_prunable, nothing_pruned_reason, quantized_reason, \
        static_batch_gain

    m = _model(model, static_batch)
    why = quantized_reason(m)
    if why:                             # said from the op list, before any analysis
        return AnalysisReport(groups=[], prunable=0, why=why)
    opts = Options(ratio=0.0, allow_inexact=allow_inexact)
    an = AnalyzedModel(m)
    infos = []
    for g in an.groups:
        state, reasons = group_state(g, allow_inexact)
        infos.append(GroupInfo(id=g.id, name=g.name, kind=g.kind, channels=len(g.units), state=state,
                               reasons=reasons, blocked=len(g.blocked)))
    n_ok = n_prunable(an.groups, opts)
    hint = static_batch_gain(m, n_ok) if hints and static_batch is None and n_ok < len(an.groups) else None
    return AnalysisReport(groups=infos, prunable=n_ok, inexact_only=n_inexact_only(an.groups, opts),
                          why=nothing_pruned_reason(m, an.groups, opts) if n_ok == 0 else None,
                          static_batch_hint=hint)


def plan(model: ModelLike, options: Optional[Options] = None, **kw: Any) -> Plan:
    """Score and allocate without rewriting: the plan :func:`prune` would apply.

    Args:
        model: a path or an ``onnx.ModelProto``.
        options, **kw: as for :func:`prune`.

    Returns:
        The :class:`~graphprune.plan.Plan` (``to_json()`` to edit it and pass it back as
        ``prune(model, plan=...)``).
    """
    if options is not None and kw:
        raise UsageError("pass an Options or its fields as keywords, not both")
    opts = options if options is not None else Options(**kw)
    opts.check()
    m = _model(model, None)
    an = AnalyzedModel(m)
    return plan_for(an, m, opts, calibration(m, opts))
