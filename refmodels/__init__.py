"""Tiny reference PyTorch models and ONNX export helpers for testing graphprune.

Not part of the installed ``graphprune`` package: these need torch (the ``test``/``torch``
extras).  See :mod:`refmodels.cnn` for the model registry and :mod:`refmodels.export` for the
exporter wrapper and CLI (``python -m refmodels.export NAME OUT.onnx --exporter dynamo``).
"""

from refmodels.cnn import REGISTRY, build, names

__all__ = ["REGISTRY", "build", "names"]
