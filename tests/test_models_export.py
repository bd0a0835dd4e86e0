"""Every reference model exports with both exporters and onnxruntime matches torch.

Fresh exports of the whole registry are slow (the dynamo exporter takes seconds per model): that
matrix runs in the slow tier; the default tier keeps a few legacy exports (the exporter options)
and tests/test_committed_exports.py checks the committed exports against torch."""

from __future__ import annotations

import onnx
import pytest
import torch

from helpers_graphs import check_export
from refmodels.cnn import REGISTRY, build
from refmodels.export import EXPORTERS, export, export_named, main


@pytest.mark.slow
@pytest.mark.parametrize("exporter", EXPORTERS)
@pytest.mark.parametrize("name", list(REGISTRY))
def test_export_matches_torch(exported, name, exporter):
    model, example = build(name)
    path = exported(name, exporter, fresh=True)        # made by export_named(name, ..., seed=0)
    proto = check_export(model, example, path)
    assert proto.ir_version <= 10
    expected_out = (1, 2, 32, 32) if name == "unet" else (1, 10)
    dims = [d.dim_value for d in proto.graph.output[0].type.tensor_type.shape.dim]
    assert tuple(dims) == expected_out


@pytest.mark.parametrize("exporter", ["legacy", pytest.param("dynamo", marks=pytest.mark.slow)])
def test_keep_bn(exporter, tmp_path):
    model, example = build("resnet_basic")
    folded = export(model, example, tmp_path / "a" / "m.onnx", exporter)
    kept = export(model, example, tmp_path / "b" / "m.onnx", exporter, keep_bn=True)
    n_bn = lambda p: sum(n.op_type == "BatchNormalization" for n in onnx.load(str(p)).graph.node)  # noqa: E731
    assert n_bn(folded) == 0
    assert n_bn(kept) == 13
    check_export(model, example, kept)


@pytest.mark.parametrize(
    "name,exporter",
    [("vgg_view", "legacy"), pytest.param("shufflenetv2", "legacy", marks=pytest.mark.slow),
     pytest.param("shufflenetv2", "dynamo", marks=pytest.mark.slow)],
)
def test_dynamic_batch(name, exporter, tmp_path):
    model, example = build(name)
    path = export(model, example, tmp_path / "m.onnx", exporter, dynamic_batch=True)
    proto = check_export(model, example, path, batch=3)
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param


def test_build_is_deterministic():
    m1, x1 = build("mobilenetv2", seed=3)
    m2, x2 = build("mobilenetv2", seed=3)
    m3, x3 = build("mobilenetv2", seed=4)
    assert not m1.training
    assert torch.equal(x1, x2) and not torch.equal(x1, x3)
    s1, s2, s3 = m1.state_dict(), m2.state_dict(), m3.state_dict()
    assert all(torch.equal(s1[k], s2[k]) for k in s1)
    assert not all(torch.equal(s1[k], s3[k]) for k in s1)
    bn = m1.features[0][1]
    assert not torch.allclose(bn.running_var, torch.ones_like(bn.running_var))
    assert not torch.allclose(bn.running_mean, torch.zeros_like(bn.running_mean))


def test_unknown_name():
    with pytest.raises(KeyError, match="unknown model"):
        build("alexnet")


def test_export_named_and_cli(tmp_path, capsys):
    p = export_named("squeezenet", tmp_path / "a" / "s.onnx", "legacy", opset=13, seed=1)
    assert onnx.load(str(p)).opset_import[0].version == 13
    out = tmp_path / "b" / "v.onnx"
    assert main(["vgg", str(out), "--exporter", "legacy"]) == 0
    assert out.exists() and str(out) in capsys.readouterr().out
    model, example = build("vgg")
    check_export(model, example, out)
