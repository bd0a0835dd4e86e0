"""Graphs as paddle2onnx writes them: constants as Constant nodes, shape targets assembled from
int32 Constants and Slice(Shape) cast to int64 (PP-OCRv4's SVTR attention), biases kept 1-D and
reshaped in the graph. Each case is pruned end to end against the masked-dense oracle."""

from __future__ import annotations

import numpy as np
import onnx

from helpers_graphs import GraphBuilder, group_of, member, pruned, run_case

T, C, H, D = 6, 16, 4, 4


def _shape_target(b: GraphBuilder, x: str, tail, name: str) -> str:
    """Concat(Cast(Const 0), Cast(Slice(Shape(x), 1, 2)), Cast(Const t) for t in tail) -> int64."""
    def i32(tag, v):
        c = b.const(f"{name}.{tag}", np.array([v], np.int32), as_node=True)
        return b.node("Cast", [c], to=onnx.TensorProto.INT64)
    seq = b.node("Slice", [b.node("Shape", [x]), b.ints(f"{name}.s0", [1]), b.ints(f"{name}.s1", [2])])
    parts = [i32("zero", 0), b.node("Cast", [seq], to=onnx.TensorProto.INT64)]
    parts += [i32(f"t{i}", v) for i, v in enumerate(tail)]
    return b.node("Concat", parts, axis=0)


def svtr_attention(b: GraphBuilder, x: str) -> str:
    qkv = b.node("MatMul", [x, b.const("qkv.w", b.randn(C, 3 * H * D, scale=C ** -0.5))], name="qkv")
    qkv = b.node("Add", [qkv, b.const("qkv.b", b.randn(3 * H * D, scale=0.1))])
    qkv = b.node("Reshape", [qkv, _shape_target(b, x, [3, H, D], "t1")])               # [B, T, 3, H, D]
    qkv = b.node("Transpose", [qkv], perm=[2, 0, 3, 1, 4])                             # [3, B, H, T, D]
    q, k, v = (b.node("Gather", [qkv, b.const(f"i{i}", np.array(i, np.int64), as_node=True)], axis=0)
               for i in range(3))
    s = b.node("MatMul", [q, b.node("Transpose", [k], perm=[0, 1, 3, 2])])
    s = b.node("Softmax", [b.node("Mul", [s, b.const("scale", np.array(D ** -0.5, np.float32))])], axis=-1)
    o = b.node("Transpose", [b.node("MatMul", [s, v])], perm=[0, 2, 1, 3])              # [B, T, H, D]
    o = b.node("Reshape", [o, _shape_target(b, x, [H * D], "t2")])
    o = b.node("MatMul", [o, b.const("proj.w", b.randn(H * D, C, scale=(H * D) ** -0.5))], name="proj")
    return b.node("Add", [x, o])


def test_svtr_attention_heads_prune_through_int32_shape_constants():
    b = GraphBuilder(seed=8, const_nodes=True)
    x = b.input("x", [1, T, C])
    m = b.model(b.node("Identity", [svtr_attention(b, x)], outputs=["y"]))
    res = run_case(m)
    heads = group_of(res, "qkv.w", "out")
    assert heads["channels_before"] == H and pruned(heads), heads
    assert member(heads, "proj.w", "in")["axis"] == 0
