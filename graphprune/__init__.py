"""graphprune: structural pruning of any ONNX model.

The data path is one line::

    load -> analyze -> score -> plan -> rewrite -> repair -> verify -> bench -> save

Each step is one module of this package; the :class:`~graphprune.plan.Plan` is the
artifact the steps hand each other.
"""

__version__ = "0.1.0"
