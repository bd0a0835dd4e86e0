"""Weights the graph computes from constants (weight standardisation, as in timm's NF-Nets) are
folded into initializers before analysis, so those layers prune and the oracle checks them."""

import numpy as np
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


def test_analysis_folds_its_private_copy_in_place_and_never_the_callers_model():
    """Weight folding, untying and shape folding all apply: the analysis works on one private
    copy (folded in place, no further copy) and the caller's model stays byte-identical."""
    from graphprune.fold import fold_shapes_into
    from graphprune.pipeline import Analyzed

    m = standardised_conv_model()
    g = m.graph
    # shape arithmetic: y -> Flatten via Reshape(Shape(y)[0], -1), then back to y's shape
    g.node.extend([helper.make_node("Shape", ["y"], ["ys"]),
                   helper.make_node("Gather", ["ys", "zero"], ["n"], axis=0),
                   helper.make_node("Unsqueeze", ["n", "zero1"], ["n1"]),
                   helper.make_node("Concat", ["n1", "minus1"], ["flat_shape"], axis=0),
                   helper.make_node("Reshape", ["y", "flat_shape"], ["flat"])])
    g.initializer.extend([numpy_helper.from_array(np.array(0, np.int64), "zero"),
                          numpy_helper.from_array(np.array([0], np.int64), "zero1"),
                          numpy_helper.from_array(np.array([-1], np.int64), "minus1")])
    del g.output[:]
    g.output.append(helper.make_tensor_value_info("flat", TensorProto.FLOAT, [1, 256]))
    before = m.SerializeToString()
    an = Analyzed(m)
    assert m.SerializeToString() == before
    assert an.model is not m
    assert "Shape" not in {n.op_type for n in an.model.graph.node}           # folded
    assert {"w1", "w2"} <= {t.name for t in an.model.graph.initializer}     # weights folded
    assert an.graph.model is an.model
    # in place on a private copy: same object back, folded; the copy path leaves its input alone
    private = fold_weight_subgraphs(m)
    out, changed = fold_shapes_into(private, inplace=True)
    assert changed and out is private and "Shape" not in {n.op_type for n in private.graph.node}
    keep = fold_weight_subgraphs(m)
    snapshot = keep.SerializeToString()
    out2, changed2 = fold_shapes_into(keep, inplace=False)
    assert changed2 and out2 is not keep and keep.SerializeToString() == snapshot
    res = prune(m, Options(ratio=0.5, bench=False, verify=True))
    assert res.report["verify"]["passed"] and m.SerializeToString() == before


def test_paddle_style_reshaped_bias_is_folded_and_prunes():
    """paddle2onnx keeps a Conv bias 1-D and adds Reshape(Constant bias, Constant [1, C, 1, 1]) to
    a bias-free Conv (PP-OCR's squeeze-excite): folded into a [1, C, 1, 1] initializer, the Add is
    a per-channel parameter and the channels prune."""
    rng = np.random.default_rng(3)

    def const(name, arr):
        return helper.make_node("Constant", [], [name], value=numpy_helper.from_array(np.asarray(arr), name))
    nodes = [const("w1", rng.standard_normal((8, 3, 3, 3)).astype(np.float32)),
             const("b1", rng.standard_normal(8).astype(np.float32)),
             const("s1", np.array([1, 8, 1, 1], np.int64)),
             const("w2", rng.standard_normal((4, 8, 3, 3)).astype(np.float32)),
             helper.make_node("Conv", ["x", "w1"], ["a"], pads=[1, 1, 1, 1]),
             helper.make_node("Reshape", ["b1", "s1"], ["b1r"]),
             helper.make_node("Add", ["a", "b1r"], ["ab"]),
             helper.make_node("Relu", ["ab"], ["r"]),
             helper.make_node("Conv", ["r", "w2"], ["y"], pads=[1, 1, 1, 1])]
    g = helper.make_graph(nodes, "pp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    folded = fold_weight_subgraphs(m)
    assert "Reshape" not in [n.op_type for n in folded.graph.node]
    res = prune(m, Options(ratio=0.5, bench=False, verify=True))
    assert res.report["verify"]["passed"] and res.report["summary"]["pruned_groups"] == 1
    b = next(t for t in res.model.graph.initializer if t.name == "b1r")
    assert list(b.dims) == [1, 4, 1, 1]


def test_computed_bias_tables_are_not_expanded_into_initializers():
    """A relative-position bias gathered from its small table into [heads, N, N] and added to the
    logits is computed from constants too, but folding it would grow the file: left as it is."""
    rng = np.random.default_rng(4)
    table = numpy_helper.from_array(rng.standard_normal((7, 2)).astype(np.float32), "table")
    index = numpy_helper.from_array(rng.integers(0, 7, (2, 4, 4)).astype(np.int64), "index")
    nodes = [helper.make_node("Gather", ["table", "index"], ["g"], axis=0),          # [2, 4, 4, 2]
             helper.make_node("Transpose", ["g"], ["bias"], perm=[3, 0, 1, 2]),      # [2, 2, 4, 4]
             helper.make_node("Add", ["x", "bias"], ["y"])]
    g = helper.make_graph(nodes, "rp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 4, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 2, 4, 4])], [table, index])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    assert fold_weight_subgraphs(m) is m
