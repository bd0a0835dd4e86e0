"""The CUDA kernels (kernels/cuda/): they compile wherever nvcc exists (no GPU needed), the library they
make loads into a CPU-only onnxruntime and runs its CPU kernels; without nvcc, the documented error."""

import numpy as np
import onnxruntime as ort
import pytest

from graphprune import kernels


def test_cuda_kernels_build_or_say_nvcc_is_missing():
    try:
        kernels.find_nvcc()
    except kernels.KernelsError as e:  # no CUDA toolkit on this machine: the documented message
        assert "nvcc not found" in str(e)
        with pytest.raises(kernels.KernelsError, match="nvcc not found"):
            kernels.build_cuda()
        return
    lib = kernels.build_cuda()  # cached after the first build
    assert lib.name == kernels.CUDA_LIB_NAME and "cuda=yes" in kernels.library_info(str(lib))
    rng = np.random.default_rng(0)
    W = (rng.standard_normal((24, 40)) * (rng.random((24, 40)) < 0.3)).astype(np.float32)
    b = rng.standard_normal(24).astype(np.float32)
    X = rng.standard_normal((3, 40)).astype(np.float32)
    m = kernels.single_op_model("SparseMatMul", W, b)
    sess = ort.InferenceSession(m.SerializeToString(), kernels.register(ort.SessionOptions(), str(lib)),
                                providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(sess.run(None, {"X": X})[0], X @ W.T + b, rtol=1e-4, atol=1e-4)


def test_missing_nvcc_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("NVCC", "/nonexistent/nvcc")
    with pytest.raises(kernels.KernelsError, match="nvcc not found"):
        kernels.build_cuda()
