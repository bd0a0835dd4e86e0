"""Einsum by index letters, and channels carried on the batch axis through Conv and pooling.

TF/Keras exports write dense layers and multi-head attention as Einsum (EinsumDense: kernel
[C, heads, head_dim]); MViTv2 folds heads into the batch axis before a pooling Conv. Each case
is pruned end to end and checked against the masked-dense oracle.
"""

from __future__ import annotations

import numpy as np
import pytest

from graphprune.analyze.engine import AnalysisError
from graphprune.analyze.rules.einsum import parse
from graphprune.pipeline import Analyzed
from helpers_graphs import GraphBuilder, an_group_of, group_of, member, pruned, run_case

T, C, N, H = 6, 16, 4, 8          # tokens, width, heads, head dim


def test_parse_explicit_implicit_and_ellipsis():
    assert parse("bi,oi->bo", [2, 2]) == ([["b", "i"], ["o", "i"]], ["b", "o"])
    assert parse("ij,jk", [2, 2]) == ([["i", "j"], ["j", "k"]], ["i", "k"])
    ins, out = parse("...ij,jk->...ik", [4, 2])
    assert ins == [[".0", ".1", "i", "j"], ["j", "k"]] and out == [".0", ".1", "i", "k"]
    ins, out = parse("...j,...j", [3, 2])               # right-aligned broadcasting, implicit output
    assert ins == [[".0", ".1", "j"], [".1", "j"]] and out == [".0", ".1"]
    with pytest.raises(AnalysisError):
        parse("ijk,jk->i", [2, 2])


def _tf_attention(b: GraphBuilder, x: str, name: str) -> str:
    """Keras MultiHeadAttention as tf2onnx writes it: EinsumDense q/k/v [C, N, H] + bias [N, H],
    scores over the head dim, softmax, values, EinsumDense output [N, H, C]."""
    def dense(x, eq, shape, bshape, tag):
        y = b.node("Einsum", [x, b.const(f"{name}.{tag}.kernel", b.randn(*shape, scale=shape[0] ** -0.5))],
                   equation=eq, name=f"{name}/{tag}")
        return b.node("Add", [y, b.const(f"{name}.{tag}.bias", b.randn(*bshape, scale=0.1))])
    q = dense(x, "btc,cnh->btnh", (C, N, H), (N, H), "query")
    k = dense(x, "btc,cnh->btnh", (C, N, H), (N, H), "key")
    v = dense(x, "btc,cnh->btnh", (C, N, H), (N, H), "value")
    s = b.node("Einsum", [q, k], equation="bqnh,bknh->bnqk", name=f"{name}/scores")
    s = b.node("Mul", [s, b.const(f"{name}.scale", np.array(H ** -0.5, np.float32))])
    p = b.node("Softmax", [s], axis=-1)
    o = b.node("Einsum", [p, v], equation="bnqk,bknh->bqnh", name=f"{name}/values")
    kernel = b.const(f"{name}.output.kernel", b.randn(N, H, C, scale=(N * H) ** -0.5))
    o = b.node("Einsum", [o, kernel], equation="bqnh,nhc->bqc", name=f"{name}/output")
    o = b.node("Add", [o, b.const(f"{name}.output.bias", b.randn(C, scale=0.1))])
    return b.node("Add", [x, o])


def _tf_block(opset=17):
    b = GraphBuilder(opset=opset, seed=3)
    x = b.input("x", [1, T, C])
    h = _tf_attention(b, x, "mha")
    # Keras Dense on a 3-D input: Einsum "abc,cd->abd"; a per-channel scale "abd,d->abd"
    u = b.node("Einsum", [h, b.const("fc1.kernel", b.randn(C, 4 * C, scale=C ** -0.5))], equation="abc,cd->abd")
    u = b.node("Einsum", [u, b.const("fc1.gamma", b.randn(4 * C))], equation="abd,d->abd")
    u = b.relu(u)
    u = b.node("Einsum", [u, b.const("fc2.kernel", b.randn(4 * C, C, scale=(4 * C) ** -0.5))], equation="abd,dc->abc")
    y = b.node("Add", [h, u], name="residual")
    return b.model(b.node("Identity", [y], outputs=["y"]))


@pytest.mark.parametrize("opset", (13, 17))
def test_tf_style_attention_heads_and_mlp(opset):
    m = _tf_block(opset)
    res = run_case(m)
    heads = group_of(res, "mha.query.kernel", "out")
    assert heads["channels_before"] == N and pruned(heads), heads
    for t in ("mha.query.kernel", "mha.key.kernel", "mha.value.kernel"):
        assert member(heads, t, "out")["axis"] == 1
    assert member(heads, "mha.output.kernel", "in")["axis"] == 0
    assert member(heads, "mha.query.bias")["axis"] == 0
    mlp = group_of(res, "fc1.kernel", "out")
    assert mlp["channels_before"] == 4 * C and pruned(mlp)
    assert member(mlp, "fc1.gamma")["role"] == "param"
    assert member(mlp, "fc2.kernel", "in")["axis"] == 0


def test_einsum_blocks_what_it_cannot_follow():
    an = Analyzed(_tf_block())
    # the head dim of Q and K is summed between two activations: blocked
    qh = an_group_of(an, "mha.query.kernel", "out")
    kh = [g for g in an.groups if any(gm.member.tensor == "mha.query.kernel" and gm.member.axis == 2
                                      for gm in g.members)]
    assert qh.prunable and kh and not kh[0].prunable
    assert "two activations" in kh[0].describe_block()
    # the residual width is the graph output: blocked; the value head dim feeds only the output kernel
    vh = [g for g in an.groups if any(gm.member.tensor == "mha.value.kernel" and gm.member.axis == 2
                                      for gm in g.members)]
    assert vh and vh[0].prunable


def test_einsum_sum_over_channels_blocks():
    b = GraphBuilder(seed=1)
    x = b.input("x", [2, C])
    h = b.relu(b.gemm(x, C, 12, name="fc"))
    y = b.node("Einsum", [h], equation="bc->b")          # sums the channels away: cannot prune
    m = b.model(b.node("Unsqueeze", [y, b.ints("ax", [1])], outputs=["y"]))
    an = Analyzed(m)
    g = an_group_of(an, "fc.weight", "out")
    assert not g.prunable and "sums index c away" in g.describe_block()


def _folded_heads_pool(pool: str):
    """MViTv2-style pooled attention: heads folded into the batch axis, then a depthwise Conv
    (shared over heads) or a MaxPool over the tokens, then unfolded into the output projection."""
    b = GraphBuilder(seed=5)
    x = b.input("x", [1, T, C])
    q = b.node("MatMul", [x, b.const("qkv.weight", b.randn(C, N * H, scale=C ** -0.5))])
    q = b.node("Add", [q, b.const("qkv.bias", b.randn(N * H, scale=0.1))])
    q = b.reshape(q, [T, N, H])
    q = b.node("Transpose", [q], perm=[1, 2, 0])                     # [N, H, T]
    q = b.reshape(q, [N, H, T, 1])
    if pool == "conv":
        q = b.node("Conv", [q, b.const("pool.weight", b.randn(H, 1, 3, 1))], group=H, pads=[1, 0, 1, 0])
    else:
        q = b.node("MaxPool", [q], kernel_shape=[3, 1], pads=[1, 0, 1, 0], strides=[1, 1])
    q = b.reshape(q, [N, H, T])
    q = b.node("Transpose", [q], perm=[2, 0, 1])                     # [T, N, H]
    q = b.reshape(q, [1, T, N * H])
    y = b.node("MatMul", [q, b.const("proj.weight", b.randn(N * H, C, scale=(N * H) ** -0.5))])
    return b.model(b.node("Add", [x, y], outputs=["y"]))


@pytest.mark.parametrize("pool", ("conv", "maxpool"))
def test_heads_on_the_batch_axis_pass_conv_and_pool(pool):
    res = run_case(_folded_heads_pool(pool))
    heads = group_of(res, "proj.weight", "in")
    assert heads["channels_before"] in (N, N * H) and pruned(heads), heads
    assert member(heads, "qkv.weight", "out")["axis"] == 1
