"""Adding a layer kind is one registry entry (graphprune.layers) plus one channel rule.

The toy op ``toy.ops::Linear(X, W[K, N], B[N])`` (a model-local function, so onnxruntime runs
it) is registered here and nowhere else: analysis finds its channels, the plan prunes them, the
masked-dense oracle checks the rewrite, MACs are counted by its own formula and priced by the
cost model, calibration-based scores read its weight as a matrix and repair refits it.
"""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from graphprune import bench
from graphprune.analyze import analyze, consumer_inputs, groups as find_groups
from graphprune.analyze.rules import RULES, RULE_DOCS, register
from graphprune.calib import Calibration
from graphprune.cost import CostModel
from graphprune.layers import LayerKind, layer_of, register_layer, unregister_layer
from graphprune.pipeline import Analyzed, Options, prune

DOMAIN = "toy.ops"


def _linear_rule(ctx):
    """toy Linear: like MatMul with a constant [K, N] weight, plus a bias."""
    x, w, b = ctx.input(0), ctx.input(1), ctx.input(2)
    y = ctx.outputs[0]
    r = ctx.rank(x)
    if r is None or not ctx.is_const(w) or not ctx.is_const(b):
        ctx.block_inputs(f"Linear {ctx.label} has non-constant weights")
        return
    xin = ctx.atoms(x, r - 1)
    if xin is not None:
        ctx.member(w, 0, "in", xin)
    for ax, atoms in ctx.desc(x).items():
        if ax != r - 1:
            ctx.set_desc(y, ax, atoms)
    out = ctx.new_space(ctx.const_shape(w)[1], w)
    ctx.member(w, 1, "out", out)
    ctx.member(b, 0, "param", out)
    ctx.set_desc(y, r - 1, out)


TOY = LayerKind(
    "Linear", domain=DOMAIN, x=0, weight=1, bias=2, fold=(1, 2),
    reduction_axis=lambda node, g: len(g.shape(node.input[0])) - 1,
    weight_axes=lambda node: (1, 0),
    to_matrix=lambda W, node: np.asarray(W, np.float64).T,
    refit=lambda node, W: None,
    mac_inputs=lambda node: [node.input[0], node.input[1]],
    macs=lambda node, shp: None if None in shp else int(np.prod(shp[0][:-1])) * shp[1][0] * shp[1][1],
)


@pytest.fixture
def toy_op():
    """The one registry entry and the one rule: all a new layer kind needs."""
    register_layer(TOY)
    register(TOY.op, domain=DOMAIN, doc="toy layer for the tests")(_linear_rule)
    yield TOY
    unregister_layer(TOY.op, DOMAIN)
    RULES.pop((DOMAIN, TOY.op), None)
    RULE_DOCS.pop(f"{DOMAIN}::{TOY.op}", None)


def toy_model(seed=0):
    """x[B, 8] -> Linear(8 -> 16) -> Relu -> Linear(16 -> 4) -> y."""
    rng = np.random.default_rng(seed)
    fn = helper.make_function(
        DOMAIN, "Linear", ["X", "W", "B"], ["Y"],
        [helper.make_node("MatMul", ["X", "W"], ["XW"]), helper.make_node("Add", ["XW", "B"], ["Y"])],
        opset_imports=[helper.make_opsetid("", 17)])
    inits = [numpy_helper.from_array(rng.normal(size=s).astype(np.float32), n)
             for n, s in (("W1", (8, 16)), ("b1", (16,)), ("W2", (16, 4)), ("b2", (4,)))]
    nodes = [helper.make_node("Linear", ["x", "W1", "b1"], ["h"], domain=DOMAIN, name="fc1"),
             helper.make_node("Relu", ["h"], ["hr"], name="relu"),
             helper.make_node("Linear", ["hr", "W2", "b2"], ["y"], domain=DOMAIN, name="fc2")]
    g = helper.make_graph(nodes, "toy", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(DOMAIN, 1)],
                          functions=[fn], ir_version=8)
    onnx.checker.check_model(m)
    return m


def test_toy_layer_is_analysed_pruned_verified_counted_and_repaired(toy_op):
    m = toy_model()
    an = analyze(m)
    groups, root = find_groups(an)
    prunable = [g for g in groups if g.prunable]
    assert len(prunable) == 1 and len(prunable[0].units) == 16 and not prunable[0].blocked
    fc2 = next(i for i, n in enumerate(an.graph.nodes) if n.name == "fc2")
    assert layer_of(an.graph.nodes[fc2]) is TOY
    (ci,) = consumer_inputs(prunable[0], an.graph)
    assert (ci.node, ci.tensor, ci.axis, ci.op) == (fc2, "hr", 1, "Linear")

    # MACs by the entry's formula (the function is not inlined), priced by the cost model
    feed = {"x": np.zeros((1, 8), np.float32)}
    assert bench.count_macs_params(m, feed)[0] == 8 * 16 + 16 * 4
    res = prune(m, Options(ratio=0.5, bench=False))
    assert res.report["verify"]["passed"], res.report["verify"]
    shapes = {t.name: tuple(t.dims) for t in res.model.graph.initializer}
    assert shapes["W1"] == (8, 8) and shapes["b1"] == (8,) and shapes["W2"] == (8, 4)
    assert res.report["macs"] == {"before": 8 * 16 + 16 * 4, "after": 8 * 8 + 8 * 4}
    cm = CostModel(m, an, root, feed)
    assert cm.cost(res.plan.removed_units())[0] == 8 * 8 + 8 * 4

    # calibration-aware criteria read the weight through to_matrix; repair refits through it
    x = np.random.default_rng(1).normal(size=(64, 8)).astype(np.float32)
    cal = Calibration.from_arrays({"x": x}, batch=32)
    res = prune(m, Options(ratio=0.5, bench=False, criterion="obs", calib=cal, repair="lstsq"))
    assert res.report["verify"]["passed"]
    assert "fc2" in res.report["repair"]["repaired"]
    agree = res.report["repair"]["agreement"]
    assert agree["repaired"]["max_abs_diff"] <= agree["pruned"]["max_abs_diff"]


def test_unregistered_custom_op_blocks_its_channels():
    """Without the entry and the rule the same model is analysed safely: nothing prunes."""
    an = Analyzed(toy_model())
    assert not any(g.prunable and len(g.blocked) < len(g.units) for g in an.groups)


def test_sparse_custom_ops_are_counted_by_their_entries():
    """kernels/README.md's ai.graphprune::SparseMatMul / SparseConv: one MAC per stored value and
    output position (counted from the layer-traits entries; onnxruntime is not needed)."""
    from graphprune.count import count_macs_params

    nnz, K, N = 10, 8, 4
    vals = numpy_helper.from_array(np.ones(nnz, np.float32), "v")
    idx = numpy_helper.from_array(np.arange(nnz, dtype=np.int32) % K, "i")
    ptr = numpy_helper.from_array(np.array([0, 3, 5, 9, 10], np.int32), "p")
    bias = numpy_helper.from_array(np.zeros(N, np.float32), "b")
    nodes = [helper.make_node("SparseMatMul", ["x", "v", "i", "p", "b"], ["y"], domain="ai.graphprune", K=K, N=N),
             helper.make_node("SparseConv", ["z", "v", "i", "p", "b"], ["w"], domain="ai.graphprune", K=K, N=N)]
    vi = lambda n, s: helper.make_tensor_value_info(n, TensorProto.FLOAT, s)
    g = helper.make_graph(nodes, "sparse", [vi("x", [1, 5, K]), vi("z", [1, K, 3, 3])],
                          [vi("y", [1, 5, N]), vi("w", [1, N, 3, 3])], [vals, idx, ptr, bias])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("ai.graphprune", 1)])
    assert count_macs_params(m)[0] == 5 * nnz + 9 * nnz
