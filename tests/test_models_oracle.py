"""Every reference model, from both exporters, pruned at 0.3 and 0.5: checker passes, it runs in
onnxruntime with the same output shapes, MACs fall, the masked-dense oracle holds; ratio 0 is a
byte-identical copy with bit-identical outputs.

The default tier runs the exports committed under tests/data/exports (a covering subset, see
helpers_graphs.COMMITTED_EXPORTS); the rest of each matrix is exported afresh in the slow tier."""

import numpy as np
import onnx
import pytest

from graphprune.bench import random_inputs, run_model
from graphprune.pipeline import Options, prune
from helpers_graphs import EXPORT_VARIANTS, export_params
from refmodels.cnn import REGISTRY

NAMES = sorted(REGISTRY)
EXPORTERS = ["legacy", "dynamo"]


@pytest.mark.parametrize("name,exporter", export_params(NAMES, EXPORTERS))
def test_prune_reference_model(exported, name, exporter):
    model = onnx.load(exported(name, exporter))
    feed = random_inputs(model, seed=3)
    dense_out = run_model(model, feed)
    for ratio in (0.3, 0.5):
        res = prune(model, Options(ratio=ratio, bench=False))
        rep = res.report
        onnx.checker.check_model(res.model, full_check=True)
        out = run_model(res.model, feed)
        assert {k: v.shape for k, v in out.items()} == {k: v.shape for k, v in dense_out.items()}
        assert rep["macs"]["after"] < rep["macs"]["before"], (name, exporter, ratio)
        assert rep["summary"]["pruned_groups"] >= 1
        v = rep["verify"]
        assert v["passed"] and v["max_rel_diff"] < 1e-4, (name, exporter, ratio, v)
        # inputs and outputs of the graph are unchanged
        assert [i.name for i in res.model.graph.input] == [i.name for i in model.graph.input]
        assert [o.name for o in res.model.graph.output] == [o.name for o in model.graph.output]
        assert res.model.ir_version <= 13


@pytest.mark.parametrize("name,exporter", export_params(["resnet_basic", "shufflenetv2", "densenet"], EXPORTERS))
def test_ratio_zero_is_identity(exported, name, exporter):
    model = onnx.load(exported(name, exporter))
    res = prune(model, Options(ratio=0.0, bench=False))
    assert res.model.SerializeToString() == model.SerializeToString()
    feed = random_inputs(model, seed=1)
    a, b = run_model(model, feed), run_model(res.model, feed)
    for k in a:
        assert np.array_equal(a[k], b[k])


def test_ratio_reduces_more_with_higher_ratio(exported):
    model = onnx.load(exported("resnet_bottleneck", "legacy"))
    macs = [prune(model, Options(ratio=r, bench=False, verify=False)).report["macs"]["after"] for r in (0.2, 0.4, 0.6)]
    assert macs[0] > macs[1] > macs[2]


VARIANT_MODELS = ["resnet_basic", "shufflenetv2", "vgg_view", "densenet", "mobilenetv3", "convnext", "resnext"]


@pytest.mark.parametrize("name,exporter,variant", export_params(VARIANT_MODELS, EXPORTERS, sorted(EXPORT_VARIANTS)))
def test_export_variants(exported, name, exporter, variant):
    """BN kept or folded, dynamic batch, opsets 13 and 21: same guarantees; every group that is
    prunable with a static export stays prunable."""
    model = onnx.load(exported(name, exporter, variant))
    res = prune(model, Options(ratio=0.5, bench=False))
    rep = res.report
    onnx.checker.check_model(res.model, full_check=True)
    assert rep["verify"]["passed"], rep["verify"]
    assert rep["macs"]["after"] < rep["macs"]["before"]
    blocked = [g for g in rep["groups"] if g.get("blocked") and g["blocked"] != ["graph output output"]]
    assert not blocked, [(g["name"], g["blocked"]) for g in blocked]
    batch = 3 if variant == "dynamic-batch" else 1
    feed = random_inputs(model, seed=0, batch=batch)
    out = run_model(res.model, feed)
    assert all(v.shape[0] == batch for v in out.values())
