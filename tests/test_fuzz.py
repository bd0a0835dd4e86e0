"""Property-based fuzzing: random valid ONNX graphs (tests/fuzz_graphs.py) must prune into valid,
runnable models that the masked-dense oracle accepts.

For every generated graph: the dense model passes the full ONNX checker (else the generator is
wrong), prune() completes, the pruned model passes the full checker, runs in onnxruntime with the
dense model's output names and shapes, ``report['verify']['passed']``, and the report applied as
a plan (``prune --plan REPORT.json``) gives the same model bytes.

Profiles:
* CI (default): 200 examples in all (90 + 40 + 70), ``derandomize=True`` (the same examples on every run), no
  example database, no shrinking (keeps a failing run short).
* long: ``GRAPHPRUNE_FUZZ_EXAMPLES=N python -m pytest tests/test_fuzz.py [--hypothesis-seed S]``
  runs N examples per property test with a random (or the given) seed, and shrinks failures.
  ``tools/fuzz_long.py`` runs the same generator outside pytest.

The regression tests at the end are minimal graphs for failures the fuzzer found.
"""

from __future__ import annotations

import os

import numpy as np
import onnx
from hypothesis import HealthCheck, Phase, given, note, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from fuzz_graphs import Case, HypoChooser, build_case, check_case

_LONG = int(os.environ.get("GRAPHPRUNE_FUZZ_EXAMPLES", "0") or 0)
_HEALTH = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much]


def _profile(ci_examples: int, shrink: bool = True):
    """CI: fixed examples, no database, no shrinking (a failure is reported as drawn, with its
    recipe; the regression tests below hold the minimal forms). Long: shrinking on."""
    if _LONG > 0:
        phases = [Phase.explicit, Phase.reuse, Phase.generate] + ([Phase.shrink] if shrink else [])
        return settings(max_examples=_LONG, deadline=None, derandomize=False, suppress_health_check=_HEALTH,
                        phases=phases, print_blob=True)
    return settings(max_examples=ci_examples, deadline=None, derandomize=True, database=None,
                    suppress_health_check=_HEALTH, phases=[Phase.explicit, Phase.generate], print_blob=True)


def _run(data, layout=None):
    case = build_case(HypoChooser(data), layout=layout)
    note(case.describe())
    check_case(case)


@_profile(90)
@given(st.data())
def test_fuzz_random_graphs(data):
    """Mostly CNN-like graphs ([B, C, H, W] input), some transformer-like ones."""
    _run(data)


@_profile(40)
@given(st.data())
def test_fuzz_sequence_graphs(data):
    """[B, S, C] input: MatMul MLPs, attention heads, LayerNorm, residuals."""
    _run(data, layout="seq")


@_profile(70, shrink=False)
@given(st.integers(0, 2 ** 31 - 1))
def test_fuzz_seeded_graphs(i):
    """The numpy-RNG distribution of tools/fuzz_long.py (bigger graphs than hypothesis' early
    draws; a failure does not shrink, but ``python tools/fuzz_long.py --seed 0 --only I``
    replays it)."""
    from fuzz_graphs import RngChooser

    case = build_case(RngChooser([0, i]))
    note(f"fuzz_long --seed 0 --only {i}: {case.describe()}")
    check_case(case)


@_profile(12, shrink=False)
@given(st.data())
def test_fuzz_sparse_layers(data):
    """Random graphs with sparse layers on the kernels (every eligible layer forced on): the
    kernels equal the densified model within 1e-4 relative, the densified model the oracle."""
    from fuzz_graphs import SPARSE_PATTERNS, check_sparse_case

    case = build_case(HypoChooser(data), layout=data.draw(st.sampled_from([None, "seq"])))
    pattern = data.draw(st.sampled_from(SPARSE_PATTERNS))
    sparsity = data.draw(st.sampled_from([0.3, 0.5, 0.9]))
    note(f"{case.describe()} | sparse {pattern} {sparsity}")
    check_sparse_case(case, pattern, sparsity)


def test_generator_is_deterministic():
    from fuzz_graphs import RngChooser

    a = build_case(RngChooser([7, 3]))
    b = build_case(RngChooser([7, 3]))
    assert a.model.SerializeToString() == b.model.SerializeToString() and a.opts == b.opts


def test_generator_covers_the_op_mix():
    """The generator makes what the fuzz brief lists (guards against a silent narrowing)."""
    from fuzz_graphs import RngChooser

    ops, opsets, attrs = set(), set(), set()
    for i in range(400):
        c = build_case(RngChooser([0, i]))
        opsets.add(c.opset)
        for n in c.model.graph.node:
            ops.add(n.op_type)
            for a in n.attribute:
                if n.op_type == "Split" and a.name == "num_outputs":
                    attrs.add("split_num_outputs")
                if n.op_type == "Conv" and a.name == "group" and a.i > 1:
                    attrs.add("grouped")
                if n.op_type == "Conv" and a.name == "dilations" and max(a.ints) > 1:
                    attrs.add("dilated")
                if n.op_type == "Conv" and a.name == "strides" and max(a.ints) > 1:
                    attrs.add("strided")
    assert opsets == set(range(13, 22))
    assert {"Conv", "BatchNormalization", "Relu", "Sigmoid", "HardSwish", "Clip", "LeakyRelu", "Add", "Mul",
            "Concat", "Split", "Slice", "Reshape", "Transpose", "GlobalAveragePool", "Flatten", "Gemm",
            "MatMul", "Gelu", "Erf", "Softmax", "Gather", "ConvTranspose", "Pad", "Resize"} <= ops
    assert {"split_num_outputs", "grouped", "dilated", "strided"} <= attrs


# ----------------------------------------------------------------------------- regressions
#
# Minimal graphs for failures the fuzzer found. They fail until graphprune is fixed.


def _subrange_model(kind: str) -> onnx.ModelProto:
    """x[1,3,8,8] -> Conv stem (4 channels; channel 0 all zeros, so every criterion removes it
    first) -> two channel sub-ranges [0:1] and [1:4] (Split sizes / Slice / Gather) -> a 1x1 Conv
    on each -> two graph outputs."""
    rng = np.random.default_rng(0)
    W = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    W[0] = 0
    inits = [numpy_helper.from_array(W, "stem.w"),
             numpy_helper.from_array(rng.standard_normal((2, 1, 1, 1)).astype(np.float32), "a.w"),
             numpy_helper.from_array(rng.standard_normal((2, 3, 1, 1)).astype(np.float32), "b.w")]
    nodes = [helper.make_node("Conv", ["x", "stem.w"], ["s"], pads=[1, 1, 1, 1], name="stem")]
    if kind == "split":
        inits.append(numpy_helper.from_array(np.array([1, 3], np.int64), "sizes"))
        nodes.append(helper.make_node("Split", ["s", "sizes"], ["p0", "p1"], axis=1, name="split"))
    elif kind == "slice":
        for n, v in (("st0", [0]), ("en0", [1]), ("st1", [1]), ("en1", [4]), ("ax", [1])):
            inits.append(numpy_helper.from_array(np.array(v, np.int64), n))
        nodes += [helper.make_node("Slice", ["s", "st0", "en0", "ax"], ["p0"], name="slice0"),
                  helper.make_node("Slice", ["s", "st1", "en1", "ax"], ["p1"], name="slice1")]
    else:
        inits += [numpy_helper.from_array(np.array([0], np.int64), "i0"),
                  numpy_helper.from_array(np.array([1, 2, 3], np.int64), "i1")]
        nodes += [helper.make_node("Gather", ["s", "i0"], ["p0"], axis=1, name="gather0"),
                  helper.make_node("Gather", ["s", "i1"], ["p1"], axis=1, name="gather1")]
    nodes += [helper.make_node("Conv", ["p0", "a.w"], ["ya"], name="a"),
              helper.make_node("Conv", ["p1", "b.w"], ["yb"], name="b")]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                          [helper.make_tensor_value_info("ya", TensorProto.FLOAT, [1, 2, 8, 8]),
                           helper.make_tensor_value_info("yb", TensorProto.FLOAT, [1, 2, 8, 8])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 10
    return m


def _case(model, **opts) -> Case:
    o = {"ratio": 0.5, "round_to": 1, "criterion": "l2", "seed": 0}
    o.update(opts)
    return Case(model, o, ["regression"])


def test_regression_split_part_emptied():
    """Found by the fuzzer (zero-width, ~4% of examples): a Split part whose channels are all
    removed becomes a 0-channel tensor; onnxruntime's Conv refuses it and prune() raises from
    inside verify. A sub-range must keep >= 1 channel (or its consumers must go)."""
    check_case(_case(_subrange_model("split")))


def test_regression_slice_emptied():
    """Same as above through Slice [0:1] on the channel axis."""
    check_case(_case(_subrange_model("slice")))


def test_regression_gather_pick_emptied():
    """Same as above through Gather(axis=1, indices=[0])."""
    check_case(_case(_subrange_model("gather")))


def test_regression_partially_blocked_group_empties_a_conv():
    """Found by the fuzzer (fuzz_long --seed 2 --only 6598, shrunk by hand): a group with blocked
    channels keeps those and may remove every other one, leaving a Conv with 0 output channels.

    x[1,4,8,8] -> conv1 (4) -> Concat[conv1, x] = c (8) -> conv3 (8) -> Add(conv3, c) -> conv4.
    The Add couples conv3's 8 channels with c = [conv1 | x]: x's 4 are blocked (graph input);
    ratio 0.5 keeps 4 = the blocked ones, and conv1's weight becomes [0, 4, 1, 1]."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((4, 4, 1, 1)).astype(np.float32), "conv1.weight"),
             numpy_helper.from_array(rng.standard_normal((8, 8, 1, 1)).astype(np.float32), "conv3.weight"),
             numpy_helper.from_array(rng.standard_normal((4, 8, 1, 1)).astype(np.float32), "conv4.weight")]
    nodes = [helper.make_node("Conv", ["x", "conv1.weight"], ["a"], name="conv1"),
             helper.make_node("Concat", ["a", "x"], ["c"], axis=1, name="cat"),
             helper.make_node("Conv", ["c", "conv3.weight"], ["d"], name="conv3"),
             helper.make_node("Add", ["d", "c"], ["e"], name="add"),
             helper.make_node("Conv", ["e", "conv4.weight"], ["y"], name="conv4")]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 10
    check_case(_case(m))
