"""A small self-contained demo CNN, built with ``onnx.helper`` and numpy (no torch).

It holds one of each structure that couples channels during pruning::

    input [1,3,32,32]
    stem   : Conv 3x3 (3->16) -> BatchNormalization -> Relu
    block1 : Conv 3x3 (16->16) -> Relu -> Conv 3x3 (16->16) -> Add(stem) -> Relu   (residual)
    dw     : Conv 3x3 depthwise (group=16, stride 2) -> Relu
    pw     : Conv 1x1 (16->32) -> BatchNormalization -> Relu
    se     : GlobalAveragePool -> Conv 1x1 (32->8) -> Relu -> Conv 1x1 (8->32) -> Sigmoid
             -> Mul(pw)                                                        (squeeze-excite)
    mix    : [Conv 1x1 (32->24) -> Relu | Conv 3x3 (32->24) -> Relu] -> Concat (48)
    fuse   : Conv 1x1 (48->64) -> Relu
    head   : GlobalAveragePool -> Flatten -> Gemm (transB=1, 64->10)
    output "logits" [1,10]

Weights are deterministic in ``seed`` (``numpy.random.default_rng``); initializers carry
readable names such as ``stem.conv.weight`` or ``se.reduce.bias``.
"""

from __future__ import annotations

import os

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

__all__ = ["build_demo_model", "write_demo_model", "INPUT_NAME", "OUTPUT_NAME", "INPUT_SHAPE"]

INPUT_NAME = "input"
OUTPUT_NAME = "logits"
INPUT_SHAPE = (1, 3, 32, 32)
NUM_CLASSES = 10
OPSET = 17
IR_VERSION = 8


class _Builder:
    def __init__(self, seed: int):
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []

    # -- parameters -------------------------------------------------------------------
    def _param(self, name: str, value: np.ndarray) -> str:
        self.inits.append(numpy_helper.from_array(value.astype(np.float32), name))
        return name

    def _normal(self, shape, std) -> np.ndarray:
        return self.rng.normal(0.0, std, size=shape)

    def _uniform(self, shape, lo, hi) -> np.ndarray:
        return self.rng.uniform(lo, hi, size=shape)

    # -- layers -----------------------------------------------------------------------
    def conv(self, name, x, cin, cout, k, stride=1, group=1, bias=True) -> str:
        fan_in = (cin // group) * k * k
        inputs = [x, self._param(f"{name}.weight",
                                 self._normal((cout, cin // group, k, k), np.sqrt(2.0 / fan_in)))]
        if bias:
            inputs.append(self._param(f"{name}.bias", self._normal((cout,), 0.05)))
        pad = (k - 1) // 2
        out = f"{name}.out"
        self.nodes.append(helper.make_node(
            "Conv", inputs, [out], name=name, kernel_shape=[k, k], strides=[stride, stride],
            pads=[pad] * 4, dilations=[1, 1], group=group,
        ))
        return out

    def bn(self, name, x, c) -> str:
        # running statistics and affine parameters all non-trivial
        inputs = [
            x,
            self._param(f"{name}.weight", self._uniform((c,), 0.5, 1.5)),
            self._param(f"{name}.bias", self._normal((c,), 0.1)),
            self._param(f"{name}.running_mean", self._normal((c,), 0.1)),
            self._param(f"{name}.running_var", self._uniform((c,), 0.5, 1.5)),
        ]
        out = f"{name}.out"
        self.nodes.append(helper.make_node(
            "BatchNormalization", inputs, [out], name=name, epsilon=1e-5, momentum=0.9
        ))
        return out

    def op(self, op_type, name, inputs, **attrs) -> str:
        out = f"{name}.out"
        self.nodes.append(helper.make_node(op_type, list(inputs), [out], name=name, **attrs))
        return out

    def gemm(self, name, x, cin, cout) -> str:
        w = self._param(f"{name}.weight", self._normal((cout, cin), np.sqrt(1.0 / cin)))
        b = self._param(f"{name}.bias", self._normal((cout,), 0.05))
        return self.op("Gemm", name, [x, w, b], transB=1)


def build_demo_model(seed: int = 0) -> onnx.ModelProto:
    """Build the demo CNN (opset 17, IR 8), weights drawn from ``default_rng(seed)``."""
    b = _Builder(seed)
    x = INPUT_NAME

    # stem: Conv + BN + Relu
    x = b.conv("stem.conv", x, 3, 16, 3, bias=False)
    x = b.bn("stem.bn", x, 16)
    stem = b.op("Relu", "stem.relu", [x])

    # residual block: two 3x3 convs + Add
    y = b.conv("block1.conv1", stem, 16, 16, 3)
    y = b.op("Relu", "block1.relu1", [y])
    y = b.conv("block1.conv2", y, 16, 16, 3)
    y = b.op("Add", "block1.add", [y, stem])
    x = b.op("Relu", "block1.relu2", [y])

    # depthwise (group = C) then pointwise
    x = b.conv("dw.conv", x, 16, 16, 3, stride=2, group=16)
    x = b.op("Relu", "dw.relu", [x])
    x = b.conv("pw.conv", x, 16, 32, 1, bias=False)
    x = b.bn("pw.bn", x, 32)
    feat = b.op("Relu", "pw.relu", [x])

    # squeeze-excite: gate multiplies the feature map channel-wise
    s = b.op("GlobalAveragePool", "se.pool", [feat])
    s = b.conv("se.reduce", s, 32, 8, 1)
    s = b.op("Relu", "se.relu", [s])
    s = b.conv("se.expand", s, 8, 32, 1)
    s = b.op("Sigmoid", "se.gate", [s])
    x = b.op("Mul", "se.mul", [feat, s])

    # two-branch block joined by Concat
    a = b.conv("mix.branch_a.conv", x, 32, 24, 1)
    a = b.op("Relu", "mix.branch_a.relu", [a])
    c = b.conv("mix.branch_b.conv", x, 32, 24, 3)
    c = b.op("Relu", "mix.branch_b.relu", [c])
    x = b.op("Concat", "mix.concat", [a, c], axis=1)
    x = b.conv("fuse.conv", x, 48, 64, 1)
    x = b.op("Relu", "fuse.relu", [x])

    # classifier
    x = b.op("GlobalAveragePool", "head.pool", [x])
    x = b.op("Flatten", "head.flatten", [x], axis=1)
    x = b.gemm("head.fc", x, 64, NUM_CLASSES)
    # rename the last value to the graph output name
    b.nodes[-1].output[0] = OUTPUT_NAME

    graph = helper.make_graph(
        b.nodes,
        "graphprune_demo",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, list(INPUT_SHAPE))],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, [1, NUM_CLASSES])],
        initializer=b.inits,
        doc_string=f"graphprune demo CNN (seed={seed})",
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        ir_version=IR_VERSION,
        producer_name="graphprune.demo",
    )
    return model


def write_demo_model(path: str | os.PathLike, seed: int = 0) -> str:
    """Build the demo model and save it to ``path`` (a single file); return the path."""
    path = os.fspath(path)
    parent = os.path.dirname(path)
    if parent:
        os.makedirs(parent, exist_ok=True)
    onnx.save_model(build_demo_model(seed), path)
    return path
