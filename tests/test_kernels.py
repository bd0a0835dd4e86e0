"""graphprune's sparse custom ops (kernels/, graphprune/kernels.py) against numpy on the densified weight.

Every op x sparsity pattern x shape, under every instruction set the kernels have (the CPU's best and the
ones below it, selected with GRAPHPRUNE_KERNELS_ISA), both with packed constant weights and with weights
fed as graph inputs; the load error without the library; the API-version mismatch; a clean build.
"""

import os
import subprocess
import sys

import numpy as np
import onnxruntime as ort
import pytest

from graphprune import kernels

ISAS = ("portable", "avx2", "avx512")
SPMM_MIN_M = 2  # gp_ops.c default: from this many rows the transposed SpMM kernel runs


def _unstructured(rng, N, K, density):
    return rng.random((N, K)) < density


def _nm(rng, N, K, n=2, m=4, thin=True):
    mask = np.zeros((N, K), bool)
    for g in range(0, K, m):
        w = min(m, K - g)
        keep = np.argsort(rng.random((N, w)), axis=1)[:, :min(n, w)]
        np.put_along_axis(mask[:, g:g + w], keep, True, axis=1)
    if not thin:
        return mask
    # thin some groups below n (still a valid n:m weight), keep output 2 full (n of every m)
    thinned = mask & (rng.random((N, K)) < 0.9)
    thinned[2 % N] = mask[2 % N]
    return thinned


def _blocks(rng, N, K, bk, bn, density):
    grid = rng.random(((K + bk - 1) // bk, (N + bn - 1) // bn)) < density
    return np.kron(grid, np.ones((bk, bn), bool))[:K, :N].T


def _weights(rng, mask, special=True):
    """Weights on the mask; with `special`, output 1 empty and output 2 fully dense (True) or as dense as
    the pattern allows ("pattern")."""
    W = (rng.standard_normal(mask.shape) * mask).astype(np.float32)
    if special and mask.shape[0] > 3:
        W[1] = 0.0
        if special is True:
            W[2] = rng.standard_normal(mask.shape[1])
    return W


# (name, attrs, mask maker): the attrs are the hint the Python side writes
PATTERNS = [
    ("unstructured90", {}, lambda r, N, K: _unstructured(r, N, K, 0.1)),
    ("unstructured50", {}, lambda r, N, K: _unstructured(r, N, K, 0.5)),
    ("2:4", {"pattern": 1, "pattern_n": 2, "pattern_m": 4}, lambda r, N, K: _nm(r, N, K)),
    ("1x8", {"pattern": 2, "block_k": 1, "block_n": 8}, lambda r, N, K: _blocks(r, N, K, 1, 8, 0.2)),
    ("1x4", {"pattern": 2, "block_k": 1, "block_n": 4}, lambda r, N, K: _blocks(r, N, K, 1, 4, 0.2)),
    ("1x16", {"pattern": 2, "block_k": 1, "block_n": 16}, lambda r, N, K: _blocks(r, N, K, 1, 16, 0.2)),
    ("4x1", {"pattern": 2, "block_k": 4, "block_n": 1}, lambda r, N, K: _blocks(r, N, K, 4, 1, 0.2)),
    ("2x3", {"pattern": 2, "block_k": 2, "block_n": 3}, lambda r, N, K: _blocks(r, N, K, 2, 3, 0.3)),
]

# (M-like leading dims, K, N)
MATMUL_SHAPES = [((1,), 37, 19), ((1,), 64, 40), ((3,), 9, 8), ((SPMM_MIN_M,), 33, 17), ((70,), 50, 31),
                 ((2, 3), 23, 45), ((1, 1, 5), 128, 24), ((17,), 1, 5)]
CONV_SHAPES = [((2, None, 5, 7), 13, 21), ((1, None, 1, 1), 40, 33), ((3, None), 16, 9), ((1, None, 70), 24, 17),
               ((2, None, 2, 2, 3), 8, 8)]


def _session(model, threads=1):
    return ort.InferenceSession(model.SerializeToString(), kernels.session_options(threads))


def _check(y, ref):
    ref = ref.astype(np.float64)
    scale = max(1.0, float(np.abs(ref).max()))
    np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-4 * scale)


def _ref_matmul(X, W, b):
    return X.astype(np.float64) @ W.T.astype(np.float64) + b


def _ref_conv(X, W, b):
    Y = np.einsum("nk,bk...->bn...", W.astype(np.float64), X.astype(np.float64))
    return Y + b.reshape((1, -1) + (1,) * (X.ndim - 2))


def _run_all(op, shapes, weights_as_inputs=False, threads=1, patterns=None):
    rng = np.random.default_rng(7)
    cases = 0
    for lead, K, N in shapes:
        for name, attrs, make in patterns or PATTERNS:
            W = _weights(rng, make(rng, N, K), special="pattern" if name == "2:4" else True)
            b = rng.standard_normal(N).astype(np.float32)
            if op == "SparseMatMul":
                xs = tuple(lead) + (K,)
                m = kernels.single_op_model(op, W, b, x_shape=[*lead, None], weights_as_inputs=weights_as_inputs,
                                            **attrs)
            else:
                xs = tuple(K if d is None else d for d in lead)
                m = kernels.single_op_model(op, W, b, x_shape=list(lead), weights_as_inputs=weights_as_inputs,
                                            **attrs)
            X = rng.standard_normal(xs).astype(np.float32)
            feeds = {"X": X}
            if weights_as_inputs:
                v, i, p = kernels.pack_csr(W)
                feeds.update(values=v, indices=i, indptr=p, bias=b)
            y = _session(m, threads).run(None, feeds)[0]
            ref = _ref_matmul(X, W, b) if op == "SparseMatMul" else _ref_conv(X, W, b)
            assert y.shape == ref.shape, (name, lead, K, N)
            try:
                _check(y, ref)
            except AssertionError as e:
                raise AssertionError(f"{op} {name} X{xs} K={K} N={N} isa={os.environ.get('GRAPHPRUNE_KERNELS_ISA')}"
                                     f": {e}") from None
            cases += 1
    return cases


@pytest.fixture(params=ISAS)
def isa(request, monkeypatch):
    monkeypatch.setenv("GRAPHPRUNE_KERNELS_ISA", request.param)
    return request.param


def test_sparse_matmul_every_pattern_and_shape(isa):
    assert _run_all("SparseMatMul", MATMUL_SHAPES) == len(MATMUL_SHAPES) * len(PATTERNS)


def test_sparse_conv_every_pattern_and_shape(isa):
    assert _run_all("SparseConv", CONV_SHAPES) == len(CONV_SHAPES) * len(PATTERNS)


def test_batch1_kernels_on_many_rows(monkeypatch):
    """The batch-1 kernels, row by row, on every shape (normally only M = 1 reaches them)."""
    monkeypatch.setenv("GRAPHPRUNE_KERNELS_SPMM_MIN_M", "1000000")
    assert _run_all("SparseMatMul", MATMUL_SHAPES) > 0


def test_weights_as_graph_inputs(monkeypatch):
    """Non-constant weights are checked and used per call (no packing)."""
    assert _run_all("SparseMatMul", MATMUL_SHAPES[:5], weights_as_inputs=True) > 0
    assert _run_all("SparseConv", CONV_SHAPES[:2], weights_as_inputs=True) > 0


def test_multithreaded_large_layers():
    """Work big enough to be split over onnxruntime's intra-op pool (2 threads)."""
    rng = np.random.default_rng(3)
    for lead, K, N, make in [((1,), 768, 1000, PATTERNS[0][2]), ((40,), 300, 257, PATTERNS[0][2]),
                             ((1,), 512, 600, PATTERNS[2][2])]:
        W = _weights(rng, make(rng, N, K))
        b = rng.standard_normal(N).astype(np.float32)
        attrs = PATTERNS[2][1] if make is PATTERNS[2][2] else {}
        m = kernels.single_op_model("SparseMatMul", W, b, x_shape=[*lead, None], **attrs)
        X = rng.standard_normal(lead + (K,)).astype(np.float32)
        _check(_session(m, threads=2).run(None, {"X": X})[0], _ref_matmul(X, W, b))


@pytest.mark.parametrize("isa_name", ["avx2", "avx512"])
def test_every_layout_on_every_pattern(monkeypatch, isa_name):
    """Each packed layout forced (the benchmark does; otherwise a cost estimate picks one), through the
    batch-1 kernels on every pattern; a layout the data do not allow (2:4 on other data) falls back."""
    monkeypatch.setenv("GRAPHPRUNE_KERNELS_ISA", isa_name)
    monkeypatch.setenv("GRAPHPRUNE_KERNELS_SPMM_MIN_M", "1000000")
    shapes = [((1,), 37, 19), ((1,), 64, 40), ((3,), 130, 70), ((1,), 9, 8)]
    for layout in ("csr", "sell", "nm24", "blkn"):
        monkeypatch.setenv("GRAPHPRUNE_KERNELS_LAYOUT", layout)
        assert _run_all("SparseMatMul", shapes) == len(shapes) * len(PATTERNS)
    # 2:4 on a few rows at once (up to 8 per pass on AVX-512, 4 on AVX2, then several passes)
    monkeypatch.setenv("GRAPHPRUNE_KERNELS_SPMM_MIN_M", "2")
    monkeypatch.setenv("GRAPHPRUNE_KERNELS_LAYOUT", "nm24")
    nm = [p for p in PATTERNS if p[0] == "2:4"]
    assert _run_all("SparseMatMul", [((3,), 130, 70), ((2, 5), 66, 24), ((11,), 40, 33), ((16,), 9, 17)],
                    patterns=nm) == 4
    assert _run_all("SparseConv", CONV_SHAPES, patterns=nm) == len(CONV_SHAPES)  # images as rows


def test_edge_weights_and_sizes(monkeypatch):
    """An all-zero weight (nnz = 0), one output, K beyond uint16 indices (CSR and SpMM paths), each layout."""
    rng = np.random.default_rng(11)
    big = np.zeros((3, 70000), np.float32)
    big[:, rng.integers(0, 70000, 50)] = rng.standard_normal(50)
    for layout in ("", "sell", "nm24", "blkn"):
        monkeypatch.setenv("GRAPHPRUNE_KERNELS_LAYOUT", layout)
        for W in (np.zeros((5, 12), np.float32), rng.standard_normal((1, 9)).astype(np.float32), big):
            b = rng.standard_normal(W.shape[0]).astype(np.float32)
            for M in (1, 3):
                X = rng.standard_normal((M, W.shape[1])).astype(np.float32)
                m = kernels.single_op_model("SparseMatMul", W, b)
                _check(_session(m).run(None, {"X": X})[0], _ref_matmul(X, W, b))


def test_one_session_run_from_several_threads():
    """Kernels keep no per-call state (scratch is per thread): concurrent runs of one session agree."""
    from concurrent.futures import ThreadPoolExecutor
    rng = np.random.default_rng(12)
    W = _weights(rng, _unstructured(rng, 200, 300, 0.2))
    b = rng.standard_normal(200).astype(np.float32)
    sess = _session(kernels.single_op_model("SparseMatMul", W, b))
    xs = [rng.standard_normal((M, 300)).astype(np.float32) for M in (1, 5, 40, 7, 1, 64)] * 3
    with ThreadPoolExecutor(4) as ex:
        ys = list(ex.map(lambda X: sess.run(None, {"X": X})[0], xs))
    for X, y in zip(xs, ys):
        _check(y, _ref_matmul(X, W, b))


def test_pack_unpack_roundtrip():
    rng = np.random.default_rng(1)
    W = _weights(rng, _unstructured(rng, 11, 29, 0.3))
    v, i, p = kernels.pack_csr(W)
    assert v.dtype == np.float32 and i.dtype == np.int32 and p.dtype == np.int32
    assert p[0] == 0 and p[-1] == len(v) == np.count_nonzero(W) and len(p) == 12
    for n in range(11):
        assert np.all(np.diff(i[p[n]:p[n + 1]]) > 0)
    np.testing.assert_array_equal(kernels.unpack_csr(v, i, p, 29), W)
    assert kernels.pack_csr(np.zeros((3, 4), np.float32))[2].tolist() == [0, 0, 0, 0]


def test_bad_weights_give_a_clear_error():
    rng = np.random.default_rng(2)
    W = _weights(rng, _unstructured(rng, 6, 10, 0.5))
    m = kernels.single_op_model("SparseMatMul", W)
    idx = next(t for t in m.graph.initializer if t.name == "indices")
    arr = np.frombuffer(idx.raw_data, np.int32).copy()
    arr[0] = 99
    idx.raw_data = arr.tobytes()
    with pytest.raises(Exception, match=r"outside \[0, K=10\)"):
        _session(m)
    m = kernels.single_op_model("SparseMatMul", W)
    idx = next(t for t in m.graph.initializer if t.name == "indices")
    ptr = np.frombuffer(next(t for t in m.graph.initializer if t.name == "indptr").raw_data, np.int32)
    n = int(np.argmax(np.diff(ptr) >= 2))  # an output with two indices: swap them
    arr = np.frombuffer(idx.raw_data, np.int32).copy()
    arr[ptr[n]], arr[ptr[n] + 1] = arr[ptr[n] + 1], arr[ptr[n]]
    idx.raw_data = arr.tobytes()
    with pytest.raises(Exception, match=r"not strictly ascending"):
        _session(m)
    m = kernels.single_op_model("SparseMatMul", W, x_shape=["M", "k"])
    with pytest.raises(Exception, match=r"last dimension must be K = 10"):
        _session(m).run(None, {"X": np.zeros((1, 9), np.float32)})


def test_model_without_the_library_explains_how_to_load_it():
    W = np.eye(4, dtype=np.float32)
    m = kernels.single_op_model("SparseMatMul", W)
    assert kernels.uses_kernels(m)
    with pytest.raises(Exception) as ei:
        ort.InferenceSession(m.SerializeToString())
    msg = kernels.explain_load_error(ei.value)
    assert msg is not None and "session_options()" in msg and "register_custom_ops_library" in msg
    assert kernels.explain_load_error(ValueError("unrelated")) is None


def test_fresh_build_and_api_version_mismatch(tmp_path, capfd):
    """A build from scratch into an empty cache; built to require an impossible C API version, registration
    fails naming both versions."""
    lib = kernels.build(defines=["GP_ORT_API_VERSION=999"], cache=tmp_path, opt="-O0")
    assert lib.is_file() and str(lib).startswith(str(tmp_path))
    assert "building the sparse kernels" in capfd.readouterr().err
    assert kernels.build(defines=["GP_ORT_API_VERSION=999"], cache=tmp_path, opt="-O0") == lib  # cached: no rebuild
    assert capfd.readouterr().err == ""
    assert [p.name for p in lib.parent.iterdir()] == [kernels.LIB_NAME]  # no temporary left behind
    with pytest.raises(kernels.KernelsError) as ei:
        kernels.register(ort.SessionOptions(), str(lib))
    msg = str(ei.value)
    assert "API version 999" in msg and ort.__version__ in msg
    have = int(msg.split("provides API version ")[1].split(";")[0])
    assert 17 <= have < 999


def test_no_compiler_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("CC", "/nonexistent/cc")
    with pytest.raises(kernels.KernelsError, match="no C compiler found"):
        kernels.build(cache=tmp_path)


def test_missing_sources_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("GRAPHPRUNE_KERNELS_SRC", str(tmp_path))
    monkeypatch.setattr(kernels, "__file__", str(tmp_path / "pkg" / "kernels.py"))
    with pytest.raises(kernels.KernelsError, match="GRAPHPRUNE_KERNELS_SRC"):
        kernels.source_dir()


def test_sources_ship_as_package_data():
    """A non-editable install carries the C sources: graphprune/_kernels (a symlink to kernels/) holds them
    and pyproject's package-data globs cover every one."""
    import ast
    import fnmatch
    import pathlib
    root = pathlib.Path(kernels.__file__).resolve().parent.parent
    text = (root / "pyproject.toml").read_text()
    section = text.split("[tool.setuptools.package-data]", 1)[1]
    line = next(ln for ln in section.splitlines() if ln.startswith("graphprune ="))
    globs = ast.literal_eval(line.split("=", 1)[1].strip())
    pkg = pathlib.Path(kernels.__file__).parent / "_kernels"
    for f in kernels.SOURCES + kernels.CUDA_SOURCES:
        assert (pkg / f).is_file(), f
        assert any(fnmatch.fnmatch("_kernels/" + f, g) for g in globs), f


def test_cli_prints_the_library_path_last():
    r = subprocess.run([sys.executable, "-m", "graphprune", "kernels"], capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert r.returncode == 0, r.stderr
    last = r.stdout.strip().splitlines()[-1]
    assert last == kernels.library_path() and os.path.isfile(last)


@pytest.mark.slow
def test_benchmark_tools_run(tmp_path):
    """tools/sparse_bench.py and tools/gpu_check.py --cpu-dry-run on tiny shapes: they run, their sparse
    results match dense, and they write what they say."""
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    out = tmp_path / "bench.json"
    r = subprocess.run([sys.executable, "tools/sparse_bench.py", "--shapes", "64x96", "--rows", "1,3",
                        "--patterns", "u90,2:4,1x8", "--threads", "1", "--pairs", "2", "--budget-mb", "0.1",
                        "--json", str(out)], capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr
    import json
    rows = json.load(open(out))["rows"]
    assert len(rows) == 6 and all(row["rel_err"] <= 1e-4 and row["speedup"] > 0 for row in rows)
    r = subprocess.run([sys.executable, "tools/sparse_bench.py", "--op", "conv", "--shapes", "16x24", "--rows", "5",
                        "--patterns", "u90", "--threads", "1", "--pairs", "2"], capture_output=True, text=True, env=env)
    assert r.returncode == 0 and "WARNING" not in r.stdout, r.stdout + r.stderr
    r = subprocess.run([sys.executable, "tools/gpu_check.py", "--cpu-dry-run", "--no-time", "--patterns", "u90,2:4"],
                       capture_output=True, text=True, env=env)
    assert r.returncode == 0 and "BAD" not in r.stdout, r.stdout + r.stderr
