"""Shared test helpers: a tiny builder for hand-made ONNX test graphs (onnx.helper + numpy, fixed
seeds), the prune-and-check helpers the rule tests share (run_case, group_of, member, ...) and the
command-line harness (run_cli_in_process, run_cli_subprocess, assert_one_line_error; tests get the
runner from the ``gp`` fixture in conftest.py: in-process in the default tier, a real
``python -m graphprune`` subprocess in the slow tier).

Every model it makes has ir_version 10 (onnxruntime reads it) and one default-domain opset.
Weights go to initializers, or to ``Constant`` nodes (Paddle style) with ``const_nodes=True``.
"""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
from typing import List, NamedTuple, Optional, Sequence, Union

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from graphprune.bench import random_inputs, run_model
from graphprune.pipeline import Options, prune

FLOAT = TensorProto.FLOAT


class GraphBuilder:
    def __init__(self, opset: int = 17, seed: int = 0, const_nodes: bool = False):
        self.opset = opset
        self.rng = np.random.default_rng(seed)
        self.const_nodes = const_nodes
        self.nodes: List[onnx.NodeProto] = []
        self.inits: List[onnx.TensorProto] = []
        self.inputs: List[onnx.ValueInfoProto] = []
        self.outputs: List[onnx.ValueInfoProto] = []
        self.domains = {}
        self._n = 0

    # ------------------------------------------------------------------ basics
    def fresh(self, prefix: str) -> str:
        self._n += 1
        return f"{prefix}{self._n}"

    def const(self, name: str, arr, as_node: Optional[bool] = None) -> str:
        arr = np.asarray(arr)
        as_node = self.const_nodes if as_node is None else as_node
        if as_node:
            self.nodes.append(helper.make_node("Constant", [], [name], name=f"{name}_const",
                                               value=numpy_helper.from_array(arr, name)))
        else:
            self.inits.append(numpy_helper.from_array(arr, name))
        return name

    def ints(self, name: str, values) -> str:
        """An int64 constant (shape arguments): always an initializer."""
        return self.const(name, np.asarray(values, dtype=np.int64), as_node=False)

    def input(self, name: str, shape, elem=FLOAT) -> str:
        self.inputs.append(helper.make_tensor_value_info(name, elem, shape))
        return name

    def output(self, name: str, elem=FLOAT, shape=None) -> str:
        self.outputs.append(helper.make_tensor_value_info(name, elem, shape))
        return name

    def node(self, op: str, inputs: Sequence[str], n_out: int = 1, name: Optional[str] = None,
             domain: str = "", outputs: Optional[Sequence[str]] = None, **attrs) -> Union[str, List[str]]:
        name = name or self.fresh(op.lower())
        outs = list(outputs) if outputs is not None else (
            [f"{name}_out"] if n_out == 1 else [f"{name}_out{i}" for i in range(n_out)])
        self.nodes.append(helper.make_node(op, list(inputs), outs, name=name, domain=domain or None, **attrs))
        if domain:
            self.domains[domain] = 1
        return outs[0] if len(outs) == 1 else outs

    def randn(self, *shape, scale: float = 1.0) -> np.ndarray:
        return (self.rng.standard_normal(shape) * scale).astype(np.float32)

    # ------------------------------------------------------------------ layers
    def conv(self, x: str, cin: int, cout: int, k: int = 3, group: int = 1, stride: int = 1,
             dilation: int = 1, pad: Optional[int] = None, bias: bool = True,
             name: Optional[str] = None) -> str:
        name = name or self.fresh("conv")
        if pad is None:
            pad = dilation * (k - 1) // 2
        fan_in = (cin // group) * k * k
        W = self.randn(cout, cin // group, k, k, scale=1.0 / np.sqrt(fan_in))
        ins = [x, self.const(f"{name}.weight", W)]
        if bias:
            ins.append(self.const(f"{name}.bias", self.randn(cout, scale=0.1)))
        return self.node("Conv", ins, name=name, kernel_shape=[k, k], pads=[pad] * 4,
                         strides=[stride, stride], dilations=[dilation, dilation], group=group)

    def conv_transpose(self, x: str, cin: int, cout: int, k: int = 2, stride: int = 2,
                       bias: bool = True, name: Optional[str] = None) -> str:
        name = name or self.fresh("deconv")
        W = self.randn(cin, cout, k, k, scale=1.0 / np.sqrt(cin * k * k))
        ins = [x, self.const(f"{name}.weight", W)]
        if bias:
            ins.append(self.const(f"{name}.bias", self.randn(cout, scale=0.1)))
        return self.node("ConvTranspose", ins, name=name, kernel_shape=[k, k], strides=[stride, stride])

    def bn(self, x: str, c: int, name: Optional[str] = None) -> str:
        name = name or self.fresh("bn")
        r = self.rng
        ins = [x,
               self.const(f"{name}.weight", (1.0 + 0.1 * r.standard_normal(c)).astype(np.float32)),
               self.const(f"{name}.bias", (0.1 * r.standard_normal(c)).astype(np.float32)),
               self.const(f"{name}.running_mean", (0.1 * r.standard_normal(c)).astype(np.float32)),
               self.const(f"{name}.running_var", (0.5 + r.random(c)).astype(np.float32))]
        return self.node("BatchNormalization", ins, name=name, epsilon=1e-5)

    def relu(self, x: str) -> str:
        return self.node("Relu", [x])

    def gemm(self, x: str, k: int, n: int, trans_b: int = 1, name: Optional[str] = None) -> str:
        name = name or self.fresh("fc")
        W = self.randn(n, k, scale=1.0 / np.sqrt(k))
        if not trans_b:
            W = np.ascontiguousarray(W.T)
        return self.node("Gemm", [x, self.const(f"{name}.weight", W), self.const(f"{name}.bias", self.randn(n, scale=0.1))],
                         name=name, transB=trans_b)

    def split(self, x: str, sizes: Sequence[int], axis: int = 1, form: Optional[str] = None,
              name: Optional[str] = None) -> List[str]:
        """form: 'attr' (opset < 13), 'input' (opset >= 13), 'num_outputs' (opset >= 18, equal parts)."""
        name = name or self.fresh("split")
        form = form or ("attr" if self.opset < 13 else "input")
        n = len(sizes)
        if form == "attr":
            return self.node("Split", [x], n_out=n, name=name, axis=axis, split=list(sizes))
        if form == "input":
            return self.node("Split", [x, self.ints(f"{name}.split", sizes)], n_out=n, name=name, axis=axis)
        assert form == "num_outputs" and len(set(sizes)) == 1
        return self.node("Split", [x], n_out=n, name=name, axis=axis, num_outputs=n)

    def unsqueeze(self, x: str, axes: Sequence[int]) -> str:
        if self.opset < 13:
            return self.node("Unsqueeze", [x], axes=list(axes))
        name = self.fresh("unsqueeze")
        return self.node("Unsqueeze", [x, self.ints(f"{name}.axes", axes)], name=name)

    def reduce_mean(self, x: str, axes: Sequence[int], keepdims: int = 1) -> str:
        if self.opset < 18:
            return self.node("ReduceMean", [x], axes=list(axes), keepdims=keepdims)
        name = self.fresh("reducemean")
        return self.node("ReduceMean", [x, self.ints(f"{name}.axes", axes)], name=name, keepdims=keepdims)

    def reshape(self, x: str, shape: Sequence[int]) -> str:
        name = self.fresh("reshape")
        return self.node("Reshape", [x, self.ints(f"{name}.shape", shape)], name=name)

    # ------------------------------------------------------------------ model
    def model(self, *outputs: str, output_shapes=None) -> onnx.ModelProto:
        for i, o in enumerate(outputs):
            self.output(o, shape=None if output_shapes is None else output_shapes[i])
        g = helper.make_graph(self.nodes, "test", self.inputs, self.outputs, self.inits)
        ops = [helper.make_opsetid("", self.opset)] + [helper.make_opsetid(d, v) for d, v in self.domains.items()]
        m = helper.make_model(g, opset_imports=ops, producer_name="graphprune-tests")
        m.ir_version = 10
        if output_shapes is None:
            _fill_output_shapes(m)
        return m


def _fill_output_shapes(m: onnx.ModelProto) -> None:
    """Give graph outputs the shapes onnx shape inference finds (the checker wants a shape)."""
    inferred = onnx.shape_inference.infer_shapes(m)
    known = {vi.name: vi for vi in list(inferred.graph.value_info) + list(inferred.graph.output)}
    for o in m.graph.output:
        vi = known.get(o.name)
        if vi is not None and vi.type.tensor_type.HasField("shape"):
            o.type.CopyFrom(vi.type)


# ------------------------------------------------------------------ prune-and-check helpers


def run_case(model, expect_pruned=True, check_verify=True, batch=1, **opts):
    """Prune with bench off and check the invariants every case shares. Returns the Result."""
    kw = {"ratio": 0.5, "round_to": 1, "bench": False}
    kw.update(opts)
    res = prune(model, Options(**kw))
    onnx.checker.check_model(res.model, full_check=True)
    if check_verify:
        v = res.report["verify"]
        assert v["passed"], f"masked-dense oracle failed: {v}"
    feed = random_inputs(model, seed=7, batch=batch)
    dense = run_model(model, feed)
    pruned = run_model(res.model, feed)
    assert list(dense) == list(pruned)
    for k in dense:
        assert dense[k].shape == pruned[k].shape, (k, dense[k].shape, pruned[k].shape)
        assert np.isfinite(pruned[k]).all()
    macs = res.report["macs"]
    if expect_pruned:
        assert res.report["summary"]["pruned_groups"] >= 1, res.report["summary"]
        assert macs["after"] < macs["before"], macs
    return res


def group_of(res, tensor, role=None):
    """The report group that has a member on `tensor` (optionally with that role)."""
    for g in res.report["groups"]:
        for m in g["members"]:
            if m["tensor"] == tensor and (role is None or m["role"] == role):
                return g
    raise AssertionError(f"no group has a member {tensor} ({role})")


def member(group, tensor, role=None):
    for m in group["members"]:
        if m["tensor"] == tensor and (role is None or m["role"] == role):
            return m
    raise AssertionError(f"group {group['id']} has no member {tensor}")


def an_group_of(an, tensor, role=None):
    """The analysis Group with a member on `tensor`."""
    for g in an.groups:
        for gm in g.members:
            if gm.member.tensor == tensor and (role is None or gm.member.role == role):
                return g
    raise AssertionError(f"no group has a member {tensor}")


def pruned(g):
    return g["channels_after"] < g["channels_before"]


def init(model, name):
    for t in model.graph.initializer:
        if t.name == name:
            return numpy_helper.to_array(t)
    for n in model.graph.node:
        if n.op_type == "Constant" and n.output[0] == name:
            return numpy_helper.to_array(n.attribute[0].t)
    raise KeyError(name)


# ------------------------------------------------------------------ command line


class CliResult(NamedTuple):
    returncode: int
    stdout: str
    stderr: str


def run_cli_subprocess(*args, cwd=None) -> CliResult:
    """``python -m graphprune ARGS`` in a real process (GRAPHPRUNE_DEBUG unset)."""
    env = dict(os.environ)
    env.pop("GRAPHPRUNE_DEBUG", None)
    r = subprocess.run([sys.executable, "-m", "graphprune", *map(str, args)], cwd=cwd, capture_output=True,
                       text=True, env=env, timeout=300)
    return CliResult(r.returncode, r.stdout, r.stderr)


def run_cli_in_process(*args, cwd=None) -> CliResult:
    """The same command through ``graphprune.cli.main`` in this process: stdout and stderr captured,
    the exit code taken from SystemExit (0 when main returns). An exception escaping main (which a
    real process would print as a traceback) fails the test."""
    from graphprune.cli import main

    out, err = io.StringIO(), io.StringIO()
    saved_debug = os.environ.pop("GRAPHPRUNE_DEBUG", None)
    saved_cwd = os.getcwd()
    code = 0
    try:
        if cwd is not None:
            os.chdir(cwd)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                main([str(a) for a in args])
            except SystemExit as e:
                if isinstance(e.code, int) or e.code is None:
                    code = e.code or 0
                else:                         # sys.exit("message"): printed, status 1
                    print(e.code, file=sys.stderr)
                    code = 1
    finally:
        os.chdir(saved_cwd)
        if saved_debug is not None:
            os.environ["GRAPHPRUNE_DEBUG"] = saved_debug
    return CliResult(code, out.getvalue(), err.getvalue())


def error_lines(r) -> List[str]:
    return [ln for ln in r.stderr.splitlines() if ln.startswith("graphprune: error")]


def assert_one_line_error(r, code: int, *words: str) -> None:
    """Exit ``code``, no traceback, exactly one ``graphprune: error`` line (holding ``words``)."""
    assert r.returncode == code, (r.returncode, r.stdout[-2000:], r.stderr[-2000:])
    assert "Traceback" not in r.stderr, r.stderr
    lines = error_lines(r)
    assert len(lines) == 1, r.stderr
    for w in words:
        assert w.lower() in lines[0].lower(), lines[0]


# ------------------------------------------------------------------ reference exports

EXPORTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "exports")
TRANSFORMER_NAMES = ("vit", "gpt2", "llama", "minilm", "bert_tiny")
EXPORT_VARIANTS = {"bn-kept": dict(keep_bn=True), "dynamic-batch": dict(dynamic_batch=True),
                   "opset13": dict(opset=13), "opset21": dict(opset=21)}

#: The exports committed as tests/data/exports/NAME.EXPORTER[.VARIANT].onnx (25 files, 3.5 MiB): the
#: default tier loads these instead of exporting (a dynamo export takes seconds); every other
#: (name, exporter, variant) of the test matrices is exported afresh in the slow tier. The subset
#: is a covering one: with the rest of the default tier it exercises every graphprune branch that
#: the whole CNN and transformer matrices do (coverage.py, branch coverage, measured when it was
#: chosen); bert_tiny stands in for MiniLM (90 MB) and reaches all but one of MiniLM's branches.
#: It holds every model family but the largest four CNNs (resnet_basic, vgg, vgg_view, unet: their
#: structures are in the hand-built rule tests and in resnext, densenet, squeezenet), each variant
#: and both exporters. tools/make_test_exports.py rewrites the files;
#: tests/test_committed_exports.py (slow) checks that each still equals a fresh export.
COMMITTED_EXPORTS = [
    ("squeezenet", "legacy", None), ("squeezenet", "dynamo", None),
    ("resnext", "legacy", None), ("resnext", "dynamo", None),
    ("shufflenetv2", "legacy", None), ("shufflenetv2", "dynamo", None),
    ("resnet_bottleneck", "legacy", None), ("densenet", "legacy", None), ("inception", "legacy", None),
    ("regnet", "legacy", None), ("efficientnet", "legacy", None), ("mobilenetv2", "legacy", None),
    ("mobilenetv3", "legacy", None), ("convnext", "legacy", None),
    ("resnext", "legacy", "bn-kept"), ("resnext", "legacy", "dynamic-batch"),
    ("resnext", "legacy", "opset13"), ("resnext", "legacy", "opset21"),
    ("resnext", "dynamo", "bn-kept"), ("resnext", "dynamo", "dynamic-batch"),
    ("vit", "legacy", None), ("gpt2", "legacy", None), ("llama", "legacy", None), ("llama", "dynamo", None),
    ("bert_tiny", "legacy", None),
]


def export_file_name(name: str, exporter: str, variant: Optional[str] = None) -> str:
    return f"{name}.{exporter}.{variant}.onnx" if variant else f"{name}.{exporter}.onnx"


def committed_export(name: str, exporter: str, variant: Optional[str] = None) -> Optional[str]:
    """The committed file for this export, or None when the slow tier exports it afresh."""
    if (name, exporter, variant) not in COMMITTED_EXPORTS:
        return None
    return os.path.join(EXPORTS_DIR, export_file_name(name, exporter, variant))


def export_reference(name: str, exporter: str, path: str, variant: Optional[str] = None) -> str:
    """Export reference model ``name`` (refmodels/cnn.py, refmodels/transformers.py, the MiniLM of
    refmodels/minilm.py or refmodels/bert_tiny.py) with ``exporter`` and ``variant`` (EXPORT_VARIANTS)
    to ``path``."""
    if name in ("minilm", "bert_tiny"):
        assert variant is None
        from refmodels import bert_tiny, minilm

        return str((minilm if name == "minilm" else bert_tiny).export(str(path), exporter))
    if name in TRANSFORMER_NAMES:
        assert variant is None
        from refmodels.transformers import export_named as export_transformer

        return str(export_transformer(name, str(path), exporter))
    from refmodels.export import export_named

    return str(export_named(name, str(path), exporter, **EXPORT_VARIANTS.get(variant, {})))


def without_stack_traces(model: onnx.ModelProto) -> onnx.ModelProto:
    """Drop the dynamo exporter's ``pkg.torch.onnx.stack_trace`` node metadata (source file paths
    of the machine that exported; nothing reads them) from ``model``, in place."""
    for node in model.graph.node:
        keep = [p for p in node.metadata_props if p.key != "pkg.torch.onnx.stack_trace"]
        if len(keep) != len(node.metadata_props):
            del node.metadata_props[:]
            node.metadata_props.extend(keep)
    return model


def export_params(names: Sequence[str], exporters: Sequence[str], variants: Sequence[Optional[str]] = (None,)):
    """pytest params (name, exporter[, variant]) over a matrix: those with a committed export run in
    the default tier, the others are marked ``slow`` (exported afresh)."""
    out = []
    for name in names:
        for exporter in exporters:
            for variant in variants:
                marks = () if committed_export(name, exporter, variant) else (pytest.mark.slow,)
                args = (name, exporter) if variant is None else (name, exporter, variant)
                out.append(pytest.param(*args, marks=marks, id="-".join(a for a in args)))
    return out


def check_export(model, example, path, batch: Optional[int] = None, alone: bool = True,
                 input_names: Sequence[str] = ("input",), atol: float = 1e-4) -> onnx.ModelProto:
    """The export at ``path`` passes the full checker, is self-contained (no external data; with
    ``alone``, no side files next to it) and onnxruntime matches the torch ``model`` on ``example``
    (a tensor, or a tuple of tensors fed to ``input_names``; a tensor is stacked ``batch`` times,
    scaled 1, 2, ..., when ``batch`` is given). Returns the loaded export."""
    import onnxruntime as ort
    import torch

    path = os.fspath(path)
    proto = onnx.load(path)
    onnx.checker.check_model(proto, full_check=True)
    # self-contained: no external data references, no side files
    for t in proto.graph.initializer:
        assert t.data_location != onnx.TensorProto.EXTERNAL, t.name
    if alone:
        assert os.listdir(os.path.dirname(path)) == [os.path.basename(path)]
    args = example if isinstance(example, tuple) else (example,)
    if batch is not None:
        args = (torch.cat([args[0] * (i + 1) for i in range(batch)], 0),)
    with torch.no_grad():
        ref = model(*args).numpy()
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    (got,) = sess.run(None, {n: a.numpy() for n, a in zip(input_names, args)})
    assert got.shape == ref.shape
    np.testing.assert_allclose(got, ref, rtol=0, atol=atol)
    return proto


def assert_same_export(fresh: onnx.ModelProto, committed: onnx.ModelProto) -> None:
    """``fresh`` is the export ``committed`` was made from: same opsets, graph inputs and outputs,
    the same nodes in the same order (node metadata aside: it names source files and module
    paths), the same initializers (names, types, shapes; values to float rounding) and the same
    outputs on random inputs."""
    assert [(o.domain, o.version) for o in fresh.opset_import] == \
        [(o.domain, o.version) for o in committed.opset_import]
    assert fresh.ir_version == committed.ir_version
    assert list(fresh.graph.input) == list(committed.graph.input)
    assert list(fresh.graph.output) == list(committed.graph.output)

    def bare(node):
        node = onnx.NodeProto.FromString(node.SerializeToString())
        del node.metadata_props[:]
        return node
    a, b = [bare(n) for n in fresh.graph.node], [bare(n) for n in committed.graph.node]
    assert [n.op_type for n in a] == [n.op_type for n in b]
    for x, y in zip(a, b):
        assert x == y, (x.name, y.name)
    fa = {t.name: t for t in fresh.graph.initializer}
    fb = {t.name: t for t in committed.graph.initializer}
    assert sorted(fa) == sorted(fb)
    for name, t in fa.items():
        u = fb[name]
        assert (t.data_type, list(t.dims)) == (u.data_type, list(u.dims)), name
        np.testing.assert_allclose(numpy_helper.to_array(t), numpy_helper.to_array(u), rtol=1e-6, atol=1e-7,
                                   err_msg=name)
    feed = random_inputs(committed, seed=0)
    got, want = run_model(fresh, feed), run_model(committed, feed)
    assert list(got) == list(want)
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-5, atol=1e-5, err_msg=k)
