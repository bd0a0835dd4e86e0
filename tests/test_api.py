"""The public API: graphprune.prune / analyze / load / save, typed reports, criteria, options."""

import dataclasses
import json
import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import graphprune
from graphprune.demo import build_demo_model
from graphprune.errors import InputError, UsageError
from graphprune.pipeline import Options, prune as pipeline_prune
from graphprune.report import AnalysisReport, Report


@pytest.fixture(scope="module")
def demo():
    return build_demo_model()


def _no_timings(d):
    d = dict(d)
    d.pop("timings_s", None)
    return d


def test_prune_returns_a_typed_report_with_the_pipeline_json(demo, tmp_path):
    res = graphprune.prune(demo, ratio=0.5, bench=False)
    assert isinstance(res.report, Report)
    assert res.report.verify.passed and res.report.pruned
    assert res.report.macs.before > res.report.macs.after > 0
    assert res.report.groups[0].channels_after < res.report.groups[0].channels_before
    raw = pipeline_prune(demo, Options(ratio=0.5, bench=False)).report
    assert json.dumps(_no_timings(res.report.to_json())) == json.dumps(_no_timings(raw))
    # a path works the same, and PruneResult.save writes the model and the report
    src = tmp_path / "demo.onnx"
    graphprune.save(demo, src)
    res2 = graphprune.prune(str(src), ratio=0.5, bench=False)
    res2.save(tmp_path / "out.onnx", tmp_path / "out.json")
    back = graphprune.load(tmp_path / "out.onnx")
    assert [t.dims for t in back.graph.initializer] == [t.dims for t in res2.model.graph.initializer]
    rep = json.loads((tmp_path / "out.json").read_text())
    assert Report.from_json(rep).to_json() == rep
    assert rep["summary"]["pruned_groups"] == res.report.summary.pruned_groups


def test_report_keeps_unknown_keys_in_place():
    d = {"groups": [], "summary": {"groups": 0, "prunable_groups": 0, "pruned_groups": 0, "options": {},
                                   "target": {"what": "macs"}},
         "verify": {"skipped": "too big"}, "macs": {"before": 4, "after": 2}, "new_key": [1, 2],
         "params": {"before": 1, "after": 1}, "repair": {"repaired": ["a"]}, "timings_s": {"x": 1.0}}
    r = Report.from_json(d)
    assert r.verify.skipped == "too big" and r.verify.passed is None
    assert r.summary.extra == {"target": {"what": "macs"}} and r.extra == {"new_key": [1, 2]}
    assert r.macs.ratio == 2.0
    out = r.to_json()
    assert out == d and list(out) == list(d)


def test_custom_criterion_protocol(demo):
    """Any callable (group, graph, **kw) -> scores is a criterion; its name goes in the report."""
    seen = []

    def inverse_l2(group, graph, **kw):
        seen.append(group.id)
        return -graphprune.CRITERIA["l2"](group, graph, **kw)

    assert isinstance(inverse_l2, graphprune.Criterion)
    res = graphprune.prune(demo, ratio=0.5, bench=False, criterion=inverse_l2)
    base = graphprune.prune(demo, ratio=0.5, bench=False)
    assert seen and res.report.verify.passed
    assert res.report.summary.options["criterion"] == "inverse_l2"
    kept = {g.id: g.members[0]["kept"] for g in res.report.groups}
    kept0 = {g.id: g.members[0]["kept"] for g in base.report.groups}
    assert kept != kept0          # the opposite ranking keeps other channels


def test_options_are_keyword_only_and_checked(demo):
    with pytest.raises(TypeError):
        Options(0.5)                                   # noqa
    with pytest.raises(UsageError, match="bad option"):
        graphprune.prune(demo, ratoi=0.5)
    with pytest.raises(UsageError, match="--scope"):
        graphprune.prune(demo, scope="everywhere")
    with pytest.raises(UsageError, match="not both"):
        graphprune.prune(demo, Options(ratio=0.5), ratio=0.3)
    with pytest.raises(InputError):
        graphprune.load("/nonexistent/model.onnx")


def test_cli_choices_and_defaults_are_the_options_ones():
    """The CLI's choice lists are graphprune.choices' (the Options fields' Literal types); its
    defaults must equal the Options defaults."""
    import typing

    from graphprune import choices
    from graphprune.cli import run

    fields = {f.name: f for f in dataclasses.fields(Options)}
    checked = 0
    for p in run.params:
        f = fields.get(p.name)
        if f is None or f.default is dataclasses.MISSING or getattr(p, "is_flag", False) \
                or p.name in ("bench", "verify", "round_to", "protect"):
            continue
        assert p.default == f.default, p.name
        checked += 1
        if isinstance(f.type, str) and hasattr(choices, f.type):       # a Literal alias
            assert tuple(p.type.choices) == typing.get_args(getattr(choices, f.type)), p.name
            checked += 1
    assert checked >= 20


def _quantized():
    s = numpy_helper.from_array(np.array(0.1, np.float32), "s")
    z = numpy_helper.from_array(np.array(0, np.uint8), "z")
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"]),
             helper.make_node("DequantizeLinear", ["q", "s", "z"], ["d"]),
             helper.make_node("Relu", ["d"], ["y"])]
    g = helper.make_graph(nodes, "q", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])], [s, z])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def test_analyze_says_which_groups_prune_and_why_not(demo):
    info = graphprune.analyze(demo)
    assert isinstance(info, AnalysisReport)
    assert info.prunable == sum(g.state in ("prunable", "partial") for g in info.groups) > 0
    assert info.inexact_only == sum(g.state == "inexact" for g in info.groups)
    assert all(g.reasons for g in info.groups if g.state == "blocked")
    assert info.why is None and AnalysisReport.from_json(info.to_json()) == info
    q = graphprune.analyze(_quantized())
    assert q.prunable == 0 and "quantized" in q.why


def test_old_import_paths_and_a_cheap_package_import():
    from graphprune.analyze import analyze, consumer_inputs, groups  # noqa: F401
    from graphprune.pipeline import Options, prune  # noqa: F401
    code = "import sys, graphprune; graphprune.__version__; print('onnxruntime' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_the_library_leaves_the_allocator_alone_and_the_cli_may_trim_it():
    """A library must not change its host's allocator: the Python API never calls lean_heap by
    itself; the command line allows it (memory.allow_lean_heap) before the steps run."""
    code = ("import graphprune, graphprune.memory as m\n"
            "from graphprune.demo import build_demo_model\n"
            "graphprune.prune(build_demo_model(), ratio=0.5, bench=False, verify=False)\n"
            "a = m.lean_heap_active(); m.allow_lean_heap(); m.maybe_lean_heap(); print(a, m.lean_heap_active())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "True"]
