"""graphprune: structural pruning of any ONNX model.

The data path is one line::

    load -> analyze -> [calibrate] -> score -> plan -> rewrite -> verify -> [repair] -> count -> bench -> save

Each step is one module of this package; the :class:`~graphprune.plan.Plan` is the
artifact the steps hand each other. The public API (``graphprune.prune``, ``analyze``,
``load``, ``save``, ``Options``, ``Criterion``, the typed ``Report``) is in
:mod:`graphprune.api`; it is imported on first use, so ``import graphprune`` stays cheap.
"""

__version__ = "0.1.0"

_LAZY = {
    "prune": "api", "load": "api", "save": "api", "PruneResult": "api",
    "Options": "options", "Criterion": "score", "CRITERIA": "score",
    "Report": "report", "AnalysisReport": "report", "GroupInfo": "report",
    "LayerKind": "layers", "register_layer": "layers",
}

__all__ = ["__version__", "analyze", *_LAZY]


def __getattr__(name: str):
    import importlib

    if name == "analyze":
        # the subpackage graphprune.analyze is callable: graphprune.analyze(model) is api.analyze
        return importlib.import_module(f"{__name__}.analyze")
    mod = _LAZY.get(name)
    if mod is None:
        raise AttributeError(f"module 'graphprune' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{mod}"), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
