"""Shared test helpers: a tiny builder for hand-made ONNX test graphs (onnx.helper + numpy, fixed
seeds), and the prune-and-check helpers the rule tests share (run_case, group_of, member, ...).

Every model it makes has ir_version 10 (onnxruntime reads it) and one default-domain opset.
Weights go to initializers, or to ``Constant`` nodes (Paddle style) with ``const_nodes=True``.
"""

from __future__ import annotations

from typing import List, Optional, Sequence, Union

import numpy as np
import onnx
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
