"""Export the reference models to self-contained ONNX files that onnxruntime can load.

Two exporters are supported:

* ``"legacy"`` - the TorchScript-based ``torch.onnx.export(..., dynamo=False)``,
  default opset 17, constant folding on.
* ``"dynamo"`` - the ``torch.export``-based ``torch.onnx.export(..., dynamo=True)``,
  default opset 18, onnxscript graph optimisation on.

Both fold eval-mode BatchNorm into the preceding Conv by default (the legacy exporter in
its eval peephole pass, the dynamo exporter in onnxscript's ``fuse_batchnorm`` rewrite
rule).  Pass ``keep_bn=True`` to keep ``BatchNormalization`` nodes in the graph.

The file written is always a single ``.onnx`` file (no external data) whose IR version
is clamped so onnxruntime accepts it.

CLI::

    python -m refmodels.export NAME OUT.onnx [--exporter legacy|dynamo] [--opset N]
                            [--seed S] [--dynamic-batch] [--keep-bn]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import os
import sys
import warnings
from pathlib import Path

import onnx
import torch

from refmodels.cnn import REGISTRY, build

__all__ = ["EXPORTERS", "DEFAULT_OPSET", "MAX_IR_VERSION", "export", "export_named", "main"]

EXPORTERS = ("legacy", "dynamo")
DEFAULT_OPSET = {"legacy": 17, "dynamo": 18}
#: onnx 1.23 defaults to IR 14, onnxruntime 1.31 reads at most IR 13.  IR 10 covers opsets
#: up to 21; a newer opset keeps the minimum IR it needs.
MAX_IR_VERSION = 10
INPUT_NAME = "input"
OUTPUT_NAME = "output"

# Loggers that print harmless chatter during a dynamo export (e.g. "torchvision is not
# installed. Skipping torchvision::nms").
_NOISY_LOGGERS = (
    "torch.onnx._internal.exporter._registration",
    "torch.onnx._internal.exporter._core",
    "torch.onnx",
    "torch.export",
    "torch._export",
    "onnxscript",
)


@contextlib.contextmanager
def quiet(extra_loggers=()):
    """Silence exporter warnings, log chatter and stray prints for the duration."""
    saved = {}
    for name in tuple(_NOISY_LOGGERS) + tuple(extra_loggers):
        logger = logging.getLogger(name)
        saved[name] = logger.level
        logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with contextlib.redirect_stdout(io.StringIO()):
                yield
    finally:
        for name, level in saved.items():
            logging.getLogger(name).setLevel(level)


_quiet = quiet


def _fix_ir_version(model: onnx.ModelProto) -> onnx.ModelProto:
    """Clamp the IR version to what onnxruntime reads, but no lower than the opsets need."""
    try:
        needed = onnx.helper.find_min_ir_version_for(list(model.opset_import), ignore_unknown=True)
    except Exception:  # pragma: no cover - very old onnx
        needed = 8
    model.ir_version = min(model.ir_version, max(MAX_IR_VERSION, needed))
    return model


@contextlib.contextmanager
def _without_bn_fusion():
    """Temporarily drop onnxscript's BatchNormalization->Conv fusion rules.

    ``onnxscript.optimizer.optimize_ir`` reads ``onnxscript.rewriter._DEFAULT_REWRITE_RULES``
    at call time, so swapping the tuple is enough.  Private API: if it moves, BN is simply
    folded as usual and :func:`export` warns that it could not keep it.
    """
    try:
        from onnxscript import rewriter
        from onnxscript.rewriter.rules.common import _fuse_batchnorm
    except Exception:  # pragma: no cover - onnxscript layout changed
        yield False
        return
    saved = rewriter._DEFAULT_REWRITE_RULES
    bn_rules = set(map(id, _fuse_batchnorm.rules))
    rewriter._DEFAULT_REWRITE_RULES = tuple(r for r in saved if id(r) not in bn_rules)
    try:
        yield True
    finally:
        rewriter._DEFAULT_REWRITE_RULES = saved


def _export_legacy(model, example, opset, dynamic_batch, keep_bn) -> onnx.ModelProto:
    buf = io.BytesIO()
    kwargs = {}
    if dynamic_batch:
        kwargs["dynamic_axes"] = {INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}}
    # EVAL runs the eval peephole pass that folds BN into Conv; PRESERVE exports the
    # module in its current (eval) mode without that pass.
    training = torch.onnx.TrainingMode.PRESERVE if keep_bn else torch.onnx.TrainingMode.EVAL
    torch.onnx.export(
        model,
        (example,),
        buf,
        dynamo=False,
        opset_version=opset,
        do_constant_folding=True,
        input_names=[INPUT_NAME],
        output_names=[OUTPUT_NAME],
        training=training,
        **kwargs,
    )
    return onnx.load_from_string(buf.getvalue())


def _export_dynamo(model, example, opset, dynamic_batch, keep_bn) -> onnx.ModelProto:
    kwargs = {}
    if dynamic_batch:
        kwargs["dynamic_shapes"] = ({0: torch.export.Dim("batch", min=1, max=1024)},)
        # Exporting with batch 1 would let torch.export specialise the dim to 1.
        example = torch.cat([example, example], 0)
    ctx = _without_bn_fusion() if keep_bn else contextlib.nullcontext(True)
    with ctx:
        program = torch.onnx.export(
            model,
            (example,),
            dynamo=True,
            opset_version=opset,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            optimize=True,
            verbose=False,
            external_data=False,
            **kwargs,
        )
    # model_proto serialises every initializer inline: no external data.
    return program.model_proto


def export(
    model: torch.nn.Module,
    example: torch.Tensor,
    path: str | os.PathLike,
    exporter: str = "legacy",
    opset: int | None = None,
    dynamic_batch: bool = False,
    *,
    keep_bn: bool = False,
    quiet: bool = True,
) -> Path:
    """Export ``model`` (called as ``model(example)``) to a single self-contained ONNX file.

    The graph input is named ``"input"`` and the output ``"output"``.  ``dynamic_batch``
    makes dim 0 of both symbolic (``dim_param="batch"``; the dynamo exporter traces a
    batch-2 copy of ``example`` so torch.export does not specialise the dim to 1).
    ``keep_bn`` keeps ``BatchNormalization`` nodes instead of folding them into Conv.
    ``quiet`` silences exporter chatter.  Warns if the file's opset differs from the one
    requested.  Returns the path written.
    """
    if exporter not in EXPORTERS:
        raise ValueError(f"exporter must be one of {EXPORTERS}, got {exporter!r}")
    opset = opset or DEFAULT_OPSET[exporter]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    was_training = model.training
    model.eval()
    fn = _export_legacy if exporter == "legacy" else _export_dynamo
    try:
        with (_quiet() if quiet else contextlib.nullcontext()), torch.no_grad():
            proto = fn(model, example, opset, dynamic_batch, keep_bn)
    finally:
        model.train(was_training)
    got = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
    if got != opset:
        # dynamo builds at opset 18 and down-converts only when every op allows it
        # (e.g. ReduceMean-18 has no opset-17 form); otherwise it silently keeps 18.
        warnings.warn(f"{exporter} exporter wrote opset {got}, not the requested {opset}",
                      stacklevel=2)
    if keep_bn and any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        if not any(n.op_type == "BatchNormalization" for n in proto.graph.node):
            warnings.warn(f"{exporter} exporter folded BatchNormalization despite keep_bn=True",
                          stacklevel=2)
    _fix_ir_version(proto)
    onnx.save_model(proto, str(path), save_as_external_data=False)
    return path


def export_named(
    name: str,
    path: str | os.PathLike,
    exporter: str = "legacy",
    opset: int | None = None,
    seed: int = 0,
    *,
    dynamic_batch: bool = False,
    keep_bn: bool = False,
) -> Path:
    """Build registry model ``name`` with ``seed`` and export it to ``path``."""
    model, example = build(name, seed=seed)
    return export(model, example, path, exporter, opset, dynamic_batch, keep_bn=keep_bn)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m refmodels.export", description=__doc__.split("\n")[0])
    p.add_argument("name", choices=sorted(REGISTRY), metavar="NAME",
                   help="model name: " + ", ".join(REGISTRY))
    p.add_argument("out", metavar="OUT.onnx", help="output .onnx path")
    p.add_argument("--exporter", choices=EXPORTERS, default="legacy")
    p.add_argument("--opset", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dynamic-batch", action="store_true")
    p.add_argument("--keep-bn", action="store_true",
                   help="keep BatchNormalization nodes instead of folding them into Conv")
    args = p.parse_args(argv)
    out = export_named(args.name, args.out, args.exporter, args.opset, args.seed,
                       dynamic_batch=args.dynamic_batch, keep_bn=args.keep_bn)
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
