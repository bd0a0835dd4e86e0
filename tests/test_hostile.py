"""Hostile inputs through the command line (``graphprune run IN -o OUT``): each test takes the
``gp`` fixture (conftest.py), so it runs in-process in the default tier and as a real
``python -m graphprune`` subprocess in the slow tier.

What tests/test_io.py (load_model on bad files, external-data checks, atomic saves) and
tests/test_cli.py (empty/random/truncated files, ratio 1 / negative, round-to 0, unknown
criterion, missing output folder, output is a directory or the input, analyze of a custom op)
already cover is not repeated here.

Every case checks what README.md promises: the documented exit code; on failure exactly one
``graphprune: error`` line on stderr and no traceback; the input model and its external data
byte-for-byte unchanged; nothing partial and no temporary file in the output folder.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import shutil
import subprocess

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from helpers_graphs import GraphBuilder, assert_one_line_error, error_lines

F = TensorProto.FLOAT


# ----------------------------------------------------------------------------- harness


def folder_state(folder) -> dict:
    out = {}
    for root, _, files in os.walk(folder):
        for f in files:
            p = os.path.join(root, f)
            if os.path.islink(p):
                out[os.path.relpath(p, folder)] = "link:" + os.readlink(p)
                continue
            with open(p, "rb") as fh:
                out[os.path.relpath(p, folder)] = hashlib.sha256(fh.read()).hexdigest()
    return out


def assert_ok(r):
    assert r.returncode == 0, (r.returncode, r.stdout[-2000:], r.stderr[-2000:])
    assert "Traceback" not in r.stderr and not error_lines(r), r.stderr


class Case:
    """tmp/in/ holds the input model (and any data files), tmp/out/ receives the outputs."""

    def __init__(self, gp, tmp_path, model=None, raw: bytes = None, name="m.onnx", external=False):
        self.gp = gp
        self.indir = tmp_path / "in"
        self.outdir = tmp_path / "out"
        self.indir.mkdir()
        self.outdir.mkdir()
        self.path = self.indir / name
        if raw is not None:
            self.path.write_bytes(raw)
        elif external:
            onnx.save(model, str(self.path), save_as_external_data=True, all_tensors_to_one_file=True,
                      location=name + ".data", size_threshold=0)
        else:
            self.path.write_bytes(model.SerializeToString())
        self.out = self.outdir / "pruned.onnx"
        self.report_path = self.outdir / "pruned.report.json"
        self.before = folder_state(self.indir)

    def run(self, *extra, out=None, cmd="run"):
        args = [cmd, self.path]
        if cmd == "run":
            args += ["-o", out or self.out, "--no-bench"]
        r = self.gp(*args, *extra)
        assert folder_state(self.indir) == self.before, "the input folder changed"
        return r

    def failed(self, r, code, *words):
        assert_one_line_error(r, code, *words)
        assert os.listdir(self.outdir) == [], os.listdir(self.outdir)  # nothing partial, no temp file

    def succeeded(self, r) -> dict:
        assert_ok(r)
        assert sorted(os.listdir(self.outdir)) == ["pruned.onnx", "pruned.report.json"], os.listdir(self.outdir)
        rep = json.loads(self.report_path.read_text())
        assert rep["verify"]["passed"], rep["verify"]
        pruned = onnx.load(str(self.out))
        onnx.checker.check_model(pruned, full_check=True)
        return rep

    def refused_or_ok(self, r, codes=(3,)):
        """Either pruned correctly (exit 0, oracle passes) or a documented one-line refusal
        (never exit 1, the code for a graphprune bug). Returns the report or None."""
        if r.returncode == 0:
            return self.succeeded(r)
        assert r.returncode in codes, (f"exit {r.returncode}; expected 0 or {codes}", r.stderr[-1500:])
        self.failed(r, r.returncode)
        return None


def chain(opset=17, shape=(1, 3, 8, 8), seed=0):
    """x -> c1 (8) -> Relu -> c2 (8) -> Relu -> c3 (4) -> y: two prunable groups."""
    b = GraphBuilder(opset=opset, seed=seed)
    x = b.input("x", list(shape))
    h = b.relu(b.conv(x, 3, 8, name="c1"))
    h = b.relu(b.conv(h, 8, 8, name="c2"))
    y = b.conv(h, 8, 4, name="c3")
    return b.model(y)


def group(rep, name):
    return next(g for g in rep["groups"] if g["name"] == name)


def run_ort(path_or_model, feed):
    m = path_or_model if isinstance(path_or_model, onnx.ModelProto) else onnx.load(str(path_or_model))
    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, feed)


# ----------------------------------------------------------------------------- not a model / invalid graphs


@pytest.mark.parametrize("what", ["graph", "node", "value_info"])
def test_valid_protobuf_that_is_not_a_model(gp, tmp_path, what):
    m = chain()
    raw = {"graph": m.graph, "node": m.graph.node[0], "value_info": m.graph.input[0]}[what].SerializeToString()
    c = Case(gp, tmp_path, raw=raw)
    c.failed(c.run(), 3, "not an onnx model")


def _invalid(kind):
    m = chain()
    g = m.graph
    if kind == "cycle":                     # c1 reads c3's output
        g.node[0].input[0] = g.node[-1].output[0]
    elif kind == "dangling_input":          # a node input nothing produces
        g.node[2].input[0] = "nothing_makes_this"
    elif kind == "duplicate_tensor_name":   # two nodes write the same tensor
        g.node[2].output[0] = g.node[0].output[0]
    elif kind == "duplicate_initializer":
        g.initializer.append(copy.deepcopy(g.initializer[0]))
    elif kind == "attribute_wrong_type":    # Conv group as a float
        g.node[0].attribute.append(helper.make_attribute("group", 1.0))
    return m


@pytest.mark.parametrize("kind", ["cycle", "dangling_input", "duplicate_tensor_name", "duplicate_initializer",
                                  "attribute_wrong_type"])
def test_model_failing_the_checker(gp, tmp_path, kind):
    m = _invalid(kind)
    with pytest.raises(Exception):
        onnx.checker.check_model(m)
    c = Case(gp, tmp_path, m)
    c.failed(c.run(), 3, "checker")


def test_duplicate_node_names(gp, tmp_path):
    """Node names are not required to be unique by the ONNX checker, but onnxruntime refuses the
    model. Either graphprune copes (exit 0, oracle) or refuses the input (exit 3); an
    onnxruntime error escaping as 'internal error' (exit 1) is a bug."""
    m = chain()
    for n in m.graph.node:
        n.name = "same"
    onnx.checker.check_model(m)
    c = Case(gp, tmp_path, m)
    c.refused_or_ok(c.run())


def test_external_data_path_traversal(gp, tmp_path):
    """An external-data location '../secret.bin' is refused before anything is read or written;
    the file it points at is untouched."""
    m = chain()
    c = Case(gp, tmp_path, m, external=True)
    secret = tmp_path / "secret.bin"
    secret.write_bytes((c.indir / "m.onnx.data").read_bytes())
    raw = onnx.load(str(c.path), load_external_data=False)
    for t in raw.graph.initializer:
        for e in t.external_data:
            if e.key == "location":
                e.value = "../secret.bin"
    c.path.write_bytes(raw.SerializeToString())
    c.before = folder_state(c.indir)
    secret_sha = folder_state(tmp_path)["secret.bin"]
    c.failed(c.run(), 3, "outside")
    assert folder_state(tmp_path)["secret.bin"] == secret_sha


def test_external_data_model_prunes_and_leaves_data_alone(gp, tmp_path):
    c = Case(gp, tmp_path, chain(), external=True)
    assert (c.indir / "m.onnx.data").exists()
    rep = c.succeeded(c.run())
    assert group(rep, "c1")["channels_after"] < group(rep, "c1")["channels_before"]


# ----------------------------------------------------------------------------- unknown ops, control flow


def _custom_op_model():
    b = GraphBuilder(seed=1)
    x = b.input("x", [1, 3, 8, 8])
    h = b.relu(b.conv(x, 3, 8, name="c1"))
    h = b.node("MyOp", [h], domain="custom.domain", name="my")
    h = b.relu(b.conv(h, 8, 8, name="c2"))
    y = b.conv(h, 8, 4, name="c3")
    return b.model(y, output_shapes=[[1, 4, 8, 8]])


def test_unknown_domain_op_analyze_lists_it(gp, tmp_path):
    c = Case(gp, tmp_path, _custom_op_model())
    r = c.run(cmd="analyze")
    assert_ok(r)
    assert "unknown op custom.domain::MyOp" in r.stdout
    assert "1 prunable" in r.stdout  # c2 still is


def test_unknown_domain_op_run(gp, tmp_path):
    """`run` on a model with an op onnxruntime cannot execute: the unknown op blocks only its
    channels (exit 0), or verification is reported as impossible (exit 5, one line). An
    onnxruntime exception escaping as 'internal error' (exit 1) is a bug."""
    c = Case(gp, tmp_path, _custom_op_model())
    r = c.run()
    if r.returncode == 0:
        assert_ok(r)
        rep = json.loads(c.report_path.read_text())
        assert group(rep, "c1")["channels_after"] == group(rep, "c1")["channels_before"]
        assert group(rep, "c2")["channels_after"] < group(rep, "c2")["channels_before"]
    else:
        assert r.returncode == 5, (r.returncode, r.stderr[-1500:])
        c.failed(r, 5)


def _control_flow_model(kind):
    """c1's output is read inside the subgraph of an If / Loop / Scan (outer-scope capture)."""
    b = GraphBuilder(opset=17, seed=3)
    x = b.input("x", [1, 3, 8, 8])
    a1 = b.relu(b.conv(x, 3, 8, name="c1"))
    a2 = b.relu(b.conv(a1, 8, 8, name="c2"))
    y = b.conv(a2, 8, 4, name="c3")
    if kind == "If":
        cond = b.input("cond", [], elem=TensorProto.BOOL)
        then_g = helper.make_graph([helper.make_node("ReduceSum", [a1], ["t_out"], keepdims=0)], "then", [],
                                   [helper.make_tensor_value_info("t_out", F, [])])
        else_g = helper.make_graph([helper.make_node("ReduceMax", [a1], ["e_out"], keepdims=0)], "else", [],
                                   [helper.make_tensor_value_info("e_out", F, [])])
        sub = b.node("If", [cond], name="if", then_branch=then_g, else_branch=else_g)
    elif kind == "Loop":
        body = helper.make_graph(
            [helper.make_node("ReduceSum", [a1], ["r"], keepdims=0),
             helper.make_node("Add", ["acc_in", "r"], ["acc_out"]),
             helper.make_node("Identity", ["c_in"], ["c_out"])], "body",
            [helper.make_tensor_value_info("i", TensorProto.INT64, []),
             helper.make_tensor_value_info("c_in", TensorProto.BOOL, []),
             helper.make_tensor_value_info("acc_in", F, [])],
            [helper.make_tensor_value_info("c_out", TensorProto.BOOL, []),
             helper.make_tensor_value_info("acc_out", F, [])])
        sub = b.node("Loop", [b.ints("trip", 2), b.const("cond0", np.array(True), as_node=False),
                              b.const("acc0", np.array(0, np.float32), as_node=False)], name="loop", body=body)
    else:
        body = helper.make_graph(
            [helper.make_node("ReduceSum", [a1], ["r"], keepdims=0),
             helper.make_node("ReduceSum", ["row"], ["rs"], keepdims=0),
             helper.make_node("Add", ["s_in", "r"], ["t"]),
             helper.make_node("Add", ["t", "rs"], ["s_out"])], "body",
            [helper.make_tensor_value_info("s_in", F, []),
             helper.make_tensor_value_info("row", F, [1, 3, 8])],
            [helper.make_tensor_value_info("s_out", F, [])])
        sub = b.node("Scan", [b.const("s0", np.array(0, np.float32), as_node=False), x], name="scan", body=body,
                     num_scan_inputs=1, scan_input_axes=[3])
    return b.model(y, sub, output_shapes=[[1, 4, 8, 8], []])


@pytest.mark.parametrize("kind", ["If", "Loop", "Scan"])
def test_subgraph_reading_outer_conv_output(gp, tmp_path, kind):
    m = _control_flow_model(kind)
    onnx.checker.check_model(m, full_check=True)
    c = Case(gp, tmp_path, m)
    rep = c.succeeded(c.run())
    g1, g2 = group(rep, "c1"), group(rep, "c2")
    assert g1["channels_after"] == g1["channels_before"]
    assert any("subgraph" in why for why in g1.get("blocked", [])), g1.get("blocked")
    assert g2["channels_after"] < g2["channels_before"]
    feed = {"x": np.random.default_rng(0).standard_normal((1, 3, 8, 8)).astype(np.float32)}
    conds = [True, False] if kind == "If" else [None]
    for cond in conds:
        if cond is not None:
            feed["cond"] = np.array(cond)
        dense, pruned = run_ort(m, feed), run_ort(c.out, feed)
        np.testing.assert_allclose(pruned[1], dense[1], rtol=1e-5)  # the subgraph output is unchanged


def test_subgraph_reading_a_weight(gp, tmp_path):
    """An If branch runs a Conv with the outer c5.weight: c5's input channels (c4's group) must
    keep their width, and the pruned model must still run down both branches."""
    b = GraphBuilder(opset=17, seed=3)
    x = b.input("x", [1, 3, 8, 8])
    a1 = b.relu(b.conv(x, 3, 8, name="c1"))
    a4 = b.relu(b.conv(a1, 8, 6, name="c4"))
    y = b.conv(a4, 6, 4, name="c5")
    cond = b.input("cond", [], elem=TensorProto.BOOL)
    ones = numpy_helper.from_array(np.ones((1, 6, 8, 8), np.float32), "ones")
    then_g = helper.make_graph([helper.make_node("Constant", [], ["o"], value=ones),
                                helper.make_node("Conv", ["o", "c5.weight"], ["cv"], pads=[1, 1, 1, 1]),
                                helper.make_node("ReduceSum", ["cv"], ["t_out"], keepdims=0)], "then", [],
                               [helper.make_tensor_value_info("t_out", F, [])])
    else_g = helper.make_graph([helper.make_node("ReduceMax", [x], ["e_out"], keepdims=0)], "else", [],
                               [helper.make_tensor_value_info("e_out", F, [])])
    sub = b.node("If", [cond], name="if", then_branch=then_g, else_branch=else_g)
    m = b.model(y, sub, output_shapes=[[1, 4, 8, 8], []])
    c = Case(gp, tmp_path, m)
    rep = c.succeeded(c.run())
    assert group(rep, "c4")["channels_after"] == 6
    assert group(rep, "c1")["channels_after"] < 8
    feed = {"x": np.ones((1, 3, 8, 8), np.float32)}
    for cond in (True, False):
        feed["cond"] = np.array(cond)
        np.testing.assert_allclose(run_ort(c.out, feed)[1], run_ort(m, feed)[1], rtol=1e-5)


# ----------------------------------------------------------------------------- shapes and types


def test_symbolic_batch_and_spatial_dims(gp, tmp_path):
    b = GraphBuilder(opset=17, seed=4)
    x = b.input("x", ["N", 3, "H", "W"])
    h = b.relu(b.bn(b.conv(x, 3, 8, name="c1"), 8))
    h = b.relu(b.conv(h, 8, 8, stride=2, name="c2"))
    h = b.node("Flatten", [b.node("GlobalAveragePool", [h])], axis=1)
    y = b.gemm(h, 8, 5, name="fc")
    m = b.model(y, output_shapes=[["N", 5]])
    c = Case(gp, tmp_path, m)
    rep = c.succeeded(c.run())
    assert group(rep, "c1")["channels_after"] == 4 and group(rep, "c2")["channels_after"] == 4
    pruned = onnx.load(str(c.out))
    dims = [d.dim_param or d.dim_value for d in pruned.graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["N", 3, "H", "W"]
    xin = np.random.default_rng(1).standard_normal((2, 3, 12, 10)).astype(np.float32)
    assert run_ort(pruned, {"x": xin})[0].shape == (2, 5)


def _zero_size(kind):
    b = GraphBuilder(opset=17, seed=4)
    if kind == "batch":
        x = b.input("x", [0, 3, 8, 8])
        h = b.relu(b.conv(x, 3, 8, name="c1"))
    elif kind == "concat_empty_constant":
        x = b.input("x", [1, 3, 8, 8])
        h = b.relu(b.conv(x, 3, 8, name="c1"))
        h = b.node("Concat", [h, b.const("empty", np.zeros((1, 0, 8, 8), np.float32))], axis=1)
    else:  # spatial
        x = b.input("x", [1, 3, 0, 8])
        h = b.relu(b.conv(x, 3, 8, k=1, pad=0, name="c1"))
    y = b.conv(h, 8, 4, k=1, pad=0, name="c2")
    return b.model(y)


@pytest.mark.parametrize("kind", ["batch", "concat_empty_constant", "spatial"])
def test_zero_size_tensors(gp, tmp_path, kind):
    """Pruned correctly or a one-line refusal (exit 3), never an internal error."""
    m = _zero_size(kind)
    onnx.checker.check_model(m, full_check=True)
    c = Case(gp, tmp_path, m)
    r = c.run()
    if kind == "batch" and r.returncode == 0:
        # a zero batch gives empty outputs: the oracle has nothing to compare and says so
        assert_ok(r)
        rep = json.loads(c.report_path.read_text())
        assert "empty" in rep["verify"]["skipped"], rep["verify"]
        return
    c.refused_or_ok(r)


def _cast_model(elem, cast_weights):
    """The chain in float16 throughout, or with float16/bfloat16 weights Cast to float."""
    b = GraphBuilder(opset=17, seed=5)
    x = b.input("x", [1, 3, 8, 8], elem=F if cast_weights else elem)
    h = b.relu(b.conv(x, 3, 8, name="c1"))
    h = b.relu(b.conv(h, 8, 8, name="c2"))
    y = b.conv(h, 8, 4, name="c3")
    m = b.model(y, output_shapes=[[1, 4, 8, 8]])
    for t in m.graph.initializer:
        a = numpy_helper.to_array(t)
        if elem == TensorProto.FLOAT16:
            nt = numpy_helper.from_array(a.astype(np.float16), t.name)
        else:
            nt = helper.make_tensor(t.name, TensorProto.BFLOAT16, a.shape, a.ravel().tolist())
        if cast_weights:
            nt.name = t.name + ".lp"
        t.CopyFrom(nt)
    if cast_weights:
        casts = [helper.make_node("Cast", [t.name], [t.name[:-3]], to=F, name="cast_" + t.name)
                 for t in m.graph.initializer]
        nodes = list(m.graph.node)
        del m.graph.node[:]
        m.graph.node.extend(casts + nodes)
    else:
        m.graph.output[0].type.tensor_type.elem_type = elem
    return m


def test_float16_model(gp, tmp_path):
    """float16 input, weights and output: pruned, oracle passes, still float16."""
    m = _cast_model(TensorProto.FLOAT16, cast_weights=False)
    onnx.checker.check_model(m, full_check=True)
    c = Case(gp, tmp_path, m)
    rep = c.succeeded(c.run())
    assert group(rep, "c1")["channels_after"] == 4
    pruned = onnx.load(str(c.out))
    assert all(t.data_type == TensorProto.FLOAT16 for t in pruned.graph.initializer)


@pytest.mark.parametrize("elem", [TensorProto.FLOAT16, TensorProto.BFLOAT16], ids=["float16", "bfloat16"])
def test_low_precision_weights_cast_to_float(gp, tmp_path, elem):
    """Weights stored in float16/bfloat16 and Cast to float before the Convs: handled (oracle
    passes; today graphprune prunes nothing here) or refused in one line."""
    m = _cast_model(elem, cast_weights=True)
    onnx.checker.check_model(m, full_check=True)
    c = Case(gp, tmp_path, m)
    c.refused_or_ok(c.run())


def test_bfloat16_matmul_model(gp, tmp_path):
    """A bfloat16 MLP (valid ONNX; onnxruntime's CPU provider has no bfloat16 MatMul): pruned
    correctly or a clear one-line refusal, not an internal error."""
    BF = TensorProto.BFLOAT16
    rng = np.random.default_rng(0)

    def bft(name, a):
        return helper.make_tensor(name, BF, a.shape, a.astype(np.float32).ravel().tolist())

    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"], name="fc1"),
             helper.make_node("Relu", ["h"], ["r"], name="relu"),
             helper.make_node("MatMul", ["r", "w2"], ["y"], name="fc2")]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", BF, [1, 8])],
                          [helper.make_tensor_value_info("y", BF, [1, 4])],
                          [bft("w1", rng.standard_normal((8, 16))), bft("w2", rng.standard_normal((16, 4)))])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 10
    onnx.checker.check_model(m, full_check=True)
    c = Case(gp, tmp_path, m)
    c.refused_or_ok(c.run())


def _qdq_model(per_channel: bool):
    """int8 QDQ: QuantizeLinear/DequantizeLinear on every conv input, int8 weights through
    DequantizeLinear (per-channel axis 0, or per-tensor)."""
    b = GraphBuilder(opset=17, seed=6)
    x = b.input("x", [1, 3, 8, 8])

    def qconv(inp, cin, cout, name):
        W = b.randn(cout, cin, 3, 3, scale=0.3)
        if per_channel:
            sc = (np.abs(W).reshape(cout, -1).max(1) / 127).astype(np.float32)
            q = np.clip(np.round(W / sc[:, None, None, None]), -127, 127).astype(np.int8)
            wdq = b.node("DequantizeLinear", [b.const(f"{name}.wq", q), b.const(f"{name}.ws", sc),
                                              b.const(f"{name}.wz", np.zeros(cout, np.int8))], axis=0)
        else:
            sc = np.float32(np.abs(W).max() / 127)
            q = np.clip(np.round(W / sc), -127, 127).astype(np.int8)
            wdq = b.node("DequantizeLinear", [b.const(f"{name}.wq", q), b.const(f"{name}.ws", np.array(sc)),
                                              b.const(f"{name}.wz", np.array(0, np.int8))])
        xs, xz = b.const(f"{name}.xs", np.array(0.05, np.float32)), b.const(f"{name}.xz", np.array(0, np.int8))
        xdq = b.node("DequantizeLinear", [b.node("QuantizeLinear", [inp, xs, xz]), xs, xz])
        return b.node("Conv", [xdq, wdq, b.const(f"{name}.bias", b.randn(cout, scale=0.1))], name=name,
                      pads=[1, 1, 1, 1], kernel_shape=[3, 3])

    h = b.relu(qconv(x, 3, 8, "c1"))
    h = b.relu(qconv(h, 8, 8, "c2"))
    y = qconv(h, 8, 4, "c3")
    return b.model(y, output_shapes=[[1, 4, 8, 8]])


@pytest.mark.parametrize("per_channel", [True, False], ids=["per_channel", "per_tensor"])
def test_int8_qdq_graph(gp, tmp_path, per_channel):
    """Blocked or handled, never wrong: exit 0 and the oracle passes; whatever was pruned keeps
    the int8 weights, their scales and zero points consistent (the model runs)."""
    m = _qdq_model(per_channel)
    onnx.checker.check_model(m, full_check=True)
    c = Case(gp, tmp_path, m)
    rep = c.succeeded(c.run())
    xin = np.random.default_rng(2).standard_normal((1, 3, 8, 8)).astype(np.float32)
    assert run_ort(c.out, {"x": xin})[0].shape == (1, 4, 8, 8)
    if rep["summary"]["pruned_groups"] == 0:
        assert folder_state(c.outdir)["pruned.onnx"] == c.before["m.onnx"]  # unchanged copy


def test_opset_too_old(gp, tmp_path):
    """Opset 7 (Conv/Relu unchanged since): pruned, or refused in one line."""
    m = chain()
    m.opset_import[0].version = 7
    onnx.checker.check_model(m)
    c = Case(gp, tmp_path, m)
    c.refused_or_ok(c.run())


def test_opset_too_new(gp, tmp_path):
    """Opset 30 (beyond onnx and onnxruntime): a one-line input error (exit 3)."""
    m = chain()
    m.opset_import[0].version = 30
    c = Case(gp, tmp_path, m)
    c.failed(c.run(), 3)


# ----------------------------------------------------------------------------- output paths


def test_output_is_the_input_by_another_spelling(gp, tmp_path):
    c = Case(gp, tmp_path, chain())
    (c.indir / "sub").mkdir()
    os.symlink(c.path, c.indir / "link.onnx")
    c.before = folder_state(c.indir)
    for out in (c.indir / "sub" / ".." / "m.onnx", c.indir / "link.onnx"):
        c.failed(c.run(out=out), 2, "input")
    # the report path may not be the input either
    c.failed(c.run("--report", c.path), 2, "input")


def test_report_folder_missing_writes_no_model(gp, tmp_path):
    c = Case(gp, tmp_path, chain())
    c.failed(c.run("--report", tmp_path / "nowhere" / "r.json"), 4)


def test_output_parent_is_a_file(gp, tmp_path):
    c = Case(gp, tmp_path, chain())
    (c.outdir / "afile").write_text("x")
    r = c.run(out=c.outdir / "afile" / "o.onnx")
    assert_one_line_error(r, 4)
    assert os.listdir(c.outdir) == ["afile"]


def _chattr(flag, path) -> bool:
    exe = shutil.which("chattr")
    if exe is None:
        return False
    return subprocess.run([exe, flag, str(path)], capture_output=True).returncode == 0


def test_output_folder_read_only(gp, tmp_path):
    """A read-only (immutable) output folder: exit 4, nothing left behind. Root ignores mode
    bits, so this uses chattr +i; where chattr does not work the same refusal is checked on
    an output path whose parent is a file."""
    c = Case(gp, tmp_path, chain())
    if _chattr("+i", c.outdir):
        try:
            r = c.run()
        finally:
            _chattr("-i", c.outdir)
        c.failed(r, 4)
    else:
        (tmp_path / "plain").write_text("x")
        r = c.run(out=tmp_path / "plain" / "o.onnx")
        assert_one_line_error(r, 4)
        assert os.listdir(c.outdir) == []


def test_output_file_immutable(gp, tmp_path):
    """The target exists and cannot be replaced: exit 4, the old file intact, no temp file."""
    c = Case(gp, tmp_path, chain())
    c.out.write_bytes(b"old")
    if not _chattr("+i", c.out):
        c.out.unlink()
        c.out.mkdir()       # fallback: the target is a directory
        r = c.run()
        assert_one_line_error(r, 4)
        assert os.listdir(c.outdir) == ["pruned.onnx"]
        return
    try:
        r = c.run()
    finally:
        _chattr("-i", c.out)
    assert_one_line_error(r, 4)
    assert c.out.read_bytes() == b"old"
    assert [p for p in os.listdir(c.outdir) if p != "pruned.onnx"] == []


# ----------------------------------------------------------------------------- options


@pytest.mark.parametrize("args", [
    ["--ratio", "nan"], ["--ratio", "inf"], ["--ratio", "abc"], ["--ratio", "1.5"],
    ["--round-to", "-3"], ["--round-to", "2.5"], ["--round-to", "automatic"], ["--threads", "0"],
    ["--criterion", "L2"],
], ids=lambda a: " ".join(a))
def test_options_out_of_range(gp, tmp_path, args):
    c = Case(gp, tmp_path, chain())
    c.failed(c.run(*args), 2)


def test_analyze_options_out_of_range(gp, tmp_path):
    c = Case(gp, tmp_path, chain())
    for args in (["--ratio", "nan"], ["--ratio", "-1"], ["--round-to", "0"]):
        assert_one_line_error(c.run(*args, cmd="analyze"), 2)


def test_round_to_larger_than_every_group(gp, tmp_path):
    """Not an error: nothing can be pruned, an unchanged copy is written (exit 0)."""
    c = Case(gp, tmp_path, chain())
    r = c.run("--round-to", "1000")
    rep = c.succeeded(r)
    assert rep["summary"]["pruned_groups"] == 0
    assert folder_state(c.outdir)["pruned.onnx"] == c.before["m.onnx"]


def test_protect_with_no_match_is_a_no_op(gp, tmp_path):
    c = Case(gp, tmp_path, chain())
    rep = c.succeeded(c.run("--protect", "no_such_node*", "--protect", "nothing"))
    assert rep["summary"]["pruned_groups"] == 2
    first = folder_state(c.outdir)["pruned.onnx"]
    for p in list(c.outdir.iterdir()):
        p.unlink()
    c.succeeded(c.run())
    assert folder_state(c.outdir)["pruned.onnx"] == first
