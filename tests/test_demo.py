"""The torch-free demo model is valid ONNX, runs in onnxruntime and is deterministic."""

import subprocess
import sys
from collections import Counter

import numpy as np
import onnx
import onnxruntime as ort

from graphprune.demo import build_demo_model, write_demo_model


def test_demo_model_valid_and_runs():
    m = build_demo_model()
    onnx.checker.check_model(m, full_check=True)
    assert m.ir_version == 8 and m.opset_import[0].version == 17
    ops = Counter(n.op_type for n in m.graph.node)
    for op in ("Conv", "BatchNormalization", "Relu", "Add", "GlobalAveragePool", "Sigmoid",
               "Mul", "Concat", "Flatten", "Gemm"):
        assert ops[op] >= 1, op
    assert any(n.op_type == "Conv" and any(a.name == "group" and a.i == 16 for a in n.attribute)
               for n in m.graph.node)
    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal((1, 3, 32, 32)).astype(np.float32)
    (y,) = sess.run(["logits"], {"input": x})
    assert y.shape == (1, 10) and np.isfinite(y).all() and y.std() > 0.1


def test_demo_model_deterministic(tmp_path):
    a = build_demo_model(seed=0).SerializeToString()
    assert build_demo_model(seed=0).SerializeToString() == a
    assert build_demo_model(seed=1).SerializeToString() != a
    p = write_demo_model(tmp_path / "sub" / "demo.onnx", seed=0)
    assert onnx.load(p).SerializeToString() == a
    assert "stem.conv.weight" in {i.name for i in onnx.load(p).graph.initializer}


def test_demo_does_not_import_torch():
    code = "import sys, graphprune.demo as d; d.build_demo_model(); assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
