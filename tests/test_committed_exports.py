"""The reference exports committed under tests/data/exports (what the default tier prunes instead of
exporting, see helpers_graphs.COMMITTED_EXPORTS): the folder holds exactly the declared files,
small and free of machine paths; each runs in onnxruntime like its torch model (default tier);
each still is what the current torch exporters make of the current refmodels/ code (slow tier: a
fresh export compared with the committed file). Rewrite them with ``python tools/make_test_exports.py``.
"""

from __future__ import annotations

import os

import onnx
import pytest

from helpers_graphs import (COMMITTED_EXPORTS, EXPORTS_DIR, TRANSFORMER_NAMES, assert_same_export, check_export,
                            committed_export, export_file_name, without_stack_traces)

MAX_TOTAL_BYTES = 4 << 20
SPECS = [pytest.param(*spec, id=export_file_name(*spec)[:-len(".onnx")]) for spec in COMMITTED_EXPORTS]
# building bert_tiny imports the transformers library (~5 s): its torch comparison is slow-tier
TORCH_SPECS = [pytest.param(*spec, id=export_file_name(*spec)[:-len(".onnx")],
                            marks=(pytest.mark.slow,) if spec[0] == "bert_tiny" else ())
               for spec in COMMITTED_EXPORTS]


def test_committed_exports_are_the_declared_ones():
    on_disk = sorted(os.listdir(EXPORTS_DIR))
    assert on_disk == sorted(export_file_name(*spec) for spec in COMMITTED_EXPORTS)
    assert len(set(COMMITTED_EXPORTS)) == len(COMMITTED_EXPORTS)
    total = sum(os.path.getsize(os.path.join(EXPORTS_DIR, f)) for f in on_disk)
    assert total < MAX_TOTAL_BYTES, f"committed exports take {total} bytes"
    for f in on_disk:
        m = onnx.load(os.path.join(EXPORTS_DIR, f))
        assert m.SerializeToString() == without_stack_traces(m).SerializeToString(), f


@pytest.mark.parametrize("name,exporter,variant", TORCH_SPECS)
def test_committed_export_matches_torch(name, exporter, variant):
    """onnxruntime on the committed file agrees with the torch model the registry builds today."""
    path = committed_export(name, exporter, variant)
    if name in TRANSFORMER_NAMES:
        if name == "bert_tiny":
            from refmodels.bert_tiny import build
        else:
            from refmodels.transformers import build

        model, example, input_names, _ = build(name) if name != "bert_tiny" else build()
        check_export(model, example, path, alone=False, input_names=input_names)
    else:
        from refmodels.cnn import build

        model, example = build(name)
        check_export(model, example, path, alone=False, batch=3 if variant == "dynamic-batch" else None)


@pytest.mark.slow
@pytest.mark.parametrize("name,exporter,variant", SPECS)
def test_committed_export_is_current(exported, name, exporter, variant):
    """A fresh export equals the committed one (a torch, onnxscript or refmodels/ change that alters
    an export fails here: rewrite the files with tools/make_test_exports.py)."""
    fresh = onnx.load(exported(name, exporter, variant, fresh=True))
    assert_same_export(without_stack_traces(fresh), onnx.load(committed_export(name, exporter, variant)))
