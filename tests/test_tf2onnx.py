"""TensorFlow graphs as tf2onnx writes them.

refmodels/keras_encoder.onnx is a real tf2onnx export of a small Keras encoder (refmodels/keras_export.py
made it; the file is committed so these tests need no TensorFlow). The hand-built cases isolate
the two patterns it contains: Keras Dense on a 3-D input (a Tensordot: Reshape to [-1, C] with a
symbolic batch, MatMul, Reshape back to a shape computed at run time through int32 Casts).
"""

from __future__ import annotations

import os

import numpy as np
import onnx
from onnx import numpy_helper
import pytest

from graphprune.analyze.engine import AnalysisError
from graphprune.analyze.rules.reshape import axis_runs
from graphprune.pipeline import Analyzed
from helpers_graphs import GraphBuilder, assert_one_line_error, group_of, member, pruned, run_case

KERAS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "refmodels", "keras_encoder.onnx")


def test_runs_pair_from_both_ends_around_symbolic_dims():
    assert axis_runs(["n*t", 64], ["n", 16, 64]) == [([0], [0, 1]), ([1], [2])]
    assert axis_runs([8, "n*t", 4, 6], [8, "n", "t", 24]) == [([0], [0]), ([1], [1, 2]), ([2, 3], [3])]
    assert axis_runs(["b", 12, 64], ["b", 768]) == [([0], [0]), ([1, 2], [1])]
    # what cannot be paired is one run; map_reshape blocks any channel axis inside it
    assert axis_runs(["a", 4], ["b", 5]) == [([0, 1], [0, 1])]
    with pytest.raises(AnalysisError):
        axis_runs([4, 3], [4])


def _tensordot(b: GraphBuilder, x: str, cin: int, cout: int, name: str) -> str:
    """tf2onnx's Keras Dense on [N, T, C]: shape arithmetic in int32, a shared [cout] constant."""
    shp = b.node("Cast", [b.node("Shape", [x])], to=onnx.TensorProto.INT32)
    free = b.node("Gather", [shp, b.const(f"{name}.free", np.array([0, 1], np.int32), as_node=False)], axis=0)
    tgt = b.node("Concat", [free, b.const(f"{name}.width", np.array([cout], np.int32), as_node=False)], axis=0)
    tgt = b.node("Cast", [tgt], to=onnx.TensorProto.INT64)
    flat = b.node("Reshape", [x, b.ints(f"{name}.flat", [-1, cin])])
    W = b.const(f"{name}.kernel", b.randn(cin, cout, scale=cin ** -0.5))
    y = b.node("Reshape", [b.node("MatMul", [flat, W], name=f"{name}/MatMul"), tgt])
    return b.node("Add", [y, b.const(f"{name}.bias", b.randn(cout, scale=0.1))])


def test_keras_dense_tensordot_mlp_prunes():
    b = GraphBuilder(seed=4)
    x = b.input("x", ["n", 6, 16])
    h = b.relu(_tensordot(b, x, 16, 40, "fc1"))
    h = _tensordot(b, h, 40, 16, "fc2")
    m = b.model(b.node("Add", [x, h], outputs=["y"]))
    res = run_case(m, batch=3)
    g = group_of(res, "fc1.kernel", "out")
    assert g["channels_before"] == 40 and pruned(g)
    assert member(g, "fc2.kernel", "in")["axis"] == 0


def test_keras_encoder_from_tf2onnx():
    m = onnx.load(KERAS)
    an = Analyzed(m)
    mlp = [g for g in an.groups if g.prunable and g.kind == "channels"]
    assert len(mlp) == 2 and all(len(g.units) == 64 for g in mlp)
    res = run_case(m, batch=2)
    for name in ("functional_1/ff0a_1/Cast/ReadVariableOp:0", "functional_1/ff1a_1/Cast/ReadVariableOp:0"):
        g = group_of(res, name, "out")
        assert g["channels_after"] == 32, g
    # the first Dense of each block and the next one's input shrink; the output is unchanged
    W = {i.name: i for i in res.model.graph.initializer}
    assert list(W["functional_1/ff0a_1/Cast/ReadVariableOp:0"].dims) == [32, 32]
    assert list(W["functional_1/ff0b_1/Cast/ReadVariableOp:0"].dims) == [32, 32]


def test_channels_merged_into_a_symbolic_dim_block():
    b = GraphBuilder(seed=6)
    x = b.input("x", ["n", 16])
    h = b.relu(b.node("MatMul", [x, b.const("fc.weight", b.randn(16, 24))], name="fc"))
    flat = b.node("Reshape", [h, b.ints("flat", [-1])], name="flatten_all")
    m = b.model(b.node("ReduceSum", [b.node("Unsqueeze", [flat, b.ints("ax0", [0])]), b.ints("ax1", [1])],
                       outputs=["y"]))
    an = Analyzed(m)
    g = [g for g in an.groups if any(gm.member.tensor == "fc.weight" for gm in g.members)][0]
    assert not g.prunable and "flatten_all" in g.describe_block()


def test_tf2onnx_batch_symbol_counts_as_batch_one():
    """tf2onnx names the batch ``unk__N``: MACs are counted at batch 1, not at the sequence length."""
    from graphprune.bench import count_macs_params, random_inputs
    from graphprune.pipeline import count_feed

    m = onnx.load(KERAS)
    sym = m.graph.input[0].type.tensor_type.shape.dim[0].dim_param
    assert sym.startswith("unk__")
    feed = count_feed(m, 64)
    assert feed["x"].shape == (1, 16, 32)
    assert count_macs_params(m, feed)[0] == count_macs_params(m, random_inputs(m, batch=1))[0]


# ----------------------------------------------------------------------------- --static-batch

def test_static_batch_lets_heads_merged_into_the_batch_prune(gp, tmp_path):
    """tf2onnx flattens [batch, heads] into one symbolic axis for its batched MatMuls: with a
    symbolic batch the heads cannot be followed (analyze says how to fix it); --static-batch 1
    fixes the batch and the heads prune, oracle passed."""
    import json

    r = gp("analyze", KERAS)
    assert r.returncode == 0, r.stderr
    assert "10 groups, 2 prunable" in r.stdout and "with --static-batch 1, 4 groups are prunable" in r.stdout
    r = gp("analyze", KERAS, "--static-batch", "1")
    assert "6 groups, 4 prunable" in r.stdout and "hint" not in r.stdout
    out = tmp_path / "k.onnx"
    r = gp("run", KERAS, "--static-batch", "1", "-o", str(out), "--no-bench")
    assert r.returncode == 0, r.stderr
    rep = json.loads((tmp_path / "k.report.json").read_text())
    assert rep["verify"]["passed"] and rep["summary"]["options"]["static_batch"] == 1
    heads = [g for g in rep["groups"] if g["channels_before"] == 4 and g["channels_after"] == 2]
    assert len(heads) == 2, [(g["channels_before"], g["channels_after"]) for g in rep["groups"]]
    m = onnx.load(str(out))
    assert m.graph.input[0].type.tensor_type.shape.dim[0].dim_value == 1
    original = onnx.load(KERAS)
    assert original.graph.input[0].type.tensor_type.shape.dim[0].dim_param    # input file untouched


def test_static_batch_bad_values(gp, tmp_path):
    from graphprune.demo import build_demo_model

    assert_one_line_error(gp("run", KERAS, "--static-batch", "0", "-o", str(tmp_path / "a.onnx")), 2)
    assert_one_line_error(gp("run", KERAS, "--static-batch", "2", "--calib-batch", "3",
                             "-o", str(tmp_path / "a.onnx")), 2)
    demo = tmp_path / "demo.onnx"
    onnx.save(build_demo_model(seed=0), str(demo))              # static batch 1: nothing to fix
    r = gp("analyze", str(demo), "--static-batch", "1")
    assert_one_line_error(r, 2)
    assert "no symbolic batch" in r.stderr
    assert not (tmp_path / "a.onnx").exists()


def test_shared_int32_shape_constant_rewritten_twice_keeps_its_type():
    """Two Reshapes read one int32 target (Concat(Slice(Shape), [width]) -> Cast int64), as in
    magika's jax2tf export: the second rewrite of the same constant slot once wrote int64 and the
    pruned Concat no longer ran; it now updates the slot's own copy in its type."""
    b = GraphBuilder(seed=9)
    x = b.input("x", ["n", 8])
    h = b.relu(b.node("MatMul", [x, b.const("fc.weight", b.randn(8, 16))], name="fc"))
    n = b.node("Slice", [b.node("Cast", [b.node("Shape", [x])], to=onnx.TensorProto.INT32),
                         b.ints("s0", [0]), b.ints("s1", [1])])
    width = b.const("width", np.array([16], np.int32), as_node=False)        # shared by two targets
    t1 = b.node("Cast", [b.node("Concat", [n, width], axis=0)], to=onnx.TensorProto.INT64)
    t2 = b.node("Cast", [b.node("Concat", [n, width], axis=0)], to=onnx.TensorProto.INT64)
    a1 = b.node("Reshape", [h, t1], name="r1")
    a2 = b.node("Reshape", [b.node("Mul", [h, b.const("two", np.array(2.0, np.float32))]), t1], name="r2")
    a3 = b.node("Reshape", [b.node("Neg", [h]), t2], name="r3")
    y = b.node("MatMul", [b.node("Add", [b.node("Add", [a1, a2]), a3]), b.const("out.weight", b.randn(16, 4))],
               name="out")
    m = b.model(b.node("Identity", [y], outputs=["y"]))
    res = run_case(m, batch=2)
    g = group_of(res, "fc.weight", "out")
    assert pruned(g)
    read = {i for n in res.model.graph.node for i in n.input}
    widths = [i for i in res.model.graph.initializer if i.data_type == onnx.TensorProto.INT32 and i.name in read]
    assert len(widths) == 2 and all(list(numpy_helper.to_array(w)) == [g["channels_after"]] for w in widths)
    assert "width" not in {i.name for i in res.model.graph.initializer}     # the orphaned original is dropped


def test_sequence_first_inputs_keep_their_sequence_length():
    """[seq, batch, d] with a named batch: the first-axis symbol is the sequence, counted at 64."""
    from graphprune.pipeline import count_feed

    b = GraphBuilder(seed=1)
    x = b.input("x", ["seq", "batch", 8])
    m = b.model(b.node("MatMul", [x, b.const("w", b.randn(8, 4))], outputs=["y"]))
    assert count_feed(m, 64)["x"].shape == (64, 1, 8)
