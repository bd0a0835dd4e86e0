"""Weights the graph computes from constants (weight standardisation, as in timm's NF-Nets) are
folded into initializers before analysis, so those layers prune and the oracle checks them."""

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from graphprune.fold import fold_weight_subgraphs
from graphprune.pipeline import Options, prune


def standardised_conv_model(seed=0):
    """x -> Conv(W1 standardised in-graph) -> Relu -> Conv(W2 standardised in-graph) -> y."""
    rng = np.random.default_rng(seed)
    inits, nodes = [], []
    shapes = {1: (8, 3, 3, 3), 2: (4, 8, 3, 3)}
    for k, shp in shapes.items():
        inits += [numpy_helper.from_array(rng.standard_normal(shp).astype(np.float32), f"raw{k}"),
                  numpy_helper.from_array((rng.random((shp[0], 1, 1, 1)) + 0.5).astype(np.float32), f"gain{k}")]
        nodes += [helper.make_node("ReduceMean", [f"raw{k}"], [f"mu{k}"], axes=[1, 2, 3], keepdims=1),
                  helper.make_node("Sub", [f"raw{k}", f"mu{k}"], [f"c{k}"]),
                  helper.make_node("Mul", [f"c{k}", f"gain{k}"], [f"w{k}"])]
    nodes += [helper.make_node("Conv", ["x", "w1"], ["a"], pads=[1, 1, 1, 1]),
              helper.make_node("Relu", ["a"], ["r"]),
              helper.make_node("Conv", ["r", "w2"], ["y"], pads=[1, 1, 1, 1])]
    g = helper.make_graph(nodes, "ws", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


def test_computed_weights_are_folded_and_pruned():
    m = standardised_conv_model()
    before = m.SerializeToString()
    folded = fold_weight_subgraphs(m)
    assert folded is not m and m.SerializeToString() == before          # the input is not modified
    assert {t.name for t in folded.graph.initializer} == {"w1", "w2"}
    assert [n.op_type for n in folded.graph.node] == ["Conv", "Relu", "Conv"]
    res = prune(m, Options(ratio=0.5, bench=False, verify=True))
    assert res.report["verify"]["passed"]
    w1 = next(t for t in res.model.graph.initializer if t.name == "w1")
    assert list(w1.dims) == [4, 3, 3, 3]
    assert m.SerializeToString() == before


def test_nothing_to_fold_returns_the_same_model():
    m = standardised_conv_model()
    plain = fold_weight_subgraphs(m)
    assert fold_weight_subgraphs(plain) is plain
