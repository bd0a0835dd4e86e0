"""Execution providers (--provider cpu|cuda|tensorrt, --device N): every session graphprune
builds runs on the chosen provider; an unavailable provider is a one-line usage error, and a
session onnxruntime builds without it is an error too, never a silent fall back to the CPU.

No GPU is attached to this project's machines: the GPU paths are checked by giving onnxruntime's
entry points stand-ins that record what graphprune asks for (tools/gpu_check.py runs the real
thing on a GPU machine)."""

import onnxruntime as ort
import pytest

from graphprune import runtime
from graphprune.demo import build_demo_model
from graphprune.errors import UsageError
from graphprune.pipeline import Options, prune
from helpers_graphs import run_cli_in_process


class _FakeSession:
    """Records the providers it was asked for; reports ``chosen`` as the ones it enabled."""
    made = []

    def __init__(self, model, sess_options=None, providers=None, chosen=None):
        self.providers = providers
        self.chosen = chosen
        _FakeSession.made.append(self)

    def get_providers(self):
        return self.chosen if self.chosen is not None else [p if isinstance(p, str) else p[0] for p in self.providers]


@pytest.fixture()
def gpu_onnxruntime(monkeypatch):
    """onnxruntime as onnxruntime-gpu on a GPU machine would present itself."""
    monkeypatch.setattr(ort, "get_available_providers",
                        lambda: ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"])
    _FakeSession.made = []
    monkeypatch.setattr(ort, "InferenceSession", _FakeSession)
    return _FakeSession


def test_cpu_is_the_default_and_always_available():
    assert runtime.current_provider() == ("cpu", 0)
    assert runtime.provider_list() == ["CPUExecutionProvider"]
    runtime.check_provider("cpu")
    res = prune(build_demo_model(), Options(ratio=0.5, provider="cpu", bench=False))
    assert res.report["verify"]["passed"]


def test_unavailable_provider_is_one_line_usage_error(monkeypatch):
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CPUExecutionProvider"])
    with pytest.raises(UsageError) as e:
        runtime.check_provider("cuda")
    msg = str(e.value)
    assert "\n" not in msg and "CUDAExecutionProvider" in msg and "onnxruntime-gpu" in msg
    assert "available: CPUExecutionProvider" in msg
    with pytest.raises(UsageError, match="unknown provider"):
        runtime.check_provider("rocm")
    with pytest.raises(UsageError, match="--device"):
        runtime.check_provider("cpu", -1)
    with pytest.raises(UsageError, match="TensorrtExecutionProvider"):
        Options(provider="tensorrt").check()


def test_cli_provider_errors(monkeypatch, tmp_path):
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CPUExecutionProvider"])
    out = tmp_path / "o.onnx"
    r = run_cli_in_process("run", "--demo", "-o", str(out), "--provider", "cuda", "-q", cwd=str(tmp_path))
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert [ln for ln in r.stderr.splitlines() if ln.startswith("graphprune: error")][0].count("CUDA") >= 1
    assert "Traceback" not in r.stderr and not out.exists()
    r = run_cli_in_process("run", "--demo", "-o", str(out), "--provider", "npu", cwd=str(tmp_path))
    assert r.returncode == 2
    r = run_cli_in_process("verify", "a.onnx", "b.onnx", "--plan", "p.json", "--provider", "tensorrt",
                           cwd=str(tmp_path))
    assert r.returncode == 2 and "TensorrtExecutionProvider" in r.stderr


def test_sessions_ask_for_the_chosen_gpu(gpu_onnxruntime):
    model = build_demo_model()
    with runtime.use_provider("cuda", 1):
        assert runtime.current_provider() == ("cuda", 1)
        runtime.make_session(model)
    assert runtime.current_provider() == ("cpu", 0)          # restored after the block
    (s,) = gpu_onnxruntime.made
    assert s.providers == [("CUDAExecutionProvider", {"device_id": 1}), "CPUExecutionProvider"]

    gpu_onnxruntime.made = []
    with runtime.use_provider("tensorrt", 0):
        runtime.make_session(model)
    trt, cuda, cpu = gpu_onnxruntime.made[0].providers
    assert trt[0] == "TensorrtExecutionProvider" and trt[1]["trt_sparsity_enable"] is True
    assert cuda[0] == "CUDAExecutionProvider" and cpu == "CPUExecutionProvider"


def test_no_silent_fall_back(monkeypatch, gpu_onnxruntime):
    """onnxruntime-gpu builds a CPU-only session when CUDA cannot start: that is an error."""
    monkeypatch.setattr(ort, "InferenceSession",
                        lambda m, sess_options=None, providers=None: _FakeSession(
                            m, sess_options, providers, chosen=["CPUExecutionProvider"]))
    with runtime.use_provider("cuda"):
        with pytest.raises(UsageError, match="not falling back"):
            runtime.make_session(build_demo_model())


def test_latency_cache_is_keyed_by_provider(gpu_onnxruntime):
    from graphprune.latency import machine_key

    cpu = machine_key(1)
    with runtime.use_provider("cuda", 0):
        gpu = machine_key(1)
    assert "CPUExecutionProvider" in cpu and "CUDAExecutionProvider:0" in gpu
