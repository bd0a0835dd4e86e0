"""Every reference model exports with both exporters and onnxruntime matches torch."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxscript")
import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # repo root: models/

from models.cnn import REGISTRY, build  # noqa: E402
from models.export import EXPORTERS, export, export_named, main  # noqa: E402

ATOL = 1e-4


def _check(model, example, path, batch=None):
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    # self-contained: no external data references, no side files
    for init in proto.graph.initializer:
        assert init.data_location != onnx.TensorProto.EXTERNAL, init.name
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]
    x = example if batch is None else torch.cat([example * (i + 1) for i in range(batch)], 0)
    with torch.no_grad():
        ref = model(x).numpy()
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (got,) = sess.run(None, {"input": x.numpy()})
    assert got.shape == ref.shape
    np.testing.assert_allclose(got, ref, rtol=0, atol=ATOL)
    return proto


@pytest.mark.parametrize("exporter", EXPORTERS)
@pytest.mark.parametrize("name", list(REGISTRY))
def test_export_matches_torch(name, exporter, tmp_path):
    model, example = build(name)
    path = export(model, example, tmp_path / f"{name}.onnx", exporter)
    proto = _check(model, example, path)
    assert proto.ir_version <= 10
    expected_out = (1, 2, 32, 32) if name == "unet" else (1, 10)
    dims = [d.dim_value for d in proto.graph.output[0].type.tensor_type.shape.dim]
    assert tuple(dims) == expected_out


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_keep_bn(exporter, tmp_path):
    model, example = build("resnet_basic")
    folded = export(model, example, tmp_path / "a" / "m.onnx", exporter)
    kept = export(model, example, tmp_path / "b" / "m.onnx", exporter, keep_bn=True)
    n_bn = lambda p: sum(n.op_type == "BatchNormalization" for n in onnx.load(str(p)).graph.node)  # noqa: E731
    assert n_bn(folded) == 0
    assert n_bn(kept) == 13
    _check(model, example, kept)


@pytest.mark.parametrize(
    "name,exporter",
    [("vgg_view", "legacy"), ("shufflenetv2", "legacy"), ("shufflenetv2", "dynamo")],
)
def test_dynamic_batch(name, exporter, tmp_path):
    model, example = build(name)
    path = export(model, example, tmp_path / "m.onnx", exporter, dynamic_batch=True)
    proto = _check(model, example, path, batch=3)
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
    _check(model, example, out)
