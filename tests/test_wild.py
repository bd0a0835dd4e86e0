"""Models in the wild (issue 13): each pattern that ONNX files other projects ship had, rebuilt as a
small graph (tests/wild_graphs.py), run through the command line in-process (fast tier); the
real MiniLM with its three Hugging Face inputs is in the slow tier."""

import json
import os
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import wild_graphs as wg
from graphprune import bench, io as gio
from graphprune.cli import Progress, print_summary
from helpers_graphs import run_cli_in_process
from graphprune.verify import compare


def save(tmp_path, name, m=None):
    path = str(tmp_path / f"{name}.onnx")
    onnx.save(m if m is not None else wg.ALL[name](), path)
    return path


def runs(path):
    """The written model runs in onnxruntime on valid inputs; returns its outputs."""
    m = onnx.load(path)
    s = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    return s.run(None, bench.random_inputs(m))


def report(path):
    with open(path[:-5] + ".report.json") as f:
        return json.load(f)


def run_one_group(tmp_path, name):
    """`graphprune run` with default options on wild graph ``name``: it exits 0, prunes one group, verifies,
    and the model it writes runs; returns its report."""
    path = save(tmp_path, name)
    code, _, err = run_cli_in_process("run", path)
    assert code == 0, err
    rep = report(str(tmp_path / f"{name}.pruned.onnx"))
    assert rep["verify"]["passed"] and rep["summary"]["pruned_groups"] == 1
    runs(str(tmp_path / f"{name}.pruned.onnx"))
    return rep


# ----------------------------------------------------------------------- 1. integer inputs


def test_integer_inputs_are_bounded_by_the_tables_they_index():
    m = wg.bert_like()
    assert bench.input_ranges(m) == {"input_ids": (0, 30), "token_type_ids": (0, 2)}
    for seed in range(3):
        f = bench.random_inputs(m, seed=seed, other=16)
        assert f["input_ids"].max() < 30 and f["token_type_ids"].max() <= 1
        assert np.all(f["attention_mask"] == 1)
    f = bench.random_inputs(m, ranges={"input_ids": (3, 4)})
    assert np.all(f["input_ids"] == 3)


def test_index_bounds_follow_casts_and_shifts():
    from onnx import TensorProto, helper, numpy_helper

    nodes = [helper.make_node("Cast", ["ids"], ["i64"], to=TensorProto.INT64),
             helper.make_node("Add", ["i64", "off"], ["shifted"]),
             helper.make_node("Unsqueeze", ["shifted", "ax"], ["u"]),
             helper.make_node("Gather", ["table", "u"], ["y"], name="lookup")]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("ids", TensorProto.INT32, [1, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                          [numpy_helper.from_array(np.zeros((10, 3), np.float32), "table"),
                           numpy_helper.from_array(np.array(2, np.int64), "off"),
                           numpy_helper.from_array(np.array([0], np.int64), "ax")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    assert bench.index_bounds(m) == {"ids": [(0, 8, "Gather", "lookup")]}
    assert bench.run_model(m, bench.random_inputs(m))["y"].shape == (1, 1, 4, 3)


def test_synthetic_calibration_indices_are_valid_too():
    from graphprune.calib import synthetic

    for f in synthetic(wg.bert_like()).feeds:
        assert f["token_type_ids"].max() <= 1 and f["input_ids"].max() < 30


def test_bert_like_prunes_with_default_options(tmp_path, capsys):
    rep = run_one_group(tmp_path, "bert_like")
    assert rep["macs"]["after"] < rep["macs"]["before"]


def test_out_of_range_input_names_the_input_and_node(tmp_path, capsys):
    path = save(tmp_path, "bert_like")
    code, out, err = run_cli_in_process("run", path, "--input", "token_type_ids=0:5", "--no-bench")
    assert code == 3, err
    line = [ln for ln in err.splitlines() if ln.startswith("graphprune: error")][0]
    assert "'token_type_ids'" in line and "'type_gather'" in line and "--input token_type_ids=0:2" in line
    assert not os.path.exists(tmp_path / "bert_like.pruned.onnx")
    code, _, err = run_cli_in_process("run", path, "--input", "nosuch=0:1")
    assert code == 2 and "no input 'nosuch'" in err
    code, _, err = run_cli_in_process("run", path, "--input", "input_ids=5:1")
    assert code == 2 and "HIGH must be greater" in err


def test_sample_inputs_and_calibration_feed_verify_and_bench(tmp_path, capsys):
    path = save(tmp_path, "bert_like")
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 30, (4, 6))
    arrays = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
    np.savez(tmp_path / "sample.npz", **arrays)
    code, _, err = run_cli_in_process("run", path, "--inputs", str(tmp_path / "sample.npz"), "-o", str(tmp_path / "a.onnx"))
    assert code == 0, err
    rep = report(str(tmp_path / "a.onnx"))
    assert rep["verify"]["passed"] and "free_dims" not in rep["latency_ms"]
    code, _, err = run_cli_in_process("run", path, "--calib", str(tmp_path / "sample.npz"), "--criterion", "activation",
                      "-o", str(tmp_path / "b.onnx"))
    assert code == 0, err
    # a sample that does not fit the model: exit 6 like calibration data
    np.savez(tmp_path / "bad.npz", input_ids=ids)
    code, _, err = run_cli_in_process("run", path, "--inputs", str(tmp_path / "bad.npz"), "-o", str(tmp_path / "c.onnx"))
    assert code == 6, err


# ----------------------------------------------------------------------- 2. initializer-inputs


def test_initializer_inputs_are_constants_by_default(tmp_path, capsys):
    path = save(tmp_path, "initializer_inputs")
    before = open(path, "rb").read()
    for extra in ([], ["--no-verify"]):
        out = str(tmp_path / f"out{len(extra)}.onnx")
        code, _, err = run_cli_in_process("run", path, "-o", out, *extra)
        assert code == 0, err
        assert sum("initializers are also listed as graph inputs" in ln for ln in err.splitlines()) == 1
        m = onnx.load(out)
        assert [i.name for i in m.graph.input] == ["x"] and m.ir_version >= 4
        rep = report(out)
        assert rep["summary"]["pruned_groups"] == 1
        assert 1.5 < rep["macs"]["before"] / rep["macs"]["after"] < 2.5
        assert 1.5 < rep["params"]["before"] / rep["params"]["after"] < 2.5
        runs(out)
    assert open(path, "rb").read() == before


def test_keep_initializer_inputs_blocks_them(tmp_path, capsys):
    path = save(tmp_path, "initializer_inputs")
    code, out, err = run_cli_in_process("run", path, "--keep-initializer-inputs")
    assert code == 0, err
    assert "nothing was pruned: every group is blocked" in err and "also a graph input" in err
    m = onnx.load(str(tmp_path / "initializer_inputs.pruned.onnx"))
    assert len(m.graph.input) == 5
    runs(str(tmp_path / "initializer_inputs.pruned.onnx"))
    code, out, err = run_cli_in_process("analyze", path)
    assert code == 0 and "2 groups, 1 prunable" in out


def test_an_output_that_does_not_run_is_never_written(tmp_path, capsys, monkeypatch):
    from graphprune import pipeline

    real = pipeline.rewrite

    def broken(*a, **k):        # a rewrite bug: the pruned model demands an input nobody feeds
        m = real(*a, **k)
        m.graph.input.append(onnx.helper.make_tensor_value_info("stray", onnx.TensorProto.FLOAT, [1]))
        return m

    monkeypatch.setattr(pipeline, "rewrite", broken)
    path = save(tmp_path, "unsorted")
    code, _, err = run_cli_in_process("run", path, "--no-verify", "--no-bench")
    assert code == 1 and "internal error" in err and "stray" in err
    assert not os.path.exists(tmp_path / "unsorted.pruned.onnx")

    def dead(*a, **k):          # ... or one onnxruntime cannot run
        m = real(*a, **k)
        for t in m.graph.initializer:
            if t.name == "conv2.w":
                t.CopyFrom(onnx.numpy_helper.from_array(np.zeros((8, 3, 3, 3), np.float32), "conv2.w"))
        return m

    monkeypatch.setattr(pipeline, "rewrite", dead)
    code, _, err = run_cli_in_process("run", path, "--no-verify", "--no-bench")
    assert code == 1 and "does not run" in err, err
    assert not os.path.exists(tmp_path / "unsorted.pruned.onnx")


# ----------------------------------------------------------------------- 3. unsorted graphs


def test_unsorted_graph_is_sorted_on_load(tmp_path, capsys):
    path = save(tmp_path, "unsorted")
    notes = []
    m = gio.load_model(path, notes=notes)
    assert [n.name for n in m.graph.node] == ["conv1", "relu1", "conv2"] and len(notes) == 1
    code, _, err = run_cli_in_process("run", path)
    assert code == 0, err
    assert "not in topological order: sorted" in err
    assert report(str(tmp_path / "unsorted.pruned.onnx"))["verify"]["passed"]
    runs(str(tmp_path / "unsorted.pruned.onnx"))


def test_a_cycle_is_refused_in_one_whole_sentence(tmp_path, capsys):
    m = wg.unsorted()
    next(n for n in m.graph.node if n.name == "conv1").input[0] = "y"      # conv1 <- conv2 <- relu1 <- conv1
    path = save(tmp_path, "cycle", m)
    code, _, err = run_cli_in_process("run", path)
    assert code == 3
    line = [ln for ln in err.splitlines() if ln.startswith("graphprune: error")][0]
    assert line.endswith("is not output of any previous nodes."), line


def test_sort_keeps_subgraph_readers_after_their_producers():
    m = wg.kws_layernorm()
    nodes = list(m.graph.node)
    if_node = nodes.pop()           # the If reads 'logits' only inside its branches
    del m.graph.node[:]
    m.graph.node.extend([if_node] + nodes)
    assert gio.sort_nodes(m.graph)
    assert m.graph.node[-1].op_type == "If"
    onnx.checker.check_model(m)
    assert not gio.sort_nodes(m.graph)


# ----------------------------------------------------------------------- 4. non-tensor outputs


def test_sequence_of_maps_outputs_verify(tmp_path, capsys):
    run_one_group(tmp_path, "zipmap_classifier")


def test_compare_non_tensor_outputs():
    a = {"p": [{0: 0.25, 1: 0.75}], "s": ["x"]}
    assert compare(a, {"p": [{0: 0.25, 1: 0.75}], "s": ["x"]})["max_abs_diff"] == 0
    assert compare(a, {"p": [{0: 0.5, 1: 0.5}], "s": ["x"]})["max_abs_diff"] == 0.25
    assert compare(a, {"p": [{0: 0.25, 1: 0.75}], "s": ["y"]})["mismatch"] == "s"


# ----------------------------------------------------------------------- 5. honest reasons


def test_inexact_groups_are_the_reason_not_the_if(tmp_path, capsys):
    path = save(tmp_path, "kws_layernorm")
    code, out, err = run_cli_in_process("analyze", path)
    assert code == 0
    assert "3 groups, 0 prunable (2 more with --allow-inexact)" in out
    assert "--allow-inexact" in out.splitlines()[-1] and "control flow" not in out
    code, _, err = run_cli_in_process("run", path)
    assert code == 0 and "--allow-inexact" in err and "control flow" not in err
    rep = report(str(tmp_path / "kws_layernorm.pruned.onnx"))
    assert rep["summary"]["prunable_groups"] == 0 and rep["summary"]["inexact_groups"] == 2


def test_allow_inexact_verifies_the_exact_part_and_reports_agreement(tmp_path, capsys):
    path = save(tmp_path, "kws_layernorm")
    code, out, err = run_cli_in_process("run", path, "--allow-inexact")
    assert code == 0, err
    v = report(str(tmp_path / "kws_layernorm.pruned.onnx"))["verify"]
    assert v["passed"] and v["inexact_groups"] == [0, 1]
    assert 0 < v["inexact_agreement"]["cosine"] <= 1
    assert "inexact groups: cosine" in out
    runs(str(tmp_path / "kws_layernorm.pruned.onnx"))


# ----------------------------------------------------------------------- 6. fast rejections, progress


def test_quantized_model_is_said_before_any_analysis(tmp_path, capsys, monkeypatch):
    from graphprune import pipeline

    def never(*a, **k):
        raise AssertionError("analysed a quantized model")

    monkeypatch.setattr(pipeline, "Analyzed", never)
    path = save(tmp_path, "quantized")
    code, out, err = run_cli_in_process("analyze", path)
    assert code == 0 and "why: the model is quantized" in out
    code, out, err = run_cli_in_process("run", path)
    assert code == 0 and "nothing was pruned: the model is quantized" in err
    rep = report(str(tmp_path / "quantized.pruned.onnx"))
    assert rep["latency_ms"] == {"skipped": "the model is unchanged"}
    assert open(str(tmp_path / "quantized.pruned.onnx"), "rb").read() == open(path, "rb").read()


def test_benchmark_is_bounded_by_time():
    m = wg.unsorted()
    gio.sort_nodes(m.graph)
    f = bench.random_inputs(m)
    assert bench.measure_latency(m, m, f, repeats=50, max_seconds=0.0)["pairs"] == 3
    assert bench.measure_latency(m, m, f, repeats=4)["pairs"] == 4


def test_warning_inside_a_progress_step_gets_its_own_line(capsys):
    p = Progress(False)
    p("count")
    warnings.warn("shape inference failed")
    p.close()
    err = capsys.readouterr().err.splitlines()
    assert err[0] == "  count    ..." and err[1] == "warning: shape inference failed"
    assert err[2].startswith("  count    ...") and err[2].endswith("s")


def test_free_dim_the_weights_fix_is_found_before_guessing(tmp_path, capsys):
    m = wg.fixed_length()
    assert bench.free_sizes(m)[:2] == [8, 32]
    path = save(tmp_path, "fixed_length")
    code, _, err = run_cli_in_process("run", path, "--no-bench")
    assert code == 0, err
    assert "unknown dims count as 1" not in err
    rep = report(str(tmp_path / "fixed_length.pruned.onnx"))
    assert rep["verify"]["passed"] and rep["macs"]["free_dims"] == 32
    assert rep["macs"]["before"] == 32 * 16 * 32 * 2          # fc1 + fc2 at time 32, batch 1


def test_constant_of_shape_weights_count_as_params():
    from onnx import TensorProto, helper, numpy_helper

    g = helper.make_graph(
        [helper.make_node("ConstantOfShape", ["w_shape"], ["w"],
                          value=numpy_helper.from_array(np.array([0.1], np.float32))),
         helper.make_node("Conv", ["x", "w"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(np.array([8, 3, 3, 3], np.int64), "w_shape")])
    m = onnx.helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    assert bench.count_macs_params(m)[1] == 8 * 3 * 3 * 3


def test_long_steps_show_they_are_alive(capsys, monkeypatch):
    import time

    monkeypatch.setattr(Progress, "TICK", 0.05)
    p = Progress(False)
    p("bench")
    time.sleep(0.3)
    p.close()
    line = capsys.readouterr().err.splitlines()[0]
    assert line.startswith("  bench    ....") and line.endswith("s")


def test_zero_params_row_is_not_a_ratio(capsys):
    print_summary({"macs": {"before": 0, "after": 0}, "params": {"before": 0, "after": 0},
                   "summary": {"pruned_groups": 0, "prunable_groups": 0, "groups": 0}})
    out = capsys.readouterr().out
    assert "0.00x" not in out and "params" in out


def test_analyze_help_has_one_ratio_default(capsys):
    code, out, _ = run_cli_in_process("analyze", "--help")
    text = " ".join(out.split())
    i = text.index("--ratio FLOAT")
    assert "default: 0, every channel kept" in text[i:i + 200] and "[default: 0.5]" not in text[i:i + 200]


# ----------------------------------------------------------------------- the real MiniLM, three inputs


@pytest.mark.slow
def test_minilm_with_token_type_ids_runs_with_default_options(tmp_path, capsys):
    from refmodels import minilm

    path = minilm.export(str(tmp_path / "minilm3.onnx"), "legacy", token_type_ids=True)
    assert [i.name for i in onnx.load(path).graph.input] == ["input_ids", "attention_mask", "token_type_ids"]
    code, _, err = run_cli_in_process("run", path, "--bench-seconds", "2")
    assert code == 0, err
    rep = report(str(tmp_path / "minilm3.pruned.onnx"))
    assert rep["verify"]["passed"] and rep["summary"]["pruned_groups"] >= 12
    assert rep["macs"]["before"] / rep["macs"]["after"] > 1.8      # no "unknown dims count as 1"


@pytest.mark.slow
@pytest.mark.parametrize("name", ["light_squeezenet", "light_resnet50"])
def test_onnx_light_models_ir3_initializer_inputs(tmp_path, capsys, name):
    """onnx's own IR-3 backend test models (installed with onnx): every weight is also a graph
    input. Before: exit 3 ('cannot run the input model'), and with --no-verify a model that
    demanded hundreds of inputs, MACs 3993x. Now: pruned, verified, the output runs."""
    src = os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data", "light", f"{name}.onnx")
    path = str(tmp_path / f"{name}.onnx")
    with open(src, "rb") as f, open(path, "wb") as g:
        g.write(f.read())
    for extra in ([], ["--no-verify"]):
        out = str(tmp_path / f"out{len(extra)}.onnx")
        code, _, err = run_cli_in_process("run", path, "-o", out, "--bench-seconds", "1", *extra)
        assert code == 0, err
        rep = report(out)
        assert 2.5 < rep["macs"]["before"] / rep["macs"]["after"] < 5
        assert 1.5 < rep["params"]["before"] / rep["params"]["after"] < 10
        src_m = onnx.load(path)
        inits = {t.name for t in src_m.graph.initializer}
        assert [i.name for i in onnx.load(out).graph.input] == [i.name for i in src_m.graph.input
                                                                 if i.name not in inits]
        runs(out)
    assert "verify" not in rep          # the --no-verify run; the first one verified:
    assert report(str(tmp_path / "out0.onnx"))["verify"]["passed"]


@pytest.mark.slow
def test_wild_tool_tabulates_a_folder(tmp_path):
    import subprocess
    import sys

    for name in ("unsorted", "kws_layernorm"):
        save(tmp_path, name)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    r = subprocess.run([sys.executable, os.path.join(root, "tools", "wild.py"), str(tmp_path), "--json",
                        str(tmp_path / "rows.json"), "--", "--no-bench"], capture_output=True, text=True,
                       timeout=600, cwd=root)
    assert r.returncode == 0, r.stderr
    rows = {os.path.basename(x["model"]): x for x in json.load(open(tmp_path / "rows.json"))}
    assert rows["unsorted.onnx"]["groups"] == "1/1/2" and rows["unsorted.onnx"]["verify"] == "passed"
    assert "topological" in rows["unsorted.onnx"]["notes"][0]
    assert "--allow-inexact" in rows["kws_layernorm.onnx"]["reason"]
    assert "| unsorted.onnx | 0 | 1/1/2 | 2.0x |" in r.stdout
    assert not any(p.endswith(".pruned.onnx") for p in os.listdir(tmp_path))
