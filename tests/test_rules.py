"""Per-pattern rule tests on small hand-built ONNX graphs.

Each case builds a graph with onnx.helper + numpy (fixed seeds), prunes it and checks:
the masked-dense oracle passes, the pruned model passes the full ONNX checker, runs in
onnxruntime with the dense model's output shapes, MACs fall when something should be pruned,
and what was pruned or blocked is what the pattern calls for.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from graphprune.bench import random_inputs, run_model
from graphprune.pipeline import Analyzed
from graphprune.plan import make_plan
from graphprune.score import score
from helpers_graphs import FLOAT, GraphBuilder, an_group_of, group_of, init, member, pruned, run_case

OPSETS = (13, 15, 17, 18, 19, 21)


# ----------------------------------------------------------------------------- 1. basic chain


def build_chain(opset=17, bias=True, const_nodes=False, seed=0):
    b = GraphBuilder(opset=opset, seed=seed, const_nodes=const_nodes)
    x = b.input("x", [1, 3, 8, 8])
    h = b.conv(x, 3, 16, bias=bias, name="conv1")
    h = b.relu(b.bn(h, 16, name="bn1"))
    y = b.conv(h, 16, 8, bias=bias, name="conv2")
    return b.model(y)


@pytest.mark.parametrize("bias", [True, False])
def test_conv_bn_relu_conv(bias):
    m = build_chain(bias=bias)
    res = run_case(m)
    g1 = group_of(res, "conv1.weight", "out")
    assert g1["channels_before"] == 16 and g1["channels_after"] == 8
    names = {mm["tensor"] for mm in g1["members"]}
    expect = {"conv1.weight", "conv2.weight", "bn1.weight", "bn1.bias", "bn1.running_mean", "bn1.running_var"}
    if bias:
        expect.add("conv1.bias")
    assert expect <= names
    g2 = group_of(res, "conv2.weight", "out")
    assert not pruned(g2) and any("graph output" in r for r in g2.get("blocked", []))
    assert init(res.model, "conv1.weight").shape == (8, 3, 3, 3)
    assert init(res.model, "conv2.weight").shape == (8, 8, 3, 3)
    assert init(res.model, "bn1.running_var").shape == (8,)


def test_constant_node_weights_match_initializers():
    a = build_chain(const_nodes=False)
    b = build_chain(const_nodes=True)
    assert not any(n.op_type == "Constant" for n in a.graph.node)
    assert sum(n.op_type == "Constant" for n in b.graph.node) >= 7
    ra, rb = run_case(a), run_case(b)
    ka = member(group_of(ra, "conv1.weight", "out"), "conv1.weight", "out")["kept"]
    kb = member(group_of(rb, "conv1.weight", "out"), "conv1.weight", "out")["kept"]
    assert ka == kb
    assert ra.report["macs"] == rb.report["macs"]
    assert init(rb.model, "conv1.weight").shape == (8, 3, 3, 3)
    feed = random_inputs(a, seed=3)
    oa, ob = run_model(ra.model, feed), run_model(rb.model, feed)
    for k in oa:
        np.testing.assert_allclose(oa[k], ob[k], rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- 2. grouped / depthwise / strided


def test_grouped_conv_between_pointwise():
    b = GraphBuilder(seed=1)
    x = b.input("x", [1, 3, 8, 8])
    h = b.relu(b.conv(x, 3, 16, k=1, name="pw1"))
    h = b.relu(b.conv(h, 16, 16, k=3, group=4, name="gconv"))
    y = b.conv(h, 16, 8, k=1, name="pw2")
    m = b.model(y)
    res = run_case(m)
    g_in = group_of(res, "pw1.weight", "out")
    g_out = group_of(res, "gconv.weight", "out")
    assert g_in["id"] != g_out["id"]
    for g in (g_in, g_out):
        assert g["channels_after"] == 8, g
    # equal kept count in each of the 4 conv groups, on both sides of the grouped conv
    kept_out = member(g_out, "gconv.weight", "out")["kept"]
    assert sorted(np.bincount(np.array(kept_out) // 4, minlength=4).tolist()) == [2, 2, 2, 2]
    kept_in = member(g_in, "pw1.weight", "out")["kept"]
    assert np.bincount(np.array(kept_in) // 4, minlength=4).tolist() == [2, 2, 2, 2]
    W = init(res.model, "gconv.weight")
    assert W.shape == (8, 2, 3, 3)
    node = next(n for n in res.model.graph.node if n.name == "gconv")
    assert helper.get_attribute_value(next(a for a in node.attribute if a.name == "group")) == 4


@pytest.mark.parametrize("mult", [1, 2])
def test_depthwise_conv(mult):
    b = GraphBuilder(seed=2)
    x = b.input("x", [1, 3, 8, 8])
    h = b.relu(b.conv(x, 3, 8, k=1, name="pw1"))
    h = b.relu(b.conv(h, 8, 8 * mult, k=3, group=8, name="dw"))
    y = b.conv(h, 8 * mult, 4, k=1, name="pw2")
    m = b.model(y)
    res = run_case(m)
    g = group_of(res, "pw1.weight", "out")
    # the depthwise output is the same space as its input: one group
    assert member(g, "dw.weight", "out") is not None
    assert g["channels_before"] == 8 and g["channels_after"] == 4
    assert init(res.model, "dw.weight").shape == (4 * mult, 1, 3, 3)
    node = next(n for n in res.model.graph.node if n.name == "dw")
    assert helper.get_attribute_value(next(a for a in node.attribute if a.name == "group")) == 4


def test_strided_and_dilated_convs():
    b = GraphBuilder(seed=3)
    x = b.input("x", [1, 3, 16, 16])
    h = b.relu(b.conv(x, 3, 8, stride=2, name="c_stride"))
    h = b.relu(b.conv(h, 8, 12, dilation=2, name="c_dil"))
    h = b.relu(b.conv(h, 12, 6, k=5, stride=2, dilation=2, pad=4, name="c_both"))
    y = b.conv(h, 6, 4, k=1, name="head")
    m = b.model(y)
    res = run_case(m)
    for w, before in (("c_stride.weight", 8), ("c_dil.weight", 12), ("c_both.weight", 6)):
        g = group_of(res, w, "out")
        assert g["channels_before"] == before and g["channels_after"] == before // 2, g


# ----------------------------------------------------------------------------- 3. elementwise


def test_residual_add_of_two_branches():
    b = GraphBuilder(seed=4)
    x = b.input("x", [1, 3, 8, 8])
    s = b.relu(b.conv(x, 3, 8, name="stem"))
    a = b.conv(b.relu(b.conv(s, 8, 8, name="a1")), 8, 12, name="a2")
    c = b.conv(s, 8, 12, k=1, name="short")
    h = b.relu(b.node("Add", [a, c], name="add"))
    y = b.conv(h, 12, 4, name="head")
    res = run_case(b.model(y))
    g = group_of(res, "a2.weight", "out")
    assert member(g, "short.weight", "out")
    assert member(g, "head.weight", "in")
    assert g["channels_before"] == 12 and g["channels_after"] == 6
    assert (member(g, "a2.weight", "out")["kept"] == member(g, "short.weight", "out")["kept"])
    for w in ("stem.weight", "a1.weight"):
        assert pruned(group_of(res, w, "out"))


def test_squeeze_excite_mul():
    b = GraphBuilder(seed=5)
    x = b.input("x", [1, 3, 8, 8])
    f = b.relu(b.conv(x, 3, 16, name="body"))
    s = b.node("GlobalAveragePool", [f])
    s = b.relu(b.conv(s, 16, 4, k=1, name="se_reduce"))
    s = b.node("Sigmoid", [b.conv(s, 4, 16, k=1, name="se_expand")])
    h = b.node("Mul", [f, s], name="se_mul")
    y = b.conv(h, 16, 8, name="head")
    res = run_case(b.model(y))
    g = group_of(res, "body.weight", "out")
    assert member(g, "se_expand.weight", "out") and member(g, "se_reduce.weight", "in")
    assert g["channels_after"] == 8
    g2 = group_of(res, "se_reduce.weight", "out")
    assert g2["id"] != g["id"] and g2["channels_before"] == 4 and g2["channels_after"] == 2


def test_sub_div_mul_constants():
    b = GraphBuilder(seed=6)
    x = b.input("x", [1, 3, 8, 8])
    h = b.conv(x, 3, 8, name="conv1")
    h = b.node("Sub", [h, b.const("mean_c", b.randn(8, 1, 1))])            # per-channel
    h = b.node("Div", [h, b.const("std_s", np.array(2.0, np.float32))])    # scalar
    h = b.node("Mul", [b.const("gain_c", 1 + b.randn(8, 1, 1, scale=0.1)), h])  # per-channel, const first
    h = b.node("Sub", [b.const("one_s", np.array([1.0], np.float32)), h])  # [1] const first
    h = b.node("Div", [h, b.const("den_c", (1.5 + b.rng.random((1, 8, 1, 1))).astype(np.float32))])  # rank 4
    h = b.node("Add", [h, b.const("off_c", b.randn(8, 1, 1))])
    y = b.conv(b.relu(h), 8, 4, name="conv2")
    res = run_case(b.model(y))
    g = group_of(res, "conv1.weight", "out")
    assert g["channels_after"] == 4
    names = {mm["tensor"] for mm in g["members"]}
    assert {"mean_c", "gain_c", "den_c", "off_c"} <= names
    assert init(res.model, "mean_c").shape == (4, 1, 1)
    assert init(res.model, "den_c").shape == (1, 4, 1, 1)
    assert init(res.model, "std_s").shape == ()


# ----------------------------------------------------------------------------- 4. concat / split / slice


def test_concat_then_conv():
    b = GraphBuilder(seed=7)
    x = b.input("x", [1, 3, 8, 8])
    p = b.relu(b.conv(x, 3, 8, name="pa"))
    q = b.relu(b.conv(x, 3, 6, name="pb"))
    h = b.node("Concat", [p, q], axis=1)
    y = b.conv(h, 14, 4, name="fuse")
    res = run_case(b.model(y))
    ga, gb = group_of(res, "pa.weight", "out"), group_of(res, "pb.weight", "out")
    assert ga["id"] != gb["id"]
    assert ga["channels_after"] == 4 and gb["channels_after"] == 3
    mf = member(ga, "fuse.weight", "in")
    assert mf["positions"] == list(range(8))
    assert member(gb, "fuse.weight", "in")["positions"] == list(range(8, 14))
    assert init(res.model, "fuse.weight").shape == (4, 7, 3, 3)


def build_split(opset, form, sizes=(8, 8), reduce_head=False, seed=8):
    b = GraphBuilder(opset=opset, seed=seed)
    x = b.input("x", [1, 3, 8, 8])
    c = sum(sizes)
    h = b.relu(b.conv(x, 3, c, name="stem"))
    parts = b.split(h, list(sizes), axis=1, form=form, name="split")
    outs = [b.relu(b.conv(p, s, 4, name=f"br{i}")) for i, (p, s) in enumerate(zip(parts, sizes))]
    h = b.node("Concat", outs, axis=1, name="cat")
    if reduce_head:
        h = b.reduce_mean(h, [2, 3], keepdims=0)
        y = b.gemm(h, 4 * len(sizes), 5, name="fc")
    else:
        y = b.conv(h, 4 * len(sizes), 4, k=1, name="head")
    return b.model(y)


@pytest.mark.parametrize("opset,form,sizes", [
    (11, "attr", (8, 8)),
    (11, "attr", (6, 10)),
    (13, "input", (8, 8)),
    (13, "input", (6, 10)),
    (18, "num_outputs", (8, 8)),
    (18, "input", (6, 10)),
])
def test_split_forms(opset, form, sizes):
    m = build_split(opset, form, sizes)
    res = run_case(m)
    g = group_of(res, "stem.weight", "out")
    assert g["channels_after"] == sum(sizes) // 2
    kept = np.array(member(g, "stem.weight", "out")["kept"])
    want = [int((kept < sizes[0]).sum()), int((kept >= sizes[0]).sum())]
    assert init(res.model, "br0.weight").shape[1] == want[0]
    assert init(res.model, "br1.weight").shape[1] == want[1]
    node = next(n for n in res.model.graph.node if n.name == "split")
    if opset < 13:
        got = list(helper.get_attribute_value(next(a for a in node.attribute if a.name == "split")))
    else:
        assert len(node.input) == 2 and node.input[1]
        got = init(res.model, node.input[1]).tolist()
    assert got == want


def test_slice_channel_axis():
    b = GraphBuilder(seed=9)
    x = b.input("x", [1, 3, 8, 8])
    h = b.relu(b.conv(x, 3, 16, name="stem"))
    s = b.node("Slice", [h, b.ints("sl.starts", [2]), b.ints("sl.ends", [10]), b.ints("sl.axes", [1])], name="sl")
    t = b.node("Slice", [h, b.ints("sl2.starts", [-6]), b.ints("sl2.ends", [2**63 - 1]), b.ints("sl2.axes", [1]),
                         b.ints("sl2.steps", [1])], name="sl2")
    y1 = b.conv(s, 8, 4, name="c1")
    y2 = b.conv(t, 6, 4, name="c2")
    y = b.node("Add", [y1, y2])
    res = run_case(b.model(y))
    g = group_of(res, "stem.weight", "out")
    assert g["channels_before"] == 16 and g["channels_after"] == 8
    kept = np.array(member(g, "stem.weight", "out")["kept"])
    assert init(res.model, "c1.weight").shape[1] == int(((kept >= 2) & (kept < 10)).sum())
    assert init(res.model, "c2.weight").shape[1] == int((kept >= 10).sum())


# ----------------------------------------------------------------------------- 5. channel shuffle


def test_channel_shuffle():
    b = GraphBuilder(seed=10)
    x = b.input("x", [1, 3, 8, 8])
    p = b.relu(b.conv(x, 3, 8, k=1, name="pa"))
    q = b.relu(b.conv(x, 3, 8, k=1, name="pb"))
    h = b.node("Concat", [p, q], axis=1)
    h = b.reshape(h, [1, 2, 8, 8, 8])
    h = b.node("Transpose", [h], perm=[0, 2, 1, 3, 4])
    h = b.reshape(h, [1, 16, 8, 8])
    l, r = b.split(h, [8, 8], axis=1, name="split")
    l = b.relu(b.conv(l, 8, 4, name="cl"))
    r = b.relu(b.conv(r, 8, 4, name="cr"))
    y = b.conv(b.node("Concat", [l, r], axis=1), 8, 4, k=1, name="head")
    m = b.model(y)
    res = run_case(m)
    g = group_of(res, "pa.weight", "out")
    # channel k of pa and channel k of pb land next to each other: one unit
    assert member(g, "pb.weight", "out")
    ka = member(g, "pa.weight", "out")["kept"]
    kb = member(g, "pb.weight", "out")["kept"]
    assert ka == kb and len(ka) == 4
    kept_shuffled = sorted([2 * k for k in ka] + [2 * k + 1 for k in ka])
    assert init(res.model, "cl.weight").shape[1] == sum(1 for k in kept_shuffled if k < 8)
    assert init(res.model, "cr.weight").shape[1] == sum(1 for k in kept_shuffled if k >= 8)


# ----------------------------------------------------------------------------- 6. flatten / gemm / matmul


@pytest.mark.parametrize("trans_b", [1, 0])
def test_flatten_gemm(trans_b):
    b = GraphBuilder(seed=11)
    x = b.input("x", [1, 3, 8, 8])
    h = b.relu(b.conv(x, 3, 8, name="conv1"))
    h = b.node("MaxPool", [h], kernel_shape=[2, 2], strides=[2, 2])
    h = b.node("Flatten", [h], axis=1)
    y = b.gemm(h, 8 * 16, 10, trans_b=trans_b, name="fc")
    res = run_case(b.model(y))
    g = group_of(res, "conv1.weight", "out")
    assert g["channels_after"] == 4
    kept = member(g, "conv1.weight", "out")["kept"]
    fcm = member(g, "fc.weight", "in")
    assert fcm["axis"] == (1 if trans_b else 0)
    assert fcm["kept"] == [c * 16 + i for c in kept for i in range(16)]
    W = init(res.model, "fc.weight")
    assert W.shape == ((10, 64) if trans_b else (64, 10))


def test_reshape_matmul():
    b = GraphBuilder(seed=12)
    x = b.input("x", [1, 3, 8, 8])
    h = b.relu(b.conv(x, 3, 8, name="conv1"))
    h = b.node("MaxPool", [h], kernel_shape=[2, 2], strides=[2, 2])
    h = b.reshape(h, [1, -1])
    h = b.node("MatMul", [h, b.const("mm.weight", b.randn(128, 10, scale=0.1))])
    y = b.node("Add", [h, b.const("mm.bias", b.randn(10))])
    res = run_case(b.model(y))
    g = group_of(res, "conv1.weight", "out")
    assert g["channels_after"] == 4
    assert init(res.model, "mm.weight").shape == (64, 10)


def build_runtime_view(opset, batch_dim):
    """torch's x.view(x.size(0), -1): Shape -> Gather -> Unsqueeze -> Concat([n], [-1]) -> Reshape."""
    b = GraphBuilder(opset=opset, seed=13)
    x = b.input("x", [batch_dim, 3, 8, 8])
    h = b.relu(b.conv(x, 3, 8, name="conv1"))
    h = b.node("MaxPool", [h], kernel_shape=[2, 2], strides=[2, 2])
    shp = b.node("Shape", [h])
    n = b.node("Gather", [shp, b.ints("idx0", 0)], axis=0)
    n = b.unsqueeze(n, [0])
    tgt = b.node("Concat", [n, b.ints("minus1", [-1])], axis=0)
    h = b.node("Reshape", [h, tgt], name="view")
    y = b.gemm(h, 128, 10, name="fc")
    return b.model(y, output_shapes=[[batch_dim, 10]])


@pytest.mark.parametrize("opset", [13, 17])
@pytest.mark.parametrize("batch_dim", [1, "N"], ids=["static", "dynamic"])
def test_runtime_view(opset, batch_dim):
    m = build_runtime_view(opset, batch_dim)
    g = an_group_of(Analyzed(m), "conv1.weight", "out")
    assert g.prunable, g.describe_block()
    res = run_case(m, batch=3)
    g = group_of(res, "conv1.weight", "out")
    assert g["channels_after"] == 4 and not g.get("blocked"), g
    assert init(res.model, "fc.weight").shape == (10, 64)
    if batch_dim == "N":
        feed = random_inputs(m, seed=1, batch=5)
        assert run_model(res.model, feed)["fc_out"].shape == (5, 10)


# ----------------------------------------------------------------------------- 7. ConvTranspose / U-Net


def test_conv_transpose_unet():
    b = GraphBuilder(seed=14)
    x = b.input("x", [1, 3, 16, 16])
    e1 = b.relu(b.conv(x, 3, 8, name="enc1"))
    e2 = b.relu(b.conv(e1, 8, 16, stride=2, name="enc2"))
    up = b.relu(b.conv_transpose(e2, 16, 8, name="up"))
    h = b.node("Concat", [up, e1], axis=1, name="skip")
    h = b.relu(b.conv(h, 16, 8, name="dec"))
    y = b.conv(h, 8, 2, k=1, name="out")
    res = run_case(b.model(y))
    for w, n in (("enc1.weight", 8), ("enc2.weight", 16), ("up.weight", 8), ("dec.weight", 8)):
        g = group_of(res, w, "out")
        assert g["channels_before"] == n and g["channels_after"] == n // 2, (w, g)
    assert member(group_of(res, "enc2.weight", "out"), "up.weight", "in")
    assert init(res.model, "up.weight").shape == (8, 4, 2, 2)
    assert init(res.model, "dec.weight").shape == (4, 8, 3, 3)


# ----------------------------------------------------------------------------- 8. blocking


def test_unknown_op_blocks_only_its_channels():
    b = GraphBuilder(seed=15)
    x = b.input("x", [1, 3, 8, 8])
    h = b.relu(b.conv(x, 3, 8, name="feeds_custom"))
    h = b.node("MyOp", [h], domain="custom.domain", name="my")
    h = b.conv(h, 8, 8, name="after_custom")
    k = b.relu(b.conv(x, 3, 8, name="free"))
    k = b.conv(k, 8, 8, name="free2")
    y = b.node("Add", [h, k])
    m = b.model(y, output_shapes=[[1, 8, 8, 8]])
    an = Analyzed(m)
    g = an_group_of(an, "feeds_custom.weight", "out")
    assert not g.prunable
    assert "MyOp" in g.describe_block()
    assert len(g.blocked) == len(g.units) == 8
    assert an_group_of(an, "free.weight", "out").prunable
    # downstream of MyOp and at the graph output: nothing to prune there either
    assert not an_group_of(an, "after_custom.weight", "out").prunable
    assert not an_group_of(an, "free2.weight", "out").prunable
    # the plan (no onnxruntime involved) prunes the free group and leaves the blocked one whole
    plan = make_plan(an.groups, score(an.groups, an.graph), 0.5)
    assert plan.keep[g.id].all()
    assert plan.keep[an_group_of(an, "free.weight", "out").id].sum() == 4


def test_if_subgraph_capture_blocks():
    b = GraphBuilder(seed=16)
    x = b.input("x", [1, 3, 8, 8])
    cond = b.input("cond", [1], elem=onnx.TensorProto.BOOL)
    cap = b.relu(b.conv(x, 3, 8, name="captured"))
    then_g = helper.make_graph([helper.make_node("Identity", [cap], ["t_out"])], "then", [],
                               [helper.make_tensor_value_info("t_out", FLOAT, [1, 8, 8, 8])])
    else_g = helper.make_graph([helper.make_node("Neg", [cap], ["e_out"])], "else", [],
                               [helper.make_tensor_value_info("e_out", FLOAT, [1, 8, 8, 8])])
    h = b.node("If", [cond], name="branch", then_branch=then_g, else_branch=else_g)
    h = b.relu(b.conv(h, 8, 12, name="after_if"))
    y = b.conv(h, 12, 4, name="head")
    m = b.model(y)
    an = Analyzed(m)
    g = an_group_of(an, "captured.weight", "out")
    assert not g.prunable and "subgraph" in g.describe_block() and "If" in g.describe_block()
    res = run_case(m)
    assert not pruned(group_of(res, "captured.weight", "out"))
    assert pruned(group_of(res, "after_if.weight", "out"))


def test_graph_outputs_keep_width():
    b = GraphBuilder(seed=17)
    x = b.input("x", [1, 3, 8, 8])
    a = b.relu(b.conv(x, 3, 8, name="exposed"))        # a graph output, also consumed
    h = b.relu(b.conv(a, 8, 12, name="hidden"))
    y = b.conv(h, 12, 6, name="last")                  # a graph output
    m = b.model(a, y)
    res = run_case(m)
    ge = group_of(res, "exposed.weight", "out")
    assert not pruned(ge) and any("graph output" in r for r in ge["blocked"])
    assert not pruned(group_of(res, "last.weight", "out"))
    assert pruned(group_of(res, "hidden.weight", "out"))


@pytest.mark.parametrize("kind", ["float", "bool"])
def test_scalar_graph_input(kind):
    """A rank-0 graph input (a scale or a flag fed at run time) next to a prunable chain."""
    b = GraphBuilder(seed=26)
    x = b.input("x", [1, 3, 8, 8])
    h = b.relu(b.conv(x, 3, 8, name="conv1"))
    if kind == "float":
        h = b.node("Mul", [h, b.input("scale", [])])
    else:
        flag = b.input("flag", [], elem=onnx.TensorProto.BOOL)
        h = b.node("Where", [flag, h, b.const("zero", np.array(0.0, np.float32))])
    y = b.conv(h, 8, 4, name="conv2")
    res = run_case(b.model(y))
    assert group_of(res, "conv1.weight", "out")["channels_after"] == 4


# ----------------------------------------------------------------------------- 9. normalisations


def build_groupnorm(seed=18):
    b = GraphBuilder(opset=21, seed=seed)
    x = b.input("x", [1, 3, 8, 8])
    h = b.conv(x, 3, 16, name="conv1")
    h = b.node("GroupNormalization", [h, b.const("gn.scale", 1 + b.randn(16, scale=0.1)),
                                      b.const("gn.bias", b.randn(16, scale=0.1))], num_groups=4, name="gn")
    y = b.conv(b.relu(h), 16, 4, name="conv2")
    # onnx shape inference does not see through the GroupNormalization-21 function body
    return b.model(y, output_shapes=[[1, 4, 8, 8]])


def build_layernorm(seed=19):
    b = GraphBuilder(opset=17, seed=seed)
    x = b.input("x", [1, 3, 8, 8])
    h = b.conv(x, 3, 8, name="conv1")
    h = b.node("Transpose", [h], perm=[0, 2, 3, 1])
    h = b.node("LayerNormalization", [h, b.const("ln.scale", 1 + b.randn(8, scale=0.1)),
                                      b.const("ln.bias", b.randn(8, scale=0.1))], axis=-1, name="ln")
    h = b.node("Transpose", [h], perm=[0, 3, 1, 2])
    y = b.conv(b.relu(h), 8, 4, name="conv2")
    return b.model(y)


def build_instnorm_on_channels(seed=20):
    """Channels moved to axis 2, InstanceNorm normalises over them (axes 2, 3)."""
    b = GraphBuilder(opset=17, seed=seed)
    x = b.input("x", [1, 3, 8, 8])
    h = b.conv(x, 3, 8, name="conv1")                         # [1, 8, 8, 8]
    h = b.node("Transpose", [h], perm=[0, 2, 1, 3])           # channels on axis 2
    h = b.node("InstanceNormalization", [h, b.const("in.scale", 1 + b.randn(8, scale=0.1)),
                                         b.const("in.bias", b.randn(8, scale=0.1))], name="inorm")
    h = b.node("Transpose", [h], perm=[0, 2, 1, 3])
    y = b.conv(b.relu(h), 8, 4, name="conv2")
    return b.model(y)


@pytest.mark.parametrize("build", [build_groupnorm, build_layernorm, build_instnorm_on_channels],
                         ids=["groupnorm", "layernorm", "instnorm"])
def test_inexact_norms(build):
    m = build()
    an = Analyzed(m)
    g = an_group_of(an, "conv1.weight", "out")
    assert not g.exact and g.prunable
    res = run_case(m, expect_pruned=False)
    rg = group_of(res, "conv1.weight", "out")
    assert not pruned(rg) and rg["exact"] is False
    assert res.report["macs"]["after"] == res.report["macs"]["before"]
    res2 = run_case(m, allow_inexact=True)       # verified on the exact groups, agreement reported
    assert res2.report["verify"]["inexact_groups"] and "inexact_agreement" in res2.report["verify"]
    rg2 = group_of(res2, "conv1.weight", "out")
    assert rg2["channels_after"] == rg2["channels_before"] // 2
    if build is build_groupnorm:
        kept = np.array(member(rg2, "conv1.weight", "out")["kept"])
        assert np.bincount(kept // 4, minlength=4).tolist() == [2, 2, 2, 2]
        assert init(res2.model, "gn.scale").shape == (8,)


def test_instance_norm_per_channel_is_exact():
    """InstanceNormalization on the usual NCHW layout normalises each channel alone: exact."""
    b = GraphBuilder(opset=17, seed=21)
    x = b.input("x", [1, 3, 8, 8])
    h = b.conv(x, 3, 8, name="conv1")
    h = b.node("InstanceNormalization", [h, b.const("in.scale", 1 + b.randn(8, scale=0.1)),
                                         b.const("in.bias", b.randn(8, scale=0.1))], name="inorm")
    y = b.conv(b.relu(h), 8, 4, name="conv2")
    res = run_case(b.model(y))
    g = group_of(res, "conv1.weight", "out")
    assert g["exact"] and g["channels_after"] == 4
    assert init(res.model, "in.scale").shape == (4,)


# ----------------------------------------------------------------------------- 10. opsets


@pytest.mark.parametrize("opset", OPSETS)
def test_opsets_chain(opset):
    res = run_case(build_chain(opset=opset, seed=opset))
    assert group_of(res, "conv1.weight", "out")["channels_after"] == 8


@pytest.mark.parametrize("opset", OPSETS)
def test_opsets_split_concat(opset):
    form = "num_outputs" if opset >= 18 else "input"
    m = build_split(opset, form, (8, 8), reduce_head=True, seed=opset)
    res = run_case(m)
    assert group_of(res, "stem.weight", "out")["channels_after"] == 8
    for w in ("br0.weight", "br1.weight"):
        assert group_of(res, w, "out")["channels_after"] == 2
    assert init(res.model, "fc.weight").shape == (5, 4)


# ----------------------------------------------------------------------------- 11. ratio 0


@pytest.mark.parametrize("const_nodes", [False, True])
def test_ratio_zero_is_identity(const_nodes):
    b = GraphBuilder(seed=22, const_nodes=const_nodes)
    x = b.input("x", [1, 3, 8, 8])
    h = b.relu(b.bn(b.conv(x, 3, 8, name="conv1"), 8))
    h = b.node("Concat", [h, b.relu(b.conv(x, 3, 4, name="conv1b"))], axis=1)
    y = b.conv(h, 12, 4, name="conv2")
    m = b.model(y)
    before = m.SerializeToString()
    res = run_case(m, expect_pruned=False, ratio=0.0)
    assert m.SerializeToString() == before, "prune() changed its input model"
    assert res.model.SerializeToString() == before
    assert res.report["summary"]["pruned_groups"] == 0
    feed = random_inputs(m, seed=2)
    a, c = run_model(m, feed), run_model(res.model, feed)
    for k in a:
        assert np.array_equal(a[k], c[k])


# ----------------------------------------------------------------------------- 12. round_to / protect / floor


def build_mixed(seed=23):
    b = GraphBuilder(seed=seed)
    x = b.input("x", [1, 3, 8, 8])
    h = b.relu(b.conv(x, 3, 16, name="c16"))
    h = b.relu(b.conv(h, 16, 10, name="c10"))
    h = b.relu(b.conv(h, 10, 8, name="c8"))
    h = b.relu(b.conv(h, 8, 16, k=3, group=4, name="cg"))
    h = b.relu(b.conv(h, 16, 3, name="c3"))
    y = b.conv(h, 3, 2, k=1, name="head")
    return b.model(y)


@pytest.mark.parametrize("ratio", [0.3, 0.5, 0.7])
def test_round_to_four(ratio):
    m = build_mixed()
    res = run_case(m, ratio=ratio, round_to=4)
    for g in res.report["groups"]:
        a, n = g["channels_after"], g["channels_before"]
        assert a == n or a % 4 == 0, g


def test_protect_keeps_group_whole():
    m = build_mixed()
    base = run_case(m)
    assert pruned(group_of(base, "c10.weight", "out"))
    res = run_case(m, protect=["c10"])
    assert not pruned(group_of(res, "c10.weight", "out"))
    # a protected node keeps every group it touches (--protect: "whose groups keep every
    # channel"): c10's input channels (the c16 group) too; groups it does not touch still prune
    assert not pruned(group_of(res, "c16.weight", "out"))
    assert pruned(group_of(res, "c8.weight", "out"))
    # protecting by tensor name: only the groups that tensor is a member of
    res = run_case(m, protect=["c8.bias"])
    assert not pruned(group_of(res, "c8.weight", "out"))
    assert pruned(group_of(res, "c10.weight", "out")) and pruned(group_of(res, "c16.weight", "out"))


def test_never_below_one_channel():
    m = build_mixed()
    res = run_case(m, ratio=0.99)
    for g in res.report["groups"]:
        assert g["channels_after"] >= 1, g
        for mm in g["members"]:
            if mm["role"] in ("out", "in"):
                assert len(mm["kept"]) >= 1 or "positions" in mm, (g["id"], mm)
    assert group_of(res, "c16.weight", "out")["channels_after"] == 1
    # grouped conv output: one channel per conv group at least
    assert group_of(res, "cg.weight", "out")["channels_after"] == 4


# ----------------------------------------------------------------------------- 13. permutation


def _perm_model(perm=None, seed=24):
    b = GraphBuilder(seed=seed)
    x = b.input("x", [1, 3, 8, 8])
    # conv1 rows with clearly distinct norms: no score ties
    W1 = b.randn(8, 3, 3, 3, scale=0.2)
    W1 /= np.sqrt((W1 ** 2).sum(axis=(1, 2, 3), keepdims=True))
    W1 *= np.linspace(0.5, 2.0, 8, dtype=np.float32)[[3, 6, 0, 7, 2, 5, 1, 4]].reshape(8, 1, 1, 1)
    b1 = b.randn(8, scale=0.1)
    W2 = b.randn(4, 8, 3, 3, scale=0.2)
    if perm is not None:
        W1, b1, W2 = W1[perm], b1[perm], W2[:, perm]
    h = b.node("Conv", [x, b.const("conv1.weight", W1), b.const("conv1.bias", b1)], name="conv1",
               kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    h = b.relu(h)
    y = b.node("Conv", [h, b.const("conv2.weight", W2)], name="conv2", kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    return b.model(y)


def test_permutation_invariance():
    perm = np.array([5, 2, 7, 0, 3, 6, 1, 4])
    m0, m1 = _perm_model(), _perm_model(perm)
    feed = random_inputs(m0, seed=4)
    d0, d1 = run_model(m0, feed), run_model(m1, feed)
    for k in d0:
        np.testing.assert_allclose(d0[k], d1[k], rtol=1e-5, atol=1e-5)
    r0, r1 = run_case(m0), run_case(m1)
    k0 = member(group_of(r0, "conv1.weight", "out"), "conv1.weight", "out")["kept"]
    k1 = member(group_of(r1, "conv1.weight", "out"), "conv1.weight", "out")["kept"]
    assert len(k0) == 4
    assert sorted(perm[k1].tolist()) == sorted(k0)
    p0, p1 = run_model(r0.model, feed), run_model(r1.model, feed)
    for k in p0:
        np.testing.assert_allclose(p0[k], p1[k], rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------- 14. zero invariance


def test_zero_channels_are_removed_and_outputs_unchanged():
    b = GraphBuilder(seed=25)
    x = b.input("x", [1, 3, 8, 8])
    h = b.conv(x, 3, 8, name="conv1")
    h = b.relu(b.bn(h, 8, name="bn1"))
    y = b.conv(h, 8, 4, name="conv2")
    m = b.model(y)
    dead = [1, 2, 5, 6]
    inits = {t.name: t for t in m.graph.initializer}
    for name, fn in (("conv1.weight", None), ("conv1.bias", None), ("bn1.weight", None), ("bn1.bias", None)):
        a = numpy_helper.to_array(inits[name]).copy()
        a[dead] = 0
        inits[name].CopyFrom(numpy_helper.from_array(a, name))
    res = run_case(m, criterion="l2")
    g = group_of(res, "conv1.weight", "out")
    kept = member(g, "conv1.weight", "out")["kept"]
    assert kept == [0, 3, 4, 7]
    feed = random_inputs(m, seed=5)
    d, p = run_model(m, feed), run_model(res.model, feed)
    for k in d:
        np.testing.assert_allclose(p[k], d[k], rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------- more edge cases per pattern


def test_grouped_conv_widening():
    """group=4 with Cin=16 -> Cout=32: 4 input and 8 output channels per conv group."""
    b = GraphBuilder(seed=30)
    x = b.input("x", [1, 3, 8, 8])
    h = b.relu(b.conv(x, 3, 16, k=1, name="pw1"))
    h = b.relu(b.conv(h, 16, 32, k=3, group=4, name="gconv"))
    y = b.conv(h, 32, 8, k=1, name="pw2")
    res = run_case(b.model(y))
    g_out = group_of(res, "gconv.weight", "out")
    kept_out = np.array(member(g_out, "gconv.weight", "out")["kept"])
    assert np.bincount(kept_out // 8, minlength=4).tolist() == [4, 4, 4, 4]
    assert init(res.model, "gconv.weight").shape == (16, 2, 3, 3)


def test_depthwise_on_graph_input():
    """A depthwise conv reading the graph input: its channels are fixed, the next group prunes."""
    b = GraphBuilder(seed=31)
    x = b.input("x", [1, 4, 8, 8])
    h = b.relu(b.conv(x, 4, 8, k=3, group=4, name="dw"))
    h = b.relu(b.conv(h, 8, 12, k=1, name="pw"))
    y = b.conv(h, 12, 4, name="head")
    res = run_case(b.model(y))
    assert init(res.model, "dw.weight").shape == (8, 1, 3, 3)
    assert group_of(res, "pw.weight", "out")["channels_after"] == 6


def test_auto_pad_and_asymmetric_pads():
    b = GraphBuilder(seed=32)
    x = b.input("x", [1, 3, 9, 9])
    w1 = b.const("c1.weight", b.randn(8, 3, 3, 3, scale=0.3))
    h = b.node("Conv", [x, w1], name="c1", kernel_shape=[3, 3], strides=[2, 2], auto_pad="SAME_UPPER")
    w2 = b.const("c2.weight", b.randn(6, 8, 2, 2, scale=0.3))
    h = b.node("Conv", [b.relu(h), w2], name="c2", kernel_shape=[2, 2], pads=[0, 1, 1, 0])
    y = b.conv(b.relu(h), 6, 4, k=1, name="head")
    res = run_case(b.model(y))
    assert group_of(res, "c1.weight", "out")["channels_after"] == 4
    assert group_of(res, "c2.weight", "out")["channels_after"] == 3


def test_residual_add_with_graph_input_blocks():
    """x + conv(x): the conv's channels are tied to the graph input, which cannot shrink."""
    b = GraphBuilder(seed=33)
    x = b.input("x", [1, 8, 8, 8])
    h = b.relu(b.conv(x, 8, 12, name="inner"))
    h = b.conv(h, 12, 8, name="back")
    h = b.node("Add", [x, h], name="skip_add")
    y = b.conv(b.relu(h), 8, 4, name="head")
    m = b.model(y)
    an = Analyzed(m)
    g = an_group_of(an, "back.weight", "out")
    assert not g.prunable and "skip_add" in g.describe_block()
    res = run_case(m)
    assert not pruned(group_of(res, "back.weight", "out"))
    assert pruned(group_of(res, "inner.weight", "out"))


def test_concat_with_graph_input_part():
    b = GraphBuilder(seed=34)
    x = b.input("x", [1, 3, 8, 8])
    p = b.relu(b.conv(x, 3, 8, name="pa"))
    h = b.node("Concat", [x, p], axis=1)
    y = b.conv(h, 11, 4, name="fuse")
    res = run_case(b.model(y))
    g = group_of(res, "pa.weight", "out")
    assert g["channels_after"] == 4
    assert member(g, "fuse.weight", "in")["positions"] == list(range(3, 11))
    assert init(res.model, "fuse.weight").shape == (4, 7, 3, 3)


def test_concat_same_tensor_twice():
    b = GraphBuilder(seed=35)
    x = b.input("x", [1, 3, 8, 8])
    p = b.relu(b.conv(x, 3, 8, name="pa"))
    q = b.relu(b.conv(x, 3, 4, name="pb"))
    h = b.node("Concat", [p, q, p], axis=1)
    y = b.conv(h, 20, 4, name="fuse")
    res = run_case(b.model(y))
    g = group_of(res, "pa.weight", "out")
    kept = member(g, "pa.weight", "out")["kept"]
    assert len(kept) == 4
    assert member(g, "fuse.weight", "in")["kept"] == kept + [12 + k for k in kept]
    assert init(res.model, "fuse.weight").shape == (4, 10, 3, 3)


def test_split_then_swapped_concat():
    b = GraphBuilder(opset=13, seed=36)
    x = b.input("x", [1, 3, 8, 8])
    h = b.relu(b.conv(x, 3, 12, name="stem"))
    l, r = b.split(h, [4, 8], axis=1, name="split")
    h = b.node("Concat", [b.relu(b.conv(r, 8, 8, k=1, name="cr")), l], axis=1)
    y = b.conv(h, 12, 4, name="head")
    res = run_case(b.model(y))
    g = group_of(res, "stem.weight", "out")
    kept = np.array(member(g, "stem.weight", "out")["kept"])
    hm = member(g, "head.weight", "in")
    assert hm["positions"] == list(range(8, 12))
    assert hm["kept"] == [8 + int(k) for k in kept if k < 4]


@pytest.mark.parametrize("opset,form", [(11, "none"), (13, "none"), (18, "num_outputs")])
def test_split_equal_parts_without_sizes(opset, form):
    """Split with no sizes: equal parts; opset 18 num_outputs=3 of 16 -> 6, 6, 4."""
    n = 3 if form == "num_outputs" else 2
    b = GraphBuilder(opset=opset, seed=37)
    x = b.input("x", [1, 3, 8, 8])
    h = b.relu(b.conv(x, 3, 16 if n == 3 else 12, name="stem"))
    attrs = {"num_outputs": n} if form == "num_outputs" else {}
    parts = b.node("Split", [h], n_out=n, name="split", axis=1, **attrs)
    sizes = [6, 6, 4] if n == 3 else [6, 6]
    outs = [b.relu(b.conv(p, s, 4, k=1, name=f"br{i}")) for i, (p, s) in enumerate(zip(parts, sizes))]
    y = b.conv(b.node("Concat", outs, axis=1), 4 * n, 4, k=1, name="head")
    res = run_case(b.model(y))
    kept = np.array(member(group_of(res, "stem.weight", "out"), "stem.weight", "out")["kept"])
    edges = np.cumsum([0] + sizes)
    want = [int(((kept >= edges[i]) & (kept < edges[i + 1])).sum()) for i in range(n)]
    for i in range(n):
        assert init(res.model, f"br{i}.weight").shape[1] == want[i]


def test_slice_bounds_shared_with_spatial_slice():
    """The same starts/ends constants bound a channel Slice and a spatial Slice."""
    b = GraphBuilder(seed=38)
    x = b.input("x", [1, 3, 16, 16])
    h = b.relu(b.conv(x, 3, 16, name="stem"))
    st, en = b.ints("starts", [2]), b.ints("ends", [10])
    c = b.node("Slice", [h, st, en, b.ints("ax_c", [1])], name="slice_c")
    s = b.node("Slice", [h, st, en, b.ints("ax_s", [2])], name="slice_s")   # rows 2..10
    y1 = b.conv(c, 8, 4, name="c1")                                         # [1,4,16,16]
    y2 = b.conv(s, 16, 4, k=1, name="c2")                                   # [1,4,8,16]
    res = run_case(b.model(y1, y2))
    assert pruned(group_of(res, "stem.weight", "out"))
    slice_s = next(n for n in res.model.graph.node if n.name == "slice_s")
    assert init(res.model, slice_s.input[1]).tolist() == [2]
    assert init(res.model, slice_s.input[2]).tolist() == [10]


@pytest.mark.parametrize("trans_b", [1, 0])
def test_flatten_gemm_dynamic_batch(trans_b):
    b = GraphBuilder(seed=39)
    x = b.input("x", ["N", 3, 8, 8])
    h = b.relu(b.conv(x, 3, 8, name="conv1"))
    h = b.node("MaxPool", [h], kernel_shape=[2, 2], strides=[2, 2])
    h = b.node("Flatten", [h], axis=1)
    y = b.gemm(h, 128, 10, trans_b=trans_b, name="fc")
    res = run_case(b.model(y), batch=3)
    assert group_of(res, "conv1.weight", "out")["channels_after"] == 4


def test_reshape_zero_minus1_dynamic_batch():
    b = GraphBuilder(seed=40)
    x = b.input("x", ["N", 3, 8, 8])
    h = b.relu(b.conv(x, 3, 8, name="conv1"))
    h = b.node("GlobalAveragePool", [h])
    h = b.reshape(h, [0, -1])
    y = b.gemm(h, 8, 10, name="fc")
    res = run_case(b.model(y), batch=2)
    assert group_of(res, "conv1.weight", "out")["channels_after"] == 4


def test_channel_shuffle_dynamic_batch():
    """torch's x.view(n, 2, c // 2, h, w) with n read at run time (Shape -> Gather -> Concat)."""
    b = GraphBuilder(opset=17, seed=41)
    x = b.input("x", ["N", 3, 8, 8])
    p = b.relu(b.conv(x, 3, 8, k=1, name="pa"))
    q = b.relu(b.conv(x, 3, 8, k=1, name="pb"))
    h = b.node("Concat", [p, q], axis=1)
    n = b.unsqueeze(b.node("Gather", [b.node("Shape", [h]), b.ints("i0", 0)], axis=0), [0])
    t1 = b.node("Concat", [n, b.ints("g2", [2]), b.ints("c8", [8]), b.ints("hw", [8, 8])], axis=0)
    h = b.node("Reshape", [h, t1], name="view1")
    h = b.node("Transpose", [h], perm=[0, 2, 1, 3, 4])
    t2 = b.node("Concat", [n, b.ints("c16", [16]), b.ints("hw2", [8, 8])], axis=0)
    h = b.node("Reshape", [h, t2], name="view2")
    l, r = b.split(h, [8, 8], axis=1, name="split")
    y = b.conv(b.node("Concat", [b.relu(b.conv(l, 8, 4, name="cl")), b.relu(b.conv(r, 8, 4, name="cr"))], axis=1),
               8, 4, k=1, name="head")
    res = run_case(b.model(y), batch=2)
    g = group_of(res, "pa.weight", "out")
    assert member(g, "pb.weight", "out") and g["channels_after"] == 4


def test_groupnorm_opset18_per_group_scale_blocks():
    b = GraphBuilder(opset=18, seed=42)
    x = b.input("x", [1, 3, 8, 8])
    h = b.conv(x, 3, 16, name="conv1")
    h = b.node("GroupNormalization", [h, b.const("gn.scale", 1 + b.randn(4, scale=0.1)),
                                      b.const("gn.bias", b.randn(4, scale=0.1))], num_groups=4, name="gn")
    h = b.relu(b.conv(b.relu(h), 16, 8, name="conv2"))
    y = b.conv(h, 8, 4, name="conv3")
    m = b.model(y, output_shapes=[[1, 4, 8, 8]])
    an = Analyzed(m)
    g = an_group_of(an, "conv1.weight", "out")
    assert not g.prunable and "GroupNormalization" in g.describe_block()
    assert an_group_of(an, "conv2.weight", "out").prunable


def test_layernorm_over_chw():
    """LayerNormalization(axis=1) over [C, H, W]: scale/bias are [C, H, W] params, inexact."""
    b = GraphBuilder(opset=17, seed=43)
    x = b.input("x", [1, 3, 4, 4])
    h = b.conv(x, 3, 8, name="conv1")
    h = b.node("LayerNormalization", [h, b.const("ln.scale", 1 + b.randn(8, 4, 4, scale=0.1)),
                                      b.const("ln.bias", b.randn(8, 4, 4, scale=0.1))], axis=1, name="ln")
    y = b.conv(b.relu(h), 8, 4, name="conv2")
    m = b.model(y)
    g = an_group_of(Analyzed(m), "conv1.weight", "out")
    assert not g.exact
    res = run_case(m, allow_inexact=True)
    assert group_of(res, "conv1.weight", "out")["channels_after"] == 4
    assert init(res.model, "ln.scale").shape == (4, 4, 4)


def test_channel_shuffle_dynamic_hw():
    """Shuffle with run-time N, H, W: view(n, 2, 8, h, w) ... view(n, -1, h, w)."""
    b = GraphBuilder(opset=17, seed=71)
    x = b.input("x", ["N", 3, "H", "W"])
    p = b.relu(b.conv(x, 3, 8, k=1, name="pa"))
    q = b.relu(b.conv(x, 3, 8, k=1, name="pb"))
    h = b.node("Concat", [p, q], axis=1)
    shp = b.node("Shape", [h])
    n = b.unsqueeze(b.node("Gather", [shp, b.ints("i0", 0)], axis=0), [0])
    hh = b.unsqueeze(b.node("Gather", [shp, b.ints("i2", 2)], axis=0), [0])
    ww = b.unsqueeze(b.node("Gather", [shp, b.ints("i3", 3)], axis=0), [0])
    t1 = b.node("Concat", [n, b.ints("g2", [2]), b.ints("c8", [8]), hh, ww], axis=0)
    h = b.node("Reshape", [h, t1], name="view1")
    h = b.node("Transpose", [h], perm=[0, 2, 1, 3, 4])
    t2 = b.node("Concat", [n, b.ints("m1", [-1]), hh, ww], axis=0)
    h = b.node("Reshape", [h, t2], name="view2")
    y = b.conv(h, 16, 4, k=1, name="head")
    m = b.model(y)
    g = an_group_of(Analyzed(m), "pa.weight", "out")
    assert g.prunable, g.describe_block()
    res = run_case(m, batch=2)
    g = group_of(res, "pa.weight", "out")
    assert member(g, "pb.weight", "out") and g["channels_after"] == 4


def test_partially_blocked_group_keeps_blocked_channels():
    """Channels 0..3 also leave the graph (a Slice output): they are always kept."""
    b = GraphBuilder(opset=13, seed=80)
    x = b.input("x", [1, 3, 8, 8])
    h = b.relu(b.conv(x, 3, 16, name="stem"))
    side = b.node("Slice", [h, b.ints("st", [0]), b.ints("en", [4]), b.ints("ax", [1])], name="side")
    y = b.conv(h, 16, 4, name="head")
    m = b.model(y, side)
    g = an_group_of(Analyzed(m), "stem.weight", "out")
    assert g.prunable and len(g.blocked) == 4
    for ratio, n_kept in ((0.5, 8), (0.9, 4)):
        res = run_case(m, ratio=ratio)
        gg = group_of(res, "stem.weight", "out")
        kept = member(gg, "stem.weight", "out")["kept"]
        assert len(kept) == n_kept and kept[:4] == [0, 1, 2, 3]


def test_shared_conv_weights():
    """Siamese: two Convs share W and B; their channel spaces become one group."""
    b = GraphBuilder(seed=60)
    x1, x2 = b.input("x1", [1, 3, 8, 8]), b.input("x2", [1, 3, 8, 8])
    w, bb = b.const("w1", b.randn(8, 3, 3, 3, scale=0.3)), b.const("b1", b.randn(8))
    h1 = b.relu(b.node("Conv", [x1, w, bb], kernel_shape=[3, 3], pads=[1] * 4))
    h2 = b.relu(b.node("Conv", [x2, w, bb], kernel_shape=[3, 3], pads=[1] * 4))
    w2 = b.const("w2", b.randn(6, 8, 3, 3, scale=0.3))
    g1 = b.relu(b.node("Conv", [h1, w2], kernel_shape=[3, 3], pads=[1] * 4))
    g2 = b.relu(b.node("Conv", [h2, w2], kernel_shape=[3, 3], pads=[1] * 4))
    y = b.conv(b.node("Concat", [g1, g2], axis=1), 12, 4, name="head")
    res = run_case(b.model(y))
    assert init(res.model, "w1").shape == (4, 3, 3, 3)
    assert init(res.model, "w2").shape == (3, 4, 3, 3)
    assert init(res.model, "head.weight").shape == (4, 6, 3, 3)


def test_matmul_as_pointwise_conv():
    b = GraphBuilder(seed=61)
    x = b.input("x", [1, 3, 8, 8])
    h = b.relu(b.conv(x, 3, 8, name="conv1"))
    h = b.node("Transpose", [h], perm=[0, 2, 3, 1])
    h = b.node("MatMul", [h, b.const("mm", b.randn(8, 12, scale=0.3))])
    h = b.node("Add", [h, b.const("mmb", b.randn(12))])
    h = b.relu(b.node("Transpose", [h], perm=[0, 3, 1, 2]))
    y = b.conv(h, 12, 4, name="head")
    res = run_case(b.model(y))
    assert init(res.model, "mm").shape == (4, 6)
    assert init(res.model, "mmb").shape == (6,)


def test_negative_axes():
    b = GraphBuilder(opset=13, seed=62)
    x = b.input("x", [1, 3, 8, 8])
    p, q = b.relu(b.conv(x, 3, 8, name="pa")), b.relu(b.conv(x, 3, 8, name="pb"))
    h = b.node("Concat", [p, q], axis=-3)
    l, r = b.split(h, [6, 10], axis=-3)
    s = b.node("Slice", [r, b.ints("st", [1]), b.ints("en", [-1]), b.ints("ax", [-3])])
    y = b.node("Add", [b.conv(l, 6, 4, name="c1"), b.conv(s, 8, 4, name="c2")])
    res = run_case(b.model(y))
    assert pruned(group_of(res, "pa.weight", "out")) and pruned(group_of(res, "pb.weight", "out"))


@pytest.mark.parametrize("how", ["sizes", "scales"])
def test_resize_unet(how):
    b = GraphBuilder(opset=13, seed=63)
    x = b.input("x", [1, 3, 16, 16])
    e1 = b.relu(b.conv(x, 3, 8, name="enc1"))
    e2 = b.relu(b.conv(e1, 8, 16, stride=2, name="enc2"))
    if how == "sizes":
        up = b.node("Resize", [e2, "", "", b.ints("sizes", [1, 16, 16, 16])], mode="nearest", name="up")
    else:
        up = b.node("Resize", [e2, "", b.const("scales", np.array([1, 1, 2, 2], np.float32))], mode="linear", name="up")
    h = b.node("Concat", [up, e1], axis=1)
    y = b.conv(b.relu(b.conv(h, 24, 8, name="dec")), 8, 2, k=1, name="out")
    res = run_case(b.model(y))
    assert group_of(res, "enc2.weight", "out")["channels_after"] == 8
    if how == "sizes":
        node = next(n for n in res.model.graph.node if n.name == "up")
        assert init(res.model, node.input[3]).tolist() == [1, 8, 16, 16]


def test_pad_clip_prelu_dropout_pass_through():
    b = GraphBuilder(opset=18, seed=65)
    x = b.input("x", [1, 3, 8, 8])
    h = b.conv(x, 3, 8, name="conv1")
    h = b.node("Pad", [h, b.ints("pads", [1, 1, 1, 1]), "", b.ints("pad_axes", [2, 3])])
    h = b.node("Clip", [h, b.const("lo", np.array(-1.0, np.float32)), b.const("hi", np.array(6.0, np.float32))])
    h = b.node("PRelu", [h, b.const("slope", b.randn(8, 1, 1, scale=0.1))])
    h = b.node("Dropout", [h, b.const("ratio", np.array(0.1, np.float32))])
    y = b.conv(h, 8, 4, name="head")
    res = run_case(b.model(y))
    assert init(res.model, "slope").shape == (4, 1, 1)


def test_gather_channel_subset():
    b = GraphBuilder(opset=13, seed=66)
    x = b.input("x", [1, 3, 8, 8])
    h = b.relu(b.conv(x, 3, 8, name="conv1"))
    h = b.node("Gather", [h, b.ints("perm_idx", [7, 1, 0, 4, 2, 6])], axis=1, name="pick")
    y = b.conv(h, 6, 4, name="head")
    res = run_case(b.model(y))
    kept = member(group_of(res, "conv1.weight", "out"), "conv1.weight", "out")["kept"]
    node = next(n for n in res.model.graph.node if n.name == "pick")
    idx = init(res.model, node.input[1]).tolist()
    want = [kept.index(c) for c in [7, 1, 0, 4, 2, 6] if c in kept]
    assert idx == want
    assert init(res.model, "head.weight").shape[1] == len(want)


def test_grouped_conv_chains():
    b = GraphBuilder(seed=69)
    x = b.input("x", [1, 3, 8, 8])
    h = b.relu(b.conv(x, 3, 16, name="pw"))
    h = b.relu(b.conv(h, 16, 16, group=4, name="ga"))
    h = b.relu(b.conv(h, 16, 16, group=2, name="gb"))
    h = b.relu(b.conv(h, 16, 16, group=16, name="dw"))
    y = b.conv(h, 16, 4, name="head")
    res = run_case(b.model(y))
    for w in ("pw.weight", "ga.weight", "gb.weight"):
        assert group_of(res, w, "out")["channels_after"] == 8
    kept = np.array(member(group_of(res, "gb.weight", "out"), "gb.weight", "out")["kept"])
    assert np.bincount(kept // 8, minlength=2).tolist() == [4, 4]
    # gb's output and dw's input/output are one space
    assert member(group_of(res, "gb.weight", "out"), "dw.weight", "out")


def test_grouped_conv_after_concat_is_safe():
    """A grouped conv whose conv groups coincide with two Concat inputs: the cross-group
    equal-count constraint blocks both producers (conservative), the rest still prunes."""
    b = GraphBuilder(seed=68)
    x = b.input("x", [1, 3, 8, 8])
    p, q = b.relu(b.conv(x, 3, 8, name="pa")), b.relu(b.conv(x, 3, 8, name="pb"))
    h = b.relu(b.conv(b.node("Concat", [p, q], axis=1), 16, 16, group=2, name="g2"))
    y = b.conv(h, 16, 4, name="head")
    res = run_case(b.model(y))
    assert pruned(group_of(res, "g2.weight", "out"))


# ----------------------------------------------------------------------------- constants with other readers


def _shared_const_model(kind):
    b = GraphBuilder(seed=90)
    if kind == "add_on_input":
        # one [8,1,1] constant: added to the graph input and multiplied into conv1's channels
        x = b.input("x", [1, 8, 8, 8])
        c = b.const("cvec", b.randn(8, 1, 1))
        h = b.relu(b.conv(b.node("Add", [x, c]), 8, 8, name="conv1"))
        y = b.conv(b.node("Mul", [h, c]), 8, 4, name="conv2")
        return b.model(y)
    if kind == "dedup_bn":
        # a de-duplicated initializer (as onnx optimizers emit): BN on the graph input and BN
        # after conv1 share the same running_var / weight tensors
        x = b.input("x", [1, 8, 8, 8])
        ones, zeros = b.const("ones8", np.ones(8, np.float32)), b.const("zeros8", np.zeros(8, np.float32))
        h = b.node("BatchNormalization", [x, ones, zeros, b.const("m0", b.randn(8, scale=0.1)), ones], name="bn_in")
        h = b.conv(h, 8, 8, name="conv1")
        h = b.node("BatchNormalization", [h, ones, zeros, b.const("m1", b.randn(8, scale=0.1)), ones], name="bn1")
        y = b.conv(b.relu(h), 8, 4, name="conv2")
        return b.model(y)
    if kind == "weight_read_elsewhere":
        # conv1.weight is also read by a ReduceSumSquare whose result is a graph output
        x = b.input("x", [1, 3, 8, 8])
        h = b.relu(b.conv(x, 3, 8, name="conv1"))
        y = b.conv(h, 8, 4, name="conv2")
        n = b.node("ReduceSumSquare", ["conv1.weight"], keepdims=0)
        return b.model(y, n)
    raise ValueError(kind)


@pytest.mark.parametrize("kind", ["add_on_input", "dedup_bn", "weight_read_elsewhere"])
def test_constant_member_with_another_reader(kind):
    """A constant sliced as a member must not have readers that still need its full width:
    such a group must stay whole (or the other readers be rewritten too)."""
    m = _shared_const_model(kind)
    res = run_case(m, expect_pruned=False)
    dense = run_model(m, random_inputs(m, seed=1))
    got = run_model(res.model, random_inputs(m, seed=1))
    for k in dense:
        assert got[k].shape == dense[k].shape
    if kind == "weight_read_elsewhere":
        name = m.graph.output[1].name
        np.testing.assert_allclose(got[name], dense[name], rtol=1e-5)
