"""Why a group, or a whole model, does not prune: the answers ``graphprune analyze`` prints and
``graphprune.analyze()`` returns.

- :func:`group_state` — ``prunable``, ``partial`` (some units blocked), ``inexact`` (feeds a
  normalisation over channels; prunes with ``allow_inexact``) or ``blocked``, with the reasons;
- :func:`whole_model_reason` (:func:`quantized_reason`, :func:`control_flow_reason`) — when
  the cause is the model's kind (wholly quantized, layers inside control flow), not one op;
- :func:`nothing_pruned_reason` — the true reason a run removed nothing, in one sentence;
- :func:`n_prunable` / :func:`n_inexact_only` — the groups a run would prune at some options;
- :func:`static_batch_gain` — how many more groups a static batch would let prune.
"""

from __future__ import annotations

from typing import List, Optional, Tuple

import onnx

from .layers import layer_of

QUANTIZED_OPS = ("QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "ConvInteger", "MatMulInteger",
                 "QLinearConv", "QLinearMatMul", "DynamicQuantizeLSTM", "QGemm", "QAttention", "DynamicQuantizeMatMul")
CONTROL_FLOW_OPS = ("If", "Loop", "Scan")

def group_state(group, allow_inexact: bool = False) -> Tuple[str, List[str]]:
    """(state, reasons) of an ``analyze.Group``.

    Args:
        group: the group.
        allow_inexact: whether inexact groups (normalised over channels) may prune.

    Returns:
        ``state`` is ``prunable``, ``partial``, ``inexact`` or ``blocked``; ``reasons`` are the
        distinct blocked reasons (for ``inexact``: the inexact ones), sorted.
    """
    if group.prunable and (group.exact or allow_inexact):
        state = "prunable" if not group.blocked else "partial"
    elif group.prunable:
        state = "inexact"
    else:
        state = "blocked"
    reasons = sorted(set(group.blocked.values())) if group.blocked else []
    if state == "inexact":
        reasons = sorted(set(group.inexact.values()))
    return state, reasons



def quantized_reason(model: onnx.ModelProto) -> Optional[str]:
    """Why nothing can prune when every weighted layer is quantized (its weights come through
    quantization ops, no float weight feeds a Conv/Gemm/MatMul directly): found from the op list
    alone, before any analysis. None when the model is not (wholly) quantized."""
    import collections

    ops = collections.Counter(n.op_type for n in model.graph.node)
    quant = {k: v for k, v in ops.items() if k in QUANTIZED_OPS}
    if not quant:
        return None
    floats = {t.name for t in model.graph.initializer
              if t.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16,
                                 onnx.TensorProto.DOUBLE) and len(t.dims) >= 2}
    if any(_weighted(n) and any(x in floats for x in n.input[:2]) for n in model.graph.node):
        return None         # float layers remain: the analysis decides
    what = ", ".join(f"{v} {k}" for k, v in sorted(quant.items()))
    return (f"the model is quantized ({what}); quantized weights and run-time scales are not pruned: "
            "prune the float model, then quantize it")


def control_flow_reason(model: onnx.ModelProto) -> Optional[str]:
    """Why nothing can prune when the model's layers run inside If/Loop/Scan bodies (None when
    the control flow holds no weighted layer: then it is not why)."""
    import collections

    def weighted(g: onnx.GraphProto) -> bool:
        for n in g.node:
            if _weighted(n):
                return True
            for a in n.attribute:
                if (a.HasField("g") and weighted(a.g)) or any(weighted(x) for x in a.graphs):
                    return True
        return False

    flows = [n for n in model.graph.node if n.op_type in CONTROL_FLOW_OPS]
    heavy = [n for n in flows if any(weighted(a.g) if a.HasField("g") else any(weighted(x) for x in a.graphs)
                                     for a in n.attribute)]
    if not heavy:
        return None
    c = collections.Counter(n.op_type for n in heavy)
    what = ", ".join(f"{v} {k}" for k, v in sorted(c.items()))
    return f"its layers run inside control flow ({what}), whose subgraphs are not analysed"


def n_prunable(groups, opts) -> int:
    """Groups ``run`` would prune at these options: prunable, and exact unless inexact pruning is allowed."""
    allow = opts.allow_inexact or opts.prune_hidden
    return sum(1 for g in groups if g.prunable and (g.exact or allow))


def n_inexact_only(groups, opts) -> int:
    """Prunable groups that are left whole because they are inexact (without --allow-inexact)."""
    if opts.allow_inexact or opts.prune_hidden:
        return 0
    return sum(1 for g in groups if g.prunable and not g.exact)


def nothing_pruned_reason(model: onnx.ModelProto, groups, opts) -> str:
    """The true reason no channel was removed, in one sentence."""
    import collections

    why = quantized_reason(model)
    if why:
        return why
    inexact = [g for g in groups if g.prunable and not g.exact]
    if inexact and n_prunable(groups, opts) == 0:
        r = collections.Counter(x for g in inexact for x in set(g.inexact.values())).most_common(1)[0][0]
        return (f"{len(inexact)} group{'s are' if len(inexact) > 1 else ' is'} prunable only inexactly ({r}"
                f"{' and more' if len(inexact) > 1 else ''}): pass --allow-inexact to prune "
                f"{'them' if len(inexact) > 1 else 'it'} (verified on the exact groups, the rest reported as "
                "agreement with the dense model)")
    if n_prunable(groups, opts) > 0:
        if opts.ratio == 0 and opts.target() is None and not any(opts.kind_ratios().values()):
            return "--ratio is 0"
        return (f"{n_prunable(groups, opts)} groups are prunable but none lost a channel at these settings "
                "(ratio, rounding, --protect, minimum kept counts, or the group's structure: grouped convolutions and "
                "channel shuffles allow only some removals)")
    flow = control_flow_reason(model)
    if flow:
        return flow
    if not groups:
        return "no coupled channel group was found (no Conv/Gemm/MatMul with constant weights feeding another)"
    reasons = collections.Counter(x for g in groups for x in set(g.blocked.values()))
    if reasons:
        top, n = reasons.most_common(1)[0]
        return f"every group is blocked; the most common reason ({n} of {len(groups)} groups): {top}"
    return "no group is prunable"


def _weighted(node: onnx.NodeProto) -> bool:
    """A layer graphprune prunes (a ``layers.LayerKind`` with a reduction axis: Conv,
    ConvTranspose, Gemm, MatMul and registered kinds)."""
    kind = layer_of(node)
    return kind is not None and kind.reduction_axis is not None


def whole_model_reason(model: onnx.ModelProto) -> Optional[str]:
    """Why ``model`` has nothing prunable when the reason is the model's kind (wholly quantized,
    or its layers inside control flow), not one op; None otherwise."""
    return quantized_reason(model) or control_flow_reason(model)


def static_batch_gain(model: onnx.ModelProto, n_prunable: int) -> Optional[int]:
    """The number of prunable groups with the symbolic batch fixed to 1, when that is more than
    ``n_prunable`` (channels an exporter merges into the batch can then be followed); None
    otherwise, for models without a symbolic batch and for models over
    ``pipeline.AUTO_SKIP_BYTES`` (analysed again: a hint, not worth their time)."""
    from .inputs import batch_symbols
    from .io import approx_model_bytes, with_static_batch
    from .pipeline import AUTO_SKIP_BYTES, AnalyzedModel

    if not batch_symbols(model) or approx_model_bytes(model) > AUTO_SKIP_BYTES:
        return None
    try:
        n1 = sum(1 for g in AnalyzedModel(with_static_batch(model, 1)).groups if g.prunable)
    except Exception:       # a hint only: the first analysis stands
        return None
    return n1 if n1 > n_prunable else None
