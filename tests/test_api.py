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

from graphprune import options as optdefs  # noqa: E402

FT, SW = optdefs.FinetuneOptions, optdefs.SweepConfig
# Fields with no command-line form (options.setting(cli=False)), per settings class: a new field is
# either given a flag or added here on purpose.
PYTHON_ONLY = {Options: {"bench_repeats", "per_cost", "taylor_samples", "taylor_eps", "latency_timer",
                         "sparse_margin", "sparse_sequential"},
               FT: {"max_match", "weight_decay", "clock", "extra_loss"},
               SW: set()}
# Fields whose command-line default differs from the Python one on purpose (options.setting(cli_default=)).
CLI_DEFAULTS_DIFFER = {Options: {"bench": None, "verify": None}, FT: {}, SW: {}}
# (command, field): a command that changes a generated flag on purpose.
OVERRIDDEN = {("analyze", "ratio")}      # analyze writes a plan at ratio 0 unless --ratio is given
# The command that has every field of a settings class with a command-line form.
HOME = {Options: "run", FT: "finetune", SW: "sensitivity"}


def _command(name):
    from graphprune.cli import cli
    return cli.commands[name]


def _flags(command):
    """Every flag of a command, and its arguments by name (MODEL)."""
    return {f for p in _command(command).params
            for f in (p.opts + p.secondary_opts if p.param_type_name == "option" else [p.human_readable_name])}


def test_settings_are_one_class_each_and_options_py_is_a_light_import():
    from graphprune import finetune, options, pipeline, sensitivity

    assert graphprune.Options is pipeline.Options is options.Options is Options
    assert finetune.FinetuneOptions is options.FinetuneOptions and sensitivity.SweepConfig is options.SweepConfig
    code = ("import sys, graphprune.options, graphprune; graphprune.Options\n"
            "from graphprune.options import FinetuneOptions, SweepConfig\n"
            "FinetuneOptions().check(); SweepConfig(model='m.onnx')\n"
            "heavy = ('onnx', 'onnxruntime', 'torch', 'numpy', 'click')\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in heavy or m == 'graphprune.pipeline'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("cls", [Options, FT, SW], ids=lambda c: c.__name__)
def test_every_field_is_on_the_command_line_or_python_only(cls):
    o = optdefs
    command = HOME[cls]
    params = {p.name: p for p in _command(command).params}
    flags = _flags(command)
    assert set(o.python_only(cls)) == PYTHON_ONLY[cls]
    for name, f in o.fields(cls).items():
        cli = f.metadata["cli"]
        if cli is True or isinstance(cli, str):     # generated: a flag of the field's name (or its own) on the command
            assert name in params and params[name].opts[0] == o.cli_flag(name, cls), name
        elif cli is False:
            assert o.cli_flag(name, cls) not in flags and name not in params, name
        else:                                       # hand-written flags (or the argument) in cli.py
            assert set(cli) <= flags, (name, cli)
        assert f.metadata["help"].strip(), name
    differ = {n for n in o.cli_fields(cls) if o.cli_default(n, cls) != o.fields(cls)[n].default}
    assert differ == set(CLI_DEFAULTS_DIFFER[cls])
    assert all(o.cli_default(n, cls) == v for n, v in CLI_DEFAULTS_DIFFER[cls].items())


# the fields each command takes (run: every Options field with a generated flag)
ANALYZE_FIELDS = {"ratio", "head_ratio", "mlp_ratio", "prune_hidden", "round_to", "protect", "criterion", "seed",
                  "allow_inexact", "calib_batch", "reduce", "normalize", "scope", "target_macs", "target_params",
                  "min_ratio", "max_ratio", "keep_initializer_inputs"}
# run --finetune-*: these FinetuneOptions fields (its seed and threads are run's own), and --finetune-loss
RUN_FINETUNE_FIELDS = {"steps", "epochs", "lr", "batch", "match", "val_fraction", "max_seconds"}
# (command, settings class, flag prefix) -> the generated fields it has
SURFACES = {("run", Options, ""): set(optdefs.cli_fields()), ("analyze", Options, ""): ANALYZE_FIELDS,
            ("prune", Options, ""): {"keep_initializer_inputs"}, ("verify", Options, ""): {"provider", "device"},
            ("finetune", FT, ""): set(optdefs.cli_fields(FT)), ("run", FT, "finetune-"): RUN_FINETUNE_FIELDS,
            ("sensitivity", SW, ""): set(optdefs.cli_fields(SW))}


@pytest.mark.parametrize("command,cls,prefix", list(SURFACES), ids=lambda x: getattr(x, "__name__", x) or "-")
def test_flags_of_fields_are_made_from_their_definitions(command, cls, prefix):
    """Default, flag, type or choices and help of every flag named after a field are those of its
    definition in options.py (no second copy in cli.py); run's --finetune-* carry the prefix."""
    import click

    o = optdefs
    dest = prefix.replace("-", "_")
    seen = set()
    for p in _command(command).params:
        name = p.name[len(dest):] if p.name.startswith(dest) else None
        if name not in o.fields(cls) or name not in o.cli_fields(cls):
            continue
        seen.add(name)
        assert p.opts == [o.cli_flag(name, cls, prefix)], name
        if (command, name) in OVERRIDDEN:
            continue
        kind, values = o.cli_kind(name, cls)
        assert p.default == o.cli_default(name, cls), name
        assert p.help == o.cli_help(name, cls, prefix), name
        assert (p.metavar or None) == o.fields(cls)[name].metadata["metavar"], name
        if kind == "choice":
            assert tuple(p.type.choices) == values, name
        elif kind in ("int", "float"):
            assert p.type == {"int": click.INT, "float": click.FLOAT}[kind], name
        elif kind == "multiple":
            assert p.type == {str: click.STRING, int: click.INT}[values[0]], name
        elif kind == "switch":
            assert p.secondary_opts == ["--no-" + p.opts[0][2:]], name
        assert p.is_flag == (kind in ("flag", "switch")) and p.multiple == (kind == "multiple"), name
    assert seen == SURFACES[(command, cls, prefix)]


@pytest.mark.parametrize("command,prefix", [("finetune", ""), ("run", "finetune-")])
def test_the_loss_flag_reads_its_help_and_default_from_the_definition(command, prefix):
    """--loss KIND|OUTPUT=KIND (FinetuneOptions.loss and output_loss) is hand-written: its help and
    the default it names are still the definition's."""
    o = optdefs
    (p,) = [p for p in _command(command).params if p.opts == [o.cli_flag("loss", FT, prefix)]]
    assert p.opts == list(o.cli_flags("loss", FT, prefix)) == list(o.cli_flags("output_loss", FT, prefix))
    assert p.help.startswith(o.cli_help("loss", FT, prefix) + ";")
    assert p.help.endswith(f"[default: {o.cli_default('loss', FT)}]") and p.multiple
    assert p.metavar == o.fields(FT)["loss"].metadata["metavar"]


@pytest.mark.parametrize("command", ["run", "analyze", "prune", "verify", "finetune", "sensitivity"])
def test_every_flag_a_help_text_names_is_a_flag_of_that_command(command):
    """Field names in help texts become flags (with run's finetune- prefix): they must exist there."""
    import re

    flags = _flags(command)
    for p in _command(command).params:
        for flag in re.findall(r"(?<![\w-])--[a-z][\w-]*", getattr(p, "help", None) or ""):
            assert flag in flags, (p.name, flag)


def test_choices_are_the_literal_types_of_choices_py():
    from graphprune import choices

    def literal(cls):
        kinds = {n: optdefs.cli_kind(n, cls) for n in optdefs.fields(cls)}
        return {n: v for n, (k, v) in kinds.items() if k == "choice"}

    assert literal(Options) == {"reduce": choices.REDUCE, "provider": choices.PROVIDER_NAMES,
                                "normalize": choices.NORMALIZE, "scope": choices.SCOPES, "repair": choices.REPAIR,
                                "ridge_prior": choices.RIDGE_PRIORS, "latency_objective": choices.LATENCY_OBJECTIVES,
                                "sparse_kernels": choices.SPARSE_KERNELS, "sparse_criterion": choices.SPARSE_CRITERIA}
    assert literal(FT) == {"loss": choices.LOSSES, "clock": choices.CLOCKS}
    assert literal(SW) == {}
    assert optdefs.cli_kind("groups", SW) == ("multiple", (int,))


@pytest.mark.parametrize("cls", [Options, FT, SW], ids=lambda c: c.__name__)
def test_help_texts_name_real_fields(cls):
    """A field named in `backquotes` in a help text is a real field of the same class with a
    command-line form (it becomes its flag in the CLI's help)."""
    import re

    o = optdefs
    for name, f in o.fields(cls).items():
        for text in (f.metadata["help"], f.metadata["none"] or ""):
            for ref in re.findall(r"`([^`]+)`", text):
                assert ref in o.fields(cls) and o.cli_flags(ref, cls), (name, ref)
        if name in o.cli_fields(cls):
            assert "`" not in o.cli_help(name, cls), name


def test_the_criterion_help_lists_every_criterion():
    import re

    words = set(re.findall(r"[\w-]+", optdefs.cli_help("criterion")))
    assert set(graphprune.CRITERIA) <= words


@pytest.mark.parametrize("cls", [Options, FT, SW], ids=lambda c: c.__name__)
def test_docstring_args_are_the_definitions(cls):
    doc = " ".join(cls.__doc__.split())
    args = doc[doc.index("Args:"):]
    pos = [args.index(f" {name}: {' '.join(optdefs.doc_help(name, cls).split())}") for name in optdefs.fields(cls)]
    assert pos == sorted(pos) and len(pos) == len(dataclasses.fields(cls))
    if cls is Options:
        assert "head_ratio: fraction of attention heads to remove (None: ``ratio``)" in args


def test_defaults_shared_with_options_come_from_options():
    """Where another module or class has the same setting as Options, Options' default is the one
    definition: sparsify's kernel margin, and the run settings a sweep or a distillation passes on."""
    from graphprune import sparsify

    assert sparsify.MARGIN == Options().sparse_margin
    for cls, names in ((SW, ("criterion", "calib_batch", "seed", "threads")), (FT, ("seed", "threads"))):
        for name in names:
            assert optdefs.cli_default(name, cls) == getattr(Options(), name), (cls.__name__, name)


def test_sweep_fingerprint_is_that_of_the_trial_settings():
    """The trials file of an earlier version is still reused: the fingerprint of the same settings
    is unchanged, and the settings that do not change a trial do not enter it."""
    fp = SW(model="m.onnx").fingerprint("0123456789abcdef")
    assert fp == "4c53f53f932716bd"
    same = SW(model="other.onnx", ratios=(0.1,), groups=[1], jobs=4, ray_address="local", min_quality=0.5)
    assert same.fingerprint("0123456789abcdef") == fp
    assert SW(model="m.onnx", repeats=3).fingerprint("0123456789abcdef") != fp
    assert set(optdefs.NOT_FINGERPRINTED) < set(optdefs.fields(SW))


def test_sweep_config_checks_what_the_command_line_did():
    SW(model="m.onnx").check()
    for name in ("samples", "round_to", "threads", "repeats", "calib_batch", "jobs"):
        with pytest.raises(UsageError, match=optdefs.cli_flag(name, SW)):
            SW(model="m.onnx", **{name: 0}).check()
    for bad, match in (({"ratios": ()}, "--ratios is empty"), ({"ratios": (0.5, 1.0)}, "--ratios"),
                       ({"criterion": "nope"}, "unknown criterion"), ({"calib": "a", "calib_dir": "b"}, "not both"),
                       ({"static_batch": 0}, "--static-batch")):
        with pytest.raises(UsageError, match=match):
            SW(model="m.onnx", **bad).check()


class _Stop(Exception):
    pass


def _stop_with(seen, cls):
    def stop(*args, **kw):
        seen.append(next(a for a in list(args) + list(kw.values()) if isinstance(a, cls)))
        raise _Stop()
    return stop


def _main(args):
    from graphprune.cli import Progress, cli
    try:
        with pytest.raises(_Stop):
            cli.main(args=args, prog_name="graphprune", standalone_mode=False)
    finally:
        Progress.interrupt()


@pytest.mark.parametrize("command", ["run", "analyze", "prune"])
def test_a_bare_command_builds_the_default_options(command, demo, tmp_path, monkeypatch):
    """`graphprune run MODEL` with no flag prunes with Options() (but for the automatic bench and
    verify of CLI_DEFAULTS_DIFFER); analyze plans at ratio 0; prune applies the plan as it is."""
    from graphprune import pipeline

    src = tmp_path / "demo.onnx"
    onnx.save(demo, str(src))
    seen = []
    monkeypatch.setattr(pipeline, "calibration" if command == "analyze" else "prune", _stop_with(seen, Options))
    args = {"run": ["run", str(src), "-q"], "analyze": ["analyze", str(src)],
            "prune": ["prune", str(src), "--plan", str(tmp_path / "plan.json"), "-q"]}[command]
    (tmp_path / "plan.json").write_text('{"groups": []}')
    _main(args)
    expected = {"run": dict(CLI_DEFAULTS_DIFFER[Options]), "analyze": {"ratio": 0.0}, "prune": {"ratio": 0.0}}[command]
    got = dataclasses.asdict(seen[0])
    for name in optdefs.FIELDS:
        assert got[name] == expected.get(name, getattr(Options(), name)), name


def _as_lists(d):
    return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


@pytest.mark.parametrize("command", ["finetune", "run"])
def test_a_bare_finetune_builds_the_default_finetune_options(command, demo, tmp_path, monkeypatch):
    """`graphprune finetune` and `run --finetune-data D` with no other flag distil with
    FinetuneOptions() (on run, with run's --seed and --threads)."""
    from graphprune import cli as cli_mod, finetune

    src = tmp_path / "demo.onnx"
    onnx.save(demo, str(src))
    seen = []
    monkeypatch.setattr(cli_mod, "_data", lambda path, batch: None)
    monkeypatch.setattr(finetune, "finetune" if command == "finetune" else "prune_and_finetune", _stop_with(seen, FT))
    if command == "finetune":
        _main(["finetune", str(src), "--teacher", str(src), "--data", "x.npz", "-o", str(tmp_path / "o.onnx"), "-q"])
        expected = FT()
    else:
        _main(["run", str(src), "-o", str(tmp_path / "o.onnx"), "--finetune-data", "x.npz", "--seed", "3",
               "--threads", "2", "-q"])
        expected = FT(seed=3, threads=2)
    assert _as_lists(dataclasses.asdict(seen[0])) == _as_lists(dataclasses.asdict(expected))


def test_a_bare_sensitivity_builds_the_default_sweep_config(demo, tmp_path, monkeypatch):
    """`graphprune sensitivity MODEL` sweeps with SweepConfig(model=MODEL); --group and --ray fill
    groups and ray_address."""
    from graphprune import sensitivity

    src = tmp_path / "demo.onnx"
    onnx.save(demo, str(src))
    seen = []
    monkeypatch.setattr(sensitivity, "sweep", _stop_with(seen, SW))
    _main(["sensitivity", str(src), "-q"])
    assert _as_lists(dataclasses.asdict(seen[0])) == _as_lists(dataclasses.asdict(SW(model=str(src))))
    _main(["sensitivity", str(src), "-q", "--group", "2", "--group", "0", "--ray", "local", "--ratios", "0.5,0.1,0.5"])
    assert seen[1].groups == [2, 0] and seen[1].ray_address == "local" and list(seen[1].ratios) == [0.1, 0.5]


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
