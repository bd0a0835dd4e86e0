"""Transformers: heads, MLP widths and GQA found and pruned automatically, from both exporters,
with dynamic batch and sequence; MiniLM (real weights) too; unprovable heads are blocked.

Models come from the ``exported`` fixture (conftest.py): committed exports in the default tier,
fresh exports (MiniLM always: its real weights are too large to commit) in the slow tier."""

import numpy as np
import onnx
import pytest

from graphprune.bench import random_inputs, run_model
from graphprune.pipeline import Analyzed, Options, prune
from helpers_graphs import export_params

EXPORTERS = ["legacy", "dynamo"]


def _check(model, res, dims):
    rep = res.report
    onnx.checker.check_model(res.model, full_check=True)
    assert rep["verify"]["passed"], rep["verify"]
    # batch and sequence changed at run time still work
    for batch, seq in ((1, 5), (3, 11)):
        feed = random_inputs(model, seed=batch, batch=batch, dims={k: seq for k in dims})
        a, b = run_model(model, feed), run_model(res.model, feed)
        assert {k: v.shape for k, v in a.items()} == {k: v.shape for k, v in b.items()}
    return rep


@pytest.mark.parametrize("name,exporter", export_params(["vit", "gpt2", "llama"], EXPORTERS))
def test_heads_and_mlp(exported, name, exporter):
    model = onnx.load(exported(name, exporter))
    res = prune(model, Options(ratio=0.5, bench=False))
    rep = _check(model, res, ["sequence"])
    heads = [g for g in rep["groups"] if g["kind"] == "heads"]
    mlps = [g for g in rep["groups"] if g["kind"] == "channels" and not g.get("blocked")]
    assert len(heads) == 2 and len(mlps) == 2  # two blocks each
    for g in heads + mlps:
        assert g["channels_after"] == g["channels_before"] // 2, g["name"]
    assert all(g["channels_after"] == g["channels_before"] for g in rep["groups"] if g["kind"] == "hidden")
    ratio = rep["macs"]["after"] / rep["macs"]["before"]
    assert 0.45 < ratio < 0.75, ratio


@pytest.mark.parametrize("name,exporter", export_params(["llama"], EXPORTERS))
def test_gqa_kv_head_takes_its_query_heads(exported, name, exporter):
    """LLaMA config: 4 query heads, 2 KV heads, head dim 16: a unit is one KV head with its two
    query heads; the query projection loses 2 x 16 rows per removed KV head."""
    model = onnx.load(exported(name, exporter))
    res = prune(model, Options(ratio=0.5, bench=False))
    _check(model, res, ["sequence"])
    g = next(g for g in res.report["groups"] if g["kind"] == "heads")
    assert g["channels_before"] == 2 and g["channels_after"] == 1
    sizes = sorted((m["role"], len(m["kept"])) for m in g["members"] if m["role"] in ("out", "in"))
    # q: 32 of 64 rows; k and v: 16 of 32 rows each; o: 32 of 64 columns
    assert sizes == [("in", 32), ("out", 16), ("out", 16), ("out", 32)], sizes


BERT = {"minilm": dict(layers=6, heads=12, mlp=1536, macs=698e6),
        "bert_tiny": dict(layers=2, heads=4, mlp=64, macs=1.57e6)}


@pytest.mark.parametrize("name,exporter", export_params(["bert_tiny", "minilm"], EXPORTERS))
def test_minilm_heads_and_mlp(exported, name, exporter):
    """MiniLM (real weights), and bert_tiny (the same architecture, random weights; default tier)."""
    cfg = BERT[name]
    model = onnx.load(exported(name, exporter))
    res = prune(model, Options(head_ratio=0.5, mlp_ratio=0.5, bench=False))
    rep = _check(model, res, ["sequence"])
    heads = [g for g in rep["groups"] if g["kind"] == "heads"]
    assert len(heads) == cfg["layers"]
    assert all(g["channels_before"] == cfg["heads"] and g["channels_after"] == cfg["heads"] // 2 for g in heads)
    mlps = [g for g in rep["groups"] if g["kind"] == "channels"]
    assert len(mlps) == cfg["layers"] and all(g["channels_after"] == cfg["mlp"] // 2 for g in mlps)
    # attention and MLP MACs halve at sequence 64 (run-time shapes)
    assert rep["macs"]["before"] == pytest.approx(cfg["macs"], rel=0.01)
    assert rep["macs"]["after"] / rep["macs"]["before"] == pytest.approx(0.5, abs=0.01)


@pytest.mark.parametrize("name,exporter", export_params(["vit"], ["legacy"]))
def test_head_ratio_only(exported, name, exporter):
    model = onnx.load(exported(name, exporter))
    res = prune(model, Options(ratio=0.5, head_ratio=0.5, mlp_ratio=0.0, bench=False))
    for g in res.report["groups"]:
        if g["kind"] == "heads":
            assert g["channels_after"] == g["channels_before"] // 2
        else:
            assert g["channels_after"] == g["channels_before"]


@pytest.mark.parametrize("name,exporter", export_params(["vit", "gpt2"], ["legacy"]))
def test_prune_hidden_is_inexact_but_runs(exported, name, exporter):
    model = onnx.load(exported(name, exporter))
    res = prune(model, Options(ratio=0.5, prune_hidden=True, bench=False))
    hidden = [g for g in res.report["groups"] if g["kind"] == "hidden"]
    assert hidden and all(not g["exact"] and g["channels_after"] < g["channels_before"] for g in hidden)
    # embeddings / class token / position embedding are members of the hidden group
    tensors = {m["tensor"] for g in hidden for m in g["members"]}
    assert any(t for t in tensors if "wte" in t or "pos" in t or "cls" in t), tensors
    feed = random_inputs(model, seed=0, batch=2, dims={"sequence": 7})
    a, b = run_model(model, feed), run_model(res.model, feed)
    assert {k: v.shape for k, v in a.items()} == {k: v.shape for k, v in b.items()}


@pytest.mark.parametrize("name,exporter", export_params(["vit"], ["legacy"]))
def test_custom_op_in_attention_blocks_only_that_layer(exported, name, exporter):
    """Replace block 1's Softmax with an unknown op: its heads cannot be proven, so they are
    blocked with the op named; block 0's heads and MLP still prune. (Shape inference stops at
    the unknown op, so what lies after it is blocked too, each with its reason.)"""
    model = onnx.load(exported(name, exporter))
    for node in model.graph.node:
        if node.op_type == "Softmax" and "blocks.1" in node.name:
            node.op_type = "MySoftmax"
            node.domain = "custom.ops"
            del node.attribute[:]
            break
    model.opset_import.append(onnx.helper.make_opsetid("custom.ops", 1))
    an = Analyzed(model)
    attn1 = next(g for g in an.groups if "blocks.1/attn/qkv" in g.name)
    assert not attn1.prunable
    assert any("MySoftmax" in r for r in attn1.blocked.values())
    ok = {g.name for g in an.groups if g.prunable and g.exact}
    assert ok == {"/blocks.0/attn/qkv/MatMul", "/blocks.0/mlp/fc1/MatMul"}, ok
    res = prune(model, Options(ratio=0.5, bench=False, verify=False))
    assert res.report["summary"]["pruned_groups"] == 2


FUSED = {"minilm": dict(heads=12, hidden=384, layers=6), "bert_tiny": dict(heads=4, hidden=32, layers=2)}


@pytest.mark.parametrize("name,exporter", export_params(["bert_tiny", "minilm"], ["legacy"]))
def test_ort_fused_contrib_ops(exported, name, exporter, tmp_path):
    """MiniLM (and a tiny BERT of the same architecture, in the default tier) after onnxruntime's
    transformer optimizer: com.microsoft Attention, SkipLayerNormalization, BiasGelu,
    EmbedLayerNormalization. Heads (num_heads rewritten) and MLP widths prune; the oracle holds."""
    from onnxruntime.transformers import optimizer

    cfg = FUSED[name]
    fused = str(tmp_path / "fused.onnx")
    opt = optimizer.optimize_model(exported(name, exporter), model_type="bert", num_heads=cfg["heads"],
                                   hidden_size=cfg["hidden"], opt_level=0)
    opt.save_model_to_file(fused)
    model = onnx.load(fused)
    ops = {(n.domain, n.op_type) for n in model.graph.node}
    assert ("com.microsoft", "Attention") in ops and ("com.microsoft", "SkipLayerNormalization") in ops
    res = prune(model, Options(ratio=0.5, bench=False))
    _check(model, res, ["sequence"])
    heads = [g for g in res.report["groups"] if g["kind"] == "heads"]
    assert len(heads) == cfg["layers"] and all(g["channels_after"] == cfg["heads"] // 2 for g in heads)
    mlps = [g for g in res.report["groups"] if g["kind"] == "channels"]
    assert len(mlps) == cfg["layers"] and all(g["channels_after"] == g["channels_before"] // 2 for g in mlps)
    attn = [n for n in res.model.graph.node if n.op_type == "Attention"]
    assert all(a.i == cfg["heads"] // 2 for n in attn for a in n.attribute if a.name == "num_heads")


def test_unhandled_contrib_op_blocks_with_reason():
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w1 = numpy_helper.from_array(rng.standard_normal((8, 16)).astype(np.float32), "w1")
    w2 = numpy_helper.from_array(rng.standard_normal((16, 8)).astype(np.float32), "w2")
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"], name="fc1"),
             helper.make_node("RotaryEmbedding", ["h", "pos", "cos", "sin"], ["r"], domain="com.microsoft", name="rot"),
             helper.make_node("MatMul", ["r", "w2"], ["y"], name="fc2")]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8]),
                                       helper.make_tensor_value_info("pos", TensorProto.INT64, [1, 4]),
                                       helper.make_tensor_value_info("cos", TensorProto.FLOAT, [4, 8]),
                                       helper.make_tensor_value_info("sin", TensorProto.FLOAT, [4, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8])], [w1, w2])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    an = Analyzed(m)
    g0 = next(g for g in an.groups if g.name == "fc1")
    assert not g0.prunable and "com.microsoft::RotaryEmbedding" in g0.describe_block()
