"""A few real ``python -m graphprune`` processes in the default tier (the CLI tests that take the
``gp`` fixture run in-process there and as subprocesses only in the slow tier): a success, a bad
input and an unwritable output, each with its exit code, stderr without a traceback, the input
untouched and the output folder holding the finished files only (atomic write, no temp file)."""

import hashlib
import json
import os

import onnx

from graphprune.demo import build_demo_model
from helpers_graphs import assert_one_line_error, run_cli_subprocess


def _sha(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def test_real_process_success_and_failures(tmp_path):
    src = tmp_path / "in" / "demo.onnx"
    src.parent.mkdir()
    onnx.save(build_demo_model(seed=0), str(src))
    before = _sha(src)
    out = tmp_path / "out"
    out.mkdir()

    r = run_cli_subprocess("run", src, "-o", out / "p.onnx", "--no-bench", "-q")
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr and "graphprune: error" not in r.stderr
    assert sorted(os.listdir(out)) == ["p.onnx", "p.report.json"]
    assert json.loads((out / "p.report.json").read_text())["verify"]["passed"]
    onnx.checker.check_model(onnx.load(str(out / "p.onnx")), full_check=True)

    r = run_cli_subprocess("run", tmp_path / "in" / "missing.onnx", "-o", out / "q.onnx")
    assert_one_line_error(r, 3, "missing.onnx")

    r = run_cli_subprocess("run", src, "-o", out / "no" / "such" / "folder" / "q.onnx", "--no-bench")
    assert_one_line_error(r, 4)

    assert sorted(os.listdir(out)) == ["p.onnx", "p.report.json"]      # nothing partial
    assert _sha(src) == before and os.listdir(src.parent) == ["demo.onnx"]
