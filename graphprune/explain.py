"""Why a group, or a whole model, does not prune: the answers ``graphprune analyze`` prints and
``graphprune.analyze()`` returns.

- :func:`group_state` — ``prunable``, ``partial`` (some units blocked), ``inexact`` (feeds a
  normalisation over channels; prunes with ``allow_inexact``) or ``blocked``, with the reasons;
- :func:`whole_model_reason` — when the cause is the model's kind (quantized, layers inside
  control flow), not one op;
- :func:`static_batch_gain` — how many more groups a static batch would let prune.
"""

from __future__ import annotations

import collections
from typing import List, Optional, Tuple

import onnx

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


def whole_model_reason(model: onnx.ModelProto) -> Optional[str]:
    """Why ``model`` has nothing prunable when the reason is the model's kind (quantized, or its
    layers inside control flow), not one op; None otherwise."""
    ops = collections.Counter(n.op_type for n in model.graph.node)
    quant = {k: v for k, v in ops.items() if k in QUANTIZED_OPS}
    if quant:
        what = ", ".join(f"{v} {k}" for k, v in sorted(quant.items()))
        return (f"the model is quantized ({what}); quantized weights and run-time scales are not pruned: "
                "prune the float model, then quantize it")
    flow = {k: v for k, v in ops.items() if k in CONTROL_FLOW_OPS}
    if flow:
        what = ", ".join(f"{v} {k}" for k, v in sorted(flow.items()))
        return f"its layers run inside control flow ({what}), whose subgraphs are not analysed"
    return None


def static_batch_gain(model: onnx.ModelProto, n_prunable: int) -> Optional[int]:
    """The number of prunable groups with the symbolic batch fixed to 1, when that is more than
    ``n_prunable`` (channels an exporter merges into the batch can then be followed); None
    otherwise, for models without a symbolic batch and for models over
    ``pipeline.AUTO_SKIP_BYTES`` (analysed again: a hint, not worth their time)."""
    from .bench import batch_symbols
    from .io import approx_model_bytes, with_static_batch
    from .pipeline import AUTO_SKIP_BYTES, AnalyzedModel

    if not batch_symbols(model) or approx_model_bytes(model) > AUTO_SKIP_BYTES:
        return None
    try:
        n1 = sum(1 for g in AnalyzedModel(with_static_batch(model, 1)).groups if g.prunable)
    except Exception:       # a hint only: the first analysis stands
        return None
    return n1 if n1 > n_prunable else None
