"""Small graphs with the patterns of models found in the wild (issue 13): each one reproduces one
shape of failure that ONNX files other projects ship had, built with onnx.helper in milliseconds.

    bert_like          input_ids / attention_mask / token_type_ids (a 2-row type table)
    initializer_inputs every weight also listed as a graph input (IR 3, old exporters)
    unsorted           nodes not in topological order
    zipmap_classifier  a scikit-learn-style classifier: label + a sequence of maps
    kws_layernorm      a hand-written LayerNorm over channels and an If on the final output
    quantized          QuantizeLinear / DequantizeLinear around a Conv
    fixed_length       a symbolic time axis that the weights fix at 32
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

F, I64 = TensorProto.FLOAT, TensorProto.INT64


def _w(rng, *shape):
    return (rng.standard_normal(shape) / np.sqrt(shape[-1] if len(shape) > 1 else 1)).astype(np.float32)


def _model(nodes, inputs, outputs, inits, opset=17, ir=10, extra_opsets=()):
    g = helper.make_graph(nodes, "wild", inputs, outputs, inits)
    ops = [helper.make_opsetid("", opset)] + [helper.make_opsetid(d, v) for d, v in extra_opsets]
    m = helper.make_model(g, opset_imports=ops, producer_name="graphprune-tests")
    m.ir_version = ir
    return m


def bert_like(seed: int = 0, vocab: int = 30, d: int = 16, hidden: int = 32, max_pos: int = 64) -> onnx.ModelProto:
    """Embeddings (word + position + a 2-row token type table), the attention mask multiplied in,
    then an MLP (prunable) and a projection back to d."""
    rng = np.random.default_rng(seed)
    inits = [numpy_helper.from_array(_w(rng, vocab, d), "word_emb"),
             numpy_helper.from_array(_w(rng, max_pos, d), "pos_emb"),
             numpy_helper.from_array(_w(rng, 2, d), "type_emb"),
             numpy_helper.from_array(_w(rng, d, hidden), "fc1.w"),
             numpy_helper.from_array(_w(rng, hidden), "fc1.b"),
             numpy_helper.from_array(_w(rng, hidden, d), "fc2.w"),
             numpy_helper.from_array(np.array(-1, np.int64), "axis_m1"),
             numpy_helper.from_array(np.array(0, np.int64), "s0"),
             numpy_helper.from_array(np.array(1, np.int64), "s1")]
    nodes = [
        helper.make_node("Gather", ["word_emb", "input_ids"], ["we"], name="word_gather"),
        # positions: Range(0, seq) from the input's shape, as exporters build them
        helper.make_node("Shape", ["input_ids"], ["ids_shape"]),
        helper.make_node("Gather", ["ids_shape", "s1"], ["seq"], axis=0),
        helper.make_node("Range", ["s0", "seq", "s1"], ["pos_ids"]),
        helper.make_node("Gather", ["pos_emb", "pos_ids"], ["pe"], name="pos_gather"),
        # token types reach their 2-row table through a Cast (int32 -> int64 style)
        helper.make_node("Cast", ["token_type_ids"], ["tt64"], to=I64),
        helper.make_node("Gather", ["type_emb", "tt64"], ["te"], name="type_gather"),
        helper.make_node("Add", ["we", "pe"], ["e1"]),
        helper.make_node("Add", ["e1", "te"], ["e2"]),
        helper.make_node("Unsqueeze", ["attention_mask", "axis_m1"], ["m3"]),
        helper.make_node("Cast", ["m3"], ["mf"], to=F),
        helper.make_node("Mul", ["e2", "mf"], ["x"]),
        helper.make_node("MatMul", ["x", "fc1.w"], ["h0"], name="fc1"),
        helper.make_node("Add", ["h0", "fc1.b"], ["h1"]),
        helper.make_node("Relu", ["h1"], ["h2"]),
        helper.make_node("MatMul", ["h2", "fc2.w"], ["y0"], name="fc2"),
        helper.make_node("Add", ["y0", "x"], ["last_hidden_state"]),
    ]
    ins = [helper.make_tensor_value_info(n, I64, ["batch", "sequence"])
           for n in ("input_ids", "attention_mask", "token_type_ids")]
    outs = [helper.make_tensor_value_info("last_hidden_state", F, ["batch", "sequence", d])]
    return _model(nodes, ins, outs, inits)


def _cnn_nodes(rng, c_in=3, c1=16, c2=8):
    inits = [numpy_helper.from_array(_w(rng, c1, c_in, 3, 3), "conv1.w"),
             numpy_helper.from_array(_w(rng, c1), "conv1.b"),
             numpy_helper.from_array(_w(rng, c2, c1, 3, 3), "conv2.w"),
             numpy_helper.from_array(_w(rng, c2), "conv2.b")]
    nodes = [helper.make_node("Conv", ["x", "conv1.w", "conv1.b"], ["a"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["a"], ["r"], name="relu1"),
             helper.make_node("Conv", ["r", "conv2.w", "conv2.b"], ["y"], name="conv2", pads=[1, 1, 1, 1])]
    return nodes, inits


def initializer_inputs(seed: int = 0) -> onnx.ModelProto:
    """IR 3: every initializer is also a graph input (the rule before IR 4)."""
    rng = np.random.default_rng(seed)
    nodes, inits = _cnn_nodes(rng)
    ins = [helper.make_tensor_value_info("x", F, [1, 3, 8, 8])]
    ins += [helper.make_tensor_value_info(t.name, F, list(t.dims)) for t in inits]
    outs = [helper.make_tensor_value_info("y", F, [1, 8, 8, 8])]
    return _model(nodes, ins, outs, inits, opset=9, ir=3)


def unsorted(seed: int = 0) -> onnx.ModelProto:
    """A small CNN whose nodes are listed in reverse (onnxruntime runs it; the checker refuses)."""
    rng = np.random.default_rng(seed)
    nodes, inits = _cnn_nodes(rng)
    ins = [helper.make_tensor_value_info("x", F, [1, 3, 8, 8])]
    outs = [helper.make_tensor_value_info("y", F, [1, 8, 8, 8])]
    return _model(nodes[::-1], ins, outs, inits)


def zipmap_classifier(seed: int = 0, n_features: int = 4, hidden: int = 16, classes: int = 3) -> onnx.ModelProto:
    """label (int64) and probabilities as a sequence of maps (ZipMap), as skl2onnx writes them,
    behind an MLP whose hidden width is prunable."""
    rng = np.random.default_rng(seed)
    inits = [numpy_helper.from_array(_w(rng, n_features, hidden), "w1"),
             numpy_helper.from_array(_w(rng, hidden), "b1"),
             numpy_helper.from_array(_w(rng, hidden, classes), "w2")]
    nodes = [helper.make_node("MatMul", ["X", "w1"], ["h0"], name="fc1"),
             helper.make_node("Add", ["h0", "b1"], ["h1"]),
             helper.make_node("Relu", ["h1"], ["h2"]),
             helper.make_node("MatMul", ["h2", "w2"], ["logits"], name="fc2"),
             helper.make_node("Softmax", ["logits"], ["probs"], axis=1),
             helper.make_node("ArgMax", ["probs"], ["label"], axis=1, keepdims=0),
             helper.make_node("ZipMap", ["probs"], ["output_probability"], domain="ai.onnx.ml",
                              classlabels_int64s=list(range(classes)))]
    ins = [helper.make_tensor_value_info("X", F, [None, n_features])]
    seq_map = helper.make_sequence_type_proto(helper.make_map_type_proto(I64, helper.make_tensor_type_proto(F, [])))
    outs = [helper.make_tensor_value_info("label", I64, [None]),
            helper.make_value_info("output_probability", seq_map)]
    return _model(nodes, ins, outs, inits, opset=13, extra_opsets=[("ai.onnx.ml", 1)])


def kws_layernorm(seed: int = 0, feats: int = 10, c: int = 16, classes: int = 4) -> onnx.ModelProto:
    """Keyword-spotting style: MatMul -> hand-written LayerNorm over channels -> Relu -> MatMul
    -> mean over time -> MatMul -> logits, a second LayerNorm, then an If on the final output (a flag
    input picks softmax or the raw logits). Both channel groups reach a LayerNorm: inexact, not blocked."""
    rng = np.random.default_rng(seed)
    inits = [numpy_helper.from_array(_w(rng, feats, c), "w1"),
             numpy_helper.from_array(_w(rng, c), "b1"),
             numpy_helper.from_array(np.ones(c, np.float32), "ln.g"),
             numpy_helper.from_array(np.zeros(c, np.float32), "ln.b"),
             numpy_helper.from_array(np.array(2.0, np.float32), "two"),
             numpy_helper.from_array(np.array(1e-5, np.float32), "eps"),
             numpy_helper.from_array(_w(rng, c, c), "w2"),
             numpy_helper.from_array(_w(rng, c), "b2"),
             numpy_helper.from_array(_w(rng, c, classes), "w3")]
    def ln(x, y, k):      # (x - mean) / sqrt(var + eps) * g + b, over the last (channel) axis
        return [helper.make_node("ReduceMean", [x], [f"mu{k}"], axes=[-1]),
                helper.make_node("Sub", [x, f"mu{k}"], [f"xc{k}"]),
                helper.make_node("Pow", [f"xc{k}", "two"], [f"sq{k}"]),
                helper.make_node("ReduceMean", [f"sq{k}"], [f"var{k}"], axes=[-1]),
                helper.make_node("Add", [f"var{k}", "eps"], [f"ve{k}"]),
                helper.make_node("Sqrt", [f"ve{k}"], [f"sd{k}"]),
                helper.make_node("Div", [f"xc{k}", f"sd{k}"], [f"xn{k}"]),
                helper.make_node("Mul", [f"xn{k}", "ln.g"], [f"xg{k}"]),
                helper.make_node("Add", [f"xg{k}", "ln.b"], [y])]
    then_g = helper.make_graph([helper.make_node("Softmax", ["logits"], ["p_then"], axis=-1)], "then", [],
                               [helper.make_tensor_value_info("p_then", F, [1, classes])])
    else_g = helper.make_graph([helper.make_node("Identity", ["logits"], ["p_else"])], "else", [],
                               [helper.make_tensor_value_info("p_else", F, [1, classes])])
    nodes = ([helper.make_node("MatMul", ["feats", "w1"], ["h0"], name="fc1"),
              helper.make_node("Add", ["h0", "b1"], ["h"])] + ln("h", "hl", 1) +
             [helper.make_node("Relu", ["hl"], ["r"]),
              helper.make_node("MatMul", ["r", "w2"], ["u0"], name="fc2"),
              helper.make_node("Add", ["u0", "b2"], ["u"])] + ln("u", "ul", 2) +
             [helper.make_node("Relu", ["ul"], ["ur"]),
              helper.make_node("ReduceMean", ["ur"], ["pooled"], axes=[1], keepdims=0),
              helper.make_node("MatMul", ["pooled", "w3"], ["logits"], name="fc3"),
              helper.make_node("If", ["softmax"], ["scores"], then_branch=then_g, else_branch=else_g)])
    ins = [helper.make_tensor_value_info("feats", F, [1, 20, feats]),
           helper.make_tensor_value_info("softmax", TensorProto.BOOL, [])]
    outs = [helper.make_tensor_value_info("scores", F, [1, classes])]
    return _model(nodes, ins, outs, inits, opset=13)


def quantized(seed: int = 0) -> onnx.ModelProto:
    """QDQ around a Conv: nothing prunable, and said before any expensive analysis."""
    rng = np.random.default_rng(seed)
    w = np.clip(np.round(rng.standard_normal((8, 3, 3, 3)) * 20), -127, 127).astype(np.int8)
    inits = [numpy_helper.from_array(w, "w_q"), numpy_helper.from_array(np.array(0.05, np.float32), "w_s"),
             numpy_helper.from_array(np.array(0, np.int8), "w_z"),
             numpy_helper.from_array(np.array(0.1, np.float32), "x_s"),
             numpy_helper.from_array(np.array(0, np.int8), "x_z")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "x_s", "x_z"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "x_s", "x_z"], ["xd"]),
             helper.make_node("DequantizeLinear", ["w_q", "w_s", "w_z"], ["wd"]),
             helper.make_node("Conv", ["xd", "wd"], ["y"], name="conv")]
    ins = [helper.make_tensor_value_info("x", F, [1, 3, 8, 8])]
    outs = [helper.make_tensor_value_info("y", F, [1, 8, 6, 6])]
    return _model(nodes, ins, outs, inits, opset=13)


def fixed_length(seed: int = 0, t: int = 32, d: int = 16, hidden: int = 32) -> onnx.ModelProto:
    """A symbolic time axis the weights fix: a learned position encoding [1, 32, d] is added to
    the [batch, time, d] input, so the model runs only at time = 32 (guesses of 8 or 64 fail)."""
    rng = np.random.default_rng(seed)
    inits = [numpy_helper.from_array(_w(rng, 1, t, d), "pos"),
             numpy_helper.from_array(_w(rng, d, hidden), "fc1.w"),
             numpy_helper.from_array(_w(rng, hidden, d), "fc2.w")]
    nodes = [helper.make_node("Add", ["x", "pos"], ["h"]),
             helper.make_node("MatMul", ["h", "fc1.w"], ["a"], name="fc1"),
             helper.make_node("Relu", ["a"], ["r"]),
             helper.make_node("MatMul", ["r", "fc2.w"], ["y"], name="fc2")]
    ins = [helper.make_tensor_value_info("x", F, ["batch", "time", d])]
    outs = [helper.make_tensor_value_info("y", F, ["batch", "time", d])]
    return _model(nodes, ins, outs, inits)


ALL = {"bert_like": bert_like, "initializer_inputs": initializer_inputs, "unsorted": unsorted,
       "zipmap_classifier": zipmap_classifier, "kws_layernorm": kws_layernorm, "quantized": quantized,
       "fixed_length": fixed_length}


if __name__ == "__main__":      # python tests/wild_graphs.py FOLDER: write every graph there
    import os
    import sys

    out = sys.argv[1] if len(sys.argv) > 1 else "."
    os.makedirs(out, exist_ok=True)
    for name, make in ALL.items():
        onnx.save(make(), os.path.join(out, f"{name}.onnx"))
        print(os.path.join(out, f"{name}.onnx"))
