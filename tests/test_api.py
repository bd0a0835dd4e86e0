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


# ----------------------------------------------------------------------------- options.py and the CLI

# Options fields with no command-line form (options.setting(cli=False)): a new field is either
# given a flag or added here on purpose.
PYTHON_ONLY = {"bench_repeats", "per_cost", "taylor_samples", "taylor_eps", "latency_timer", "sparse_margin",
               "sparse_sequential"}
# Fields whose command-line default differs from the Python one on purpose (options.setting(cli_default=)).
CLI_DEFAULTS_DIFFER = {"bench": None, "verify": None}
# (command, field): a command that changes a generated flag on purpose.
OVERRIDDEN = {("analyze", "ratio")}      # analyze writes a plan at ratio 0 unless --ratio is given


def _command(name):
    from graphprune.cli import cli
    return cli.commands[name]


def test_options_is_one_class_and_options_py_is_a_light_import():
    from graphprune import options, pipeline

    assert graphprune.Options is pipeline.Options is options.Options is Options
    code = ("import sys, graphprune.options, graphprune; graphprune.Options\n"
            "heavy = ('onnx', 'onnxruntime', 'torch', 'numpy', 'click')\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in heavy or m == 'graphprune.pipeline'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_every_options_field_is_on_the_command_line_or_python_only():
    from graphprune import options as o

    run = _command("run")
    params = {p.name: p for p in run.params}
    flags = {f for p in run.params for f in p.opts + p.secondary_opts}
    assert set(o.python_only()) == PYTHON_ONLY
    for name, f in o.FIELDS.items():
        cli = f.metadata["cli"]
        if cli is True:                    # generated: a flag of its own name on run
            assert name in params and params[name].opts[0] == o.cli_flag(name), name
        elif cli is False:
            assert o.cli_flag(name) not in flags and name not in params, name
        else:                              # hand-written flags in cli.py
            assert set(cli) <= flags, (name, cli)
        assert f.metadata["help"].strip(), name
    assert {n for n in o.cli_fields() if o.cli_default(n) != o.FIELDS[n].default} == set(CLI_DEFAULTS_DIFFER)
    assert all(o.cli_default(n) == v for n, v in CLI_DEFAULTS_DIFFER.items())


# the Options fields each command takes (run: every field with a generated flag)
ANALYZE_FIELDS = {"ratio", "head_ratio", "mlp_ratio", "prune_hidden", "round_to", "protect", "criterion", "seed",
                  "allow_inexact", "calib_batch", "reduce", "normalize", "scope", "target_macs", "target_params",
                  "min_ratio", "max_ratio", "keep_initializer_inputs"}


@pytest.mark.parametrize("command", ["run", "analyze", "prune", "verify"])
def test_flags_of_options_fields_are_made_from_their_definitions(command):
    """Default, flag, type or choices and help of every flag named after an Options field are those
    of its definition in options.py (no second copy in cli.py)."""
    import click

    from graphprune import options as o

    expected = {"run": set(o.cli_fields()), "analyze": ANALYZE_FIELDS, "prune": {"keep_initializer_inputs"},
                "verify": {"provider", "device"}}[command]
    seen = set()
    for p in _command(command).params:
        if p.name not in o.FIELDS or o.FIELDS[p.name].metadata["cli"] is not True:
            continue
        seen.add(p.name)
        assert p.opts == [o.cli_flag(p.name)], p.name
        if (command, p.name) in OVERRIDDEN:
            continue
        kind, values = o.cli_kind(p.name)
        assert p.default == o.cli_default(p.name), p.name
        assert p.help == o.cli_help(p.name), p.name
        assert (p.metavar or None) == o.FIELDS[p.name].metadata["metavar"], p.name
        if kind == "choice":
            assert tuple(p.type.choices) == values, p.name
        elif kind in ("int", "float"):
            assert p.type == {"int": click.INT, "float": click.FLOAT}[kind], p.name
        elif kind == "switch":
            assert p.secondary_opts == ["--no-" + p.opts[0][2:]], p.name
        assert p.is_flag == (kind in ("flag", "switch")) and p.multiple == (kind == "multiple"), p.name
    assert seen == expected


def test_choices_are_the_literal_types_of_choices_py():
    from graphprune import choices, options as o

    kinds = {n: o.cli_kind(n) for n in o.FIELDS}
    literal = {n: v for n, (k, v) in kinds.items() if k == "choice"}
    assert literal == {"reduce": choices.REDUCE, "provider": choices.PROVIDER_NAMES, "normalize": choices.NORMALIZE,
                       "scope": choices.SCOPES, "repair": choices.REPAIR, "ridge_prior": choices.RIDGE_PRIORS,
                       "latency_objective": choices.LATENCY_OBJECTIVES, "sparse_kernels": choices.SPARSE_KERNELS,
                       "sparse_criterion": choices.SPARSE_CRITERIA}


def test_help_texts_name_real_fields_and_every_criterion():
    """A field named in `backquotes` in a help text is a real field (it becomes its flag in the
    CLI's help); the criterion help lists every built-in criterion."""
    import re

    from graphprune import options as o

    for name, f in o.FIELDS.items():
        for text in (f.metadata["help"], f.metadata["none"] or ""):
            for ref in re.findall(r"`([^`]+)`", text):
                assert ref in o.FIELDS and o.cli_flags(ref), (name, ref)
        assert "`" not in o.cli_help(name) if f.metadata["cli"] is True else True
    words = set(re.findall(r"[\w-]+", o.cli_help("criterion")))
    assert set(graphprune.CRITERIA) <= words


def test_options_docstring_args_are_the_definitions():
    from graphprune import options as o

    doc = " ".join(Options.__doc__.split())
    args = doc[doc.index("Args:"):]
    pos = [args.index(f" {name}: {' '.join(o.doc_help(name).split())}") for name in o.FIELDS]
    assert pos == sorted(pos) and len(pos) == len(dataclasses.fields(Options))
    assert "head_ratio: fraction of attention heads to remove (None: ``ratio``)" in args


class _Stop(Exception):
    pass


@pytest.mark.parametrize("command", ["run", "analyze", "prune"])
def test_a_bare_command_builds_the_default_options(command, demo, tmp_path, monkeypatch):
    """`graphprune run MODEL` with no flag prunes with Options() (but for the automatic bench and
    verify of CLI_DEFAULTS_DIFFER); analyze plans at ratio 0; prune applies the plan as it is."""
    from graphprune import options as o, pipeline
    from graphprune.cli import Progress, cli

    src = tmp_path / "demo.onnx"
    onnx.save(demo, str(src))
    seen = []

    def stop(*args, **kw):
        seen.append(next(a for a in args if isinstance(a, Options)))
        raise _Stop()
    monkeypatch.setattr(pipeline, "calibration" if command == "analyze" else "prune", stop)
    args = {"run": ["run", str(src), "-q"], "analyze": ["analyze", str(src)],
            "prune": ["prune", str(src), "--plan", str(tmp_path / "plan.json"), "-q"]}[command]
    (tmp_path / "plan.json").write_text('{"groups": []}')
    try:
        with pytest.raises(_Stop):
            cli.main(args=args, prog_name="graphprune", standalone_mode=False)
    finally:
        Progress.interrupt()
    expected = {"run": dict(CLI_DEFAULTS_DIFFER), "analyze": {"ratio": 0.0}, "prune": {"ratio": 0.0}}[command]
    got = dataclasses.asdict(seen[0])
    for name in o.FIELDS:
        assert got[name] == expected.get(name, getattr(Options(), name)), name


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
