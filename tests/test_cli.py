"""The command line as a user meets it: the demo, analyze -> edit plan -> prune -> verify,
determinism, and bad input (one line on stderr, documented exit code, no traceback, input
untouched, no partial output).

Each test takes the ``gp`` fixture (conftest.py): it runs in-process in the default tier and as a
real ``python -m graphprune`` subprocess in the slow tier; tests/test_cli_process.py keeps a few
real-process checks in the default tier."""

import hashlib
import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from graphprune.demo import build_demo_model
from helpers_graphs import assert_one_line_error


def sha(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


@pytest.fixture()
def demo(tmp_path):
    path = tmp_path / "demo.onnx"
    onnx.save(build_demo_model(seed=0), str(path))
    return path


def test_demo_run_without_model(gp, tmp_path):
    r = gp("run", "--no-bench", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "graphprune-demo.pruned.onnx").exists()
    rep = json.loads((tmp_path / "graphprune-demo.pruned.report.json").read_text())
    assert rep["verify"]["passed"]
    assert rep["macs"]["after"] < rep["macs"]["before"]
    assert "MACs" in r.stdout and "verify" in r.stdout


def test_run_report_fields_and_table(gp, demo, tmp_path):
    out = tmp_path / "o.onnx"
    r = gp("run", str(demo), "-o", str(out), "--ratio", "0.3", "--round-to", "4")
    assert r.returncode == 0, r.stderr
    rep = json.loads((tmp_path / "o.report.json").read_text())
    for key in ("groups", "macs", "params", "latency_ms", "verify"):
        assert key in rep
    for g in rep["groups"]:
        assert {"id", "channels_before", "channels_after", "exact", "members"} <= set(g)
        for m in g["members"]:
            assert {"tensor", "axis", "role"} <= set(m)
        if g["channels_after"] != g["channels_before"]:
            assert g["channels_after"] % 4 == 0
    assert "latency" in r.stdout
    onnx.checker.check_model(onnx.load(str(out)), full_check=True)


def test_default_output_paths(gp, demo):
    r = gp("run", str(demo), "--no-bench")
    assert r.returncode == 0, r.stderr
    assert demo.with_name("demo.pruned.onnx").exists()
    assert demo.with_name("demo.pruned.report.json").exists()


def test_deterministic_output(gp, demo, tmp_path):
    outs = []
    for k in range(2):
        out = tmp_path / f"o{k}.onnx"
        r = gp("run", str(demo), "-o", str(out), "--seed", "3")
        assert r.returncode == 0, r.stderr
        rep = json.loads((tmp_path / f"o{k}.report.json").read_text())
        rep.pop("latency_ms")
        rep.pop("timings_s")
        outs.append((sha(out), json.dumps(rep, sort_keys=True)))
    assert outs[0] == outs[1]


def test_analyze_edit_prune_verify(gp, demo, tmp_path):
    plan = tmp_path / "plan.json"
    r = gp("analyze", str(demo), "--plan", str(plan))
    assert r.returncode == 0, r.stderr
    assert "blocked" in r.stdout and "graph output" in r.stdout
    pj = json.loads(plan.read_text())
    g = next(g for g in pj["groups"] if g["name"] == "block1.conv1")
    for m in g["members"]:
        if m["role"] != "shape":
            m["kept"] = [k for k in m["kept"] if k not in (0, 5)]
    plan.write_text(json.dumps(pj))
    out = tmp_path / "edited.onnx"
    r = gp("prune", str(demo), "--plan", str(plan), "-o", str(out), "--no-bench")
    assert r.returncode == 0, r.stderr
    rep = tmp_path / "edited.report.json"
    got = json.loads(rep.read_text())
    g2 = next(g for g in got["groups"] if g["name"] == "block1.conv1")
    assert g2["channels_after"] == g2["channels_before"] - 2
    r = gp("verify", str(demo), str(out), "--plan", str(rep))
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["verify"]["passed"]
    # the same pruned model against a different plan fails verification
    other = tmp_path / "other.onnx"
    assert gp("run", str(demo), "-o", str(other), "--no-bench").returncode == 0
    r = gp("verify", str(demo), str(other), "--plan", str(rep))
    assert_one_line_error(r, 5)


def test_inconsistent_plan_is_refused(gp, demo, tmp_path):
    plan = tmp_path / "plan.json"
    assert gp("analyze", str(demo), "--plan", str(plan)).returncode == 0
    pj = json.loads(plan.read_text())
    g = next(g for g in pj["groups"] if g["name"] == "block1.conv1")
    m = next(m for m in g["members"] if m["role"] == "out")
    m["kept"] = m["kept"][1:]  # removed in one member only
    plan.write_text(json.dumps(pj))
    r = gp("prune", str(demo), "--plan", str(plan), "-o", str(tmp_path / "x.onnx"))
    assert_one_line_error(r, 2)
    assert not (tmp_path / "x.onnx").exists()


def _bad_cases(tmp_path, demo):
    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    rnd = tmp_path / "random.onnx"
    rnd.write_bytes(np.random.default_rng(0).bytes(4096))
    trunc = tmp_path / "trunc.onnx"
    trunc.write_bytes(demo.read_bytes()[:1500])
    return {
        "missing": ([str(tmp_path / "nope.onnx")], 3),
        "empty": ([str(empty)], 3),
        "random bytes": ([str(rnd)], 3),
        "truncated": ([str(trunc)], 3),
        "ratio 1": ([str(demo), "--ratio", "1.0"], 2),
        "ratio negative": ([str(demo), "--ratio", "-0.1"], 2),
        "round-to 0": ([str(demo), "--round-to", "0"], 2),
        "bad criterion": ([str(demo), "--criterion", "magic"], 2),
        "output folder missing": ([str(demo), "-o", str(tmp_path / "no" / "x.onnx")], 4),
        "output is a directory": ([str(demo), "-o", str(tmp_path)], 4),
        "output is the input": ([str(demo), "-o", str(demo)], 2),
    }


def test_bad_input_one_line_errors(gp, tmp_path, demo):
    cases = _bad_cases(tmp_path, demo)
    before = {p: sha(p) for p in tmp_path.iterdir() if p.is_file()}
    for name, (args, code) in cases.items():
        r = gp("run", *args)
        assert_one_line_error(r, code)
    after = {p: sha(p) for p in tmp_path.iterdir() if p.is_file()}
    assert before == after  # inputs untouched, nothing partial left behind


def test_bad_plan_file(gp, demo, tmp_path):
    bad = tmp_path / "plan.json"
    bad.write_text("{not json")
    r = gp("prune", str(demo), "--plan", str(bad), "-o", str(tmp_path / "o.onnx"))
    assert_one_line_error(r, 3)
    bad.write_text(json.dumps({"groups": [{"id": 999, "members": []}]}))
    r = gp("prune", str(demo), "--plan", str(bad), "-o", str(tmp_path / "o.onnx"))
    assert_one_line_error(r, 2)
    assert not (tmp_path / "o.onnx").exists()


def _conv_model(custom=False):
    rng = np.random.default_rng(0)
    w1 = numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32), "w1")
    w2 = numpy_helper.from_array(rng.standard_normal((4, 8, 1, 1)).astype(np.float32), "w2")
    nodes = [helper.make_node("Conv", ["x", "w1"], ["a"], pads=[1, 1, 1, 1], name="conv1")]
    if custom:
        nodes.append(helper.make_node("MyOp", ["a"], ["b"], domain="custom.domain", name="my"))
    else:
        nodes.append(helper.make_node("Relu", ["a"], ["b"], name="relu"))
    nodes.append(helper.make_node("Conv", ["b", "w2"], ["y"], name="conv2"))
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])], [w1, w2])
    opsets = [helper.make_opsetid("", 17)] + ([helper.make_opsetid("custom.domain", 1)] if custom else [])
    m = helper.make_model(g, opset_imports=opsets)
    m.ir_version = 8
    return m


def test_unknown_op_is_blocked_not_an_error(gp, tmp_path):
    path = tmp_path / "custom.onnx"
    onnx.save(_conv_model(custom=True), str(path))
    r = gp("analyze", str(path))
    assert r.returncode == 0, r.stderr
    assert "unknown op custom.domain::MyOp" in r.stdout
    assert "0 prunable" in r.stdout


def test_nothing_prunable_writes_unchanged_copy(gp, tmp_path):
    path = tmp_path / "single.onnx"
    m = _conv_model()
    # a conv whose output is the graph output: nothing to prune but conv1's output
    m.graph.output.append(helper.make_tensor_value_info("b", TensorProto.FLOAT, [1, 8, 8, 8]))
    onnx.save(m, str(path))
    out = tmp_path / "out.onnx"
    r = gp("run", str(path), "-o", str(out), "--no-bench")
    assert r.returncode == 0, r.stderr
    assert "nothing was pruned" in r.stderr
    assert sha(out) == sha(path)


def test_external_data_model(gp, tmp_path, demo):
    ext = tmp_path / "ext"
    ext.mkdir()
    m = onnx.load(str(demo))
    onnx.save(m, str(ext / "m.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
              location="m.onnx.data", size_threshold=0)
    before = {p.name: sha(p) for p in ext.iterdir()}
    r = gp("run", str(ext / "m.onnx"), "-o", str(tmp_path / "out.onnx"), "--no-bench")
    assert r.returncode == 0, r.stderr
    assert {p.name: sha(p) for p in ext.iterdir()} == before
    (ext / "m.onnx.data").write_bytes(b"short")
    r = gp("run", str(ext / "m.onnx"), "-o", str(tmp_path / "out2.onnx"))
    assert_one_line_error(r, 3)
    assert not (tmp_path / "out2.onnx").exists()


def test_round_to_auto_uses_this_machines_simd_block(gp, tmp_path, demo):
    """--round-to auto resolves to bench.simd_block() (16 with AVX-512, 8 with AVX2): the run
    line says so, the report records the number and every pruned group keeps a multiple of it
    (or all of its channels)."""
    from graphprune import bench
    from graphprune.pipeline import Options

    block = bench.simd_block()
    assert block in (4, 8, 16)
    assert Options(round_to="auto").rounding() == block
    out = tmp_path / "auto.onnx"
    r = gp("run", str(demo), "-o", str(out), "--ratio", "0.5", "--round-to", "auto")
    assert r.returncode == 0, r.stderr
    assert f"round-to auto = {block}" in r.stderr
    rep = json.loads((tmp_path / "auto.report.json").read_text())
    assert rep["summary"]["options"]["round_to"] == block
    pruned = [g for g in rep["groups"] if g["channels_after"] < g["channels_before"]]
    assert pruned
    for g in pruned:
        assert g["channels_after"] % block == 0, g


def _qdq_conv_model():
    """x -> Q -> DQ -> Conv(DequantizeLinear(int8 W, per-channel scale)) -> Relu -> same -> y."""
    rng = np.random.default_rng(5)
    inits = [numpy_helper.from_array(np.array(0.05, np.float32), "xs"),
             numpy_helper.from_array(np.array(128, np.uint8), "xz")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "xs", "xz"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "xs", "xz"], ["xd"])]
    h, cin = "xd", 3
    for i, cout in enumerate((8, 4)):
        inits += [numpy_helper.from_array(rng.integers(-100, 100, (cout, cin, 3, 3)).astype(np.int8), f"w{i}q"),
                  numpy_helper.from_array((rng.random(cout) * 0.01 + 0.001).astype(np.float32), f"w{i}s")]
        nodes += [helper.make_node("DequantizeLinear", [f"w{i}q", f"w{i}s"], [f"w{i}"], axis=0),
                  helper.make_node("Conv", [h, f"w{i}"], [f"c{i}"], pads=[1, 1, 1, 1]),
                  helper.make_node("Relu", [f"c{i}"], [f"r{i}"])]
        h, cin = f"r{i}", cout
    g = helper.make_graph(nodes, "qdq", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                          [helper.make_tensor_value_info(h, TensorProto.FLOAT, [1, 4, 8, 8])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


def test_quantized_model_is_left_whole_and_says_why(gp, tmp_path):
    path = tmp_path / "qdq.onnx"
    onnx.save(_qdq_conv_model(), str(path))
    r = gp("analyze", str(path))
    assert r.returncode == 0, r.stderr
    assert "why: the model is quantized (3 DequantizeLinear, 1 QuantizeLinear)" in r.stdout, r.stdout
    assert "prune the float model, then quantize it" in r.stdout
    out = tmp_path / "qdq.pruned.onnx"
    r = gp("run", str(path), "-o", str(out), "--no-bench")
    assert r.returncode == 0, r.stderr
    assert "nothing was pruned: the model is quantized" in r.stderr
    w = next(t for t in onnx.load(str(out)).graph.initializer if t.name == "w0q")
    assert w.data_type == TensorProto.INT8 and list(w.dims) == [8, 3, 3, 3]         # unchanged, still int8


def test_layers_inside_control_flow_say_why(gp, tmp_path):
    rng = np.random.default_rng(6)
    branch = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["b"], pads=[1, 1, 1, 1])], "branch", [],
        [helper.make_tensor_value_info("b", TensorProto.FLOAT, [1, 4, 8, 8])])
    g = helper.make_graph(
        [helper.make_node("If", ["cond"], ["y"], then_branch=branch, else_branch=branch)], "flow",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8]),
         helper.make_tensor_value_info("cond", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])],
        [numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "w")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    path = tmp_path / "flow.onnx"
    onnx.save(m, str(path))
    r = gp("analyze", str(path))
    assert r.returncode == 0, r.stderr
    assert "why: its layers run inside control flow (1 If)" in r.stdout, r.stdout
