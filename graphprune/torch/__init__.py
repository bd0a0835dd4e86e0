"""graphprune and PyTorch (optional: ``pip install graphprune[torch]``).

- :func:`onnx_to_torch`: an ``nn.Module`` that runs an ONNX graph op by op in torch (eager), so it
  can be trained; its parameters are the graph's float constants, keyed by tensor name, and
  :func:`write_back` puts trained values into the same tensors of the graph (names, shapes and
  nodes unchanged).
- :func:`apply_plan`: physically prune a user's ``nn.Module`` per a plan (or report) computed on
  its ONNX export, so it can be trained with the user's own loop.

torch is imported lazily: importing this package without torch installed works; calling into it
raises a one-line :class:`~graphprune.errors.UsageError` naming the extra to install.
"""

from __future__ import annotations

from typing import Any


def require_torch():
    """The torch module, or a one-line error saying how to install it."""
    try:
        import torch
    except ImportError as e:
        from ..errors import UsageError
        raise UsageError(f"this needs PyTorch, which is not installed ({e}): pip install graphprune[torch]")
    return torch


def onnx_to_torch(model, trainable: Any = None):
    """See :class:`graphprune.torch.interpreter.OnnxModule`."""
    require_torch()
    from .interpreter import OnnxModule
    return OnnxModule(model, trainable=trainable)


def write_back(module, model):
    """See :func:`graphprune.torch.interpreter.write_back`."""
    require_torch()
    from .interpreter import write_back as _wb
    return _wb(module, model)


def apply_plan(module, plan_or_report, example_inputs=None, **kw):
    """See :func:`graphprune.torch.module_prune.apply_plan`."""
    require_torch()
    from .module_prune import apply_plan as _ap
    return _ap(module, plan_or_report, example_inputs=example_inputs, **kw)


__all__ = ["require_torch", "onnx_to_torch", "write_back", "apply_plan"]
