"""Compatibility: the names ``graphprune.bench`` used to hold, now in their own modules.

- :mod:`graphprune.runtime` — onnxruntime sessions, ``run_model``, ``Runner``, ``measure_latency``,
  ``simd_block``;
- :mod:`graphprune.inputs` — batch symbols, free dims and their sizes, random feeds, index bounds;
- :mod:`graphprune.count` — MACs (batch 1) and parameters;
- :mod:`graphprune.memory` — ``release_memory``, the opt-in ``lean_heap``.

New code imports from those modules. Setting an attribute here (a test's ``monkeypatch``) sets
it in the module that owns it, so patched values still reach the code that reads them.
"""

from __future__ import annotations

import sys
import types

from . import count, inputs, memory, runtime
from .count import _PARAM_TYPES, count_macs_params, macs_by_node  # noqa: F401
from .inputs import (FREE_SIZES, at_free_sizes, batch_symbols, explain_run_error, free_dims, free_sizes,  # noqa: F401
                     graph_inputs, implied_sizes, index_bounds, input_ranges, is_batch_symbol, parse_input_range,
                     random_inputs)
from .memory import LEAN_MMAP_THRESHOLD, lean_heap, release_memory  # noqa: F401
from .runtime import (SHARE_MIN_TENSOR, SHARE_MIN_TOTAL, Runner, make_session, measure_latency,  # noqa: F401
                      run_for_shapes, run_model, session, shareable, simd_block)

__all__ = ["count_macs_params", "macs_by_node", "FREE_SIZES", "at_free_sizes", "batch_symbols", "explain_run_error",
           "free_dims", "free_sizes", "graph_inputs", "implied_sizes", "index_bounds", "input_ranges",
           "is_batch_symbol", "parse_input_range", "random_inputs", "LEAN_MMAP_THRESHOLD", "lean_heap",
           "release_memory", "SHARE_MIN_TENSOR", "SHARE_MIN_TOTAL", "Runner", "make_session", "measure_latency",
           "run_for_shapes", "run_model", "session", "shareable", "simd_block", "_PARAM_TYPES"]

ort = runtime.ort
# the old private names
_session = session
_shareable = shareable
_graph_inputs = graph_inputs

_OLD_NAMES = {"_session": "session", "_shareable": "shareable", "_graph_inputs": "graph_inputs"}
_OWNERS = (runtime, inputs, count, memory)


class _Forwarding(types.ModuleType):
    def __setattr__(self, name: str, value) -> None:
        target = _OLD_NAMES.get(name, name)
        for mod in _OWNERS:
            if target in vars(mod):
                setattr(mod, target, value)
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Forwarding
