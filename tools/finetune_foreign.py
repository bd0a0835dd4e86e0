"""Fine-tuning models that did not come from PyTorch, end to end through the CLI:

  - PaddleOCR's text-direction classifier (paddle2onnx, shipped in the rapidocr-onnxruntime 1.4.4
    wheel; weights in Constant nodes), on synthetic text-line images (dark glyph-like blocks on a
    light background, upright and rotated by 180 degrees, PaddleOCR's [-1, 1] normalisation);
  - the tf2onnx Keras encoder (refmodels/keras_encoder.onnx), on Gaussian inputs, --static-batch 1.

For each: `graphprune run --target-macs 0.5 --calib C --repair lstsq --finetune-data D`, and the
report's agreement with the dense model (cosine, relative error) on held-out samples before and
after distillation, plus the top-1 agreement of the classifier.

    python tools/finetune_foreign.py [--cache DIR] [--models ppocr_cls keras] [--epochs 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import zipfile

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tools"))


def text_lines(n: int, seed: int, h: int = 48, w: int = 192) -> np.ndarray:
    rng = np.random.default_rng(seed)
    out = np.ones((n, 3, h, w), np.float32)
    for i in range(n):
        x = rng.integers(2, 12)
        top, height = rng.integers(6, 14), rng.integers(20, 34)
        while x < w - 8:
            cw = int(rng.integers(4, 16))
            sub = rng.integers(0, 3)
            for _ in range(sub + 1):     # a glyph: a few strokes
                y0 = top + rng.integers(0, height // 2)
                y1 = min(h - 2, y0 + rng.integers(3, height))
                x0 = x + rng.integers(0, max(cw - 2, 1))
                x1 = min(w - 1, x0 + rng.integers(2, cw + 1))
                out[i, :, y0:y1, x0:x1] = -1.0 + 0.3 * rng.random()
            x += cw + int(rng.integers(1, 6))
        if rng.random() < 0.5:
            out[i] = out[i, :, ::-1, ::-1]
    out += 0.05 * rng.standard_normal(out.shape).astype(np.float32)
    return out


def run(args, label, model, data, calib, extra=()):
    out = os.path.join(args.tmp, f"{label}.ft.onnx")
    cmd = [sys.executable, "-m", "graphprune", "run", model, "-o", out, "--target-macs", "0.5", "--calib", calib,
           "--repair", "lstsq", "--finetune-data", data, "--finetune-epochs", str(args.epochs), "--finetune-lr",
           str(args.lr), "--finetune-batch", "32", "--threads", str(args.threads), "--no-bench", "-q", *extra]
    env = dict(os.environ, PYTHONPATH=ROOT)
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if r.returncode:
        raise RuntimeError(r.stderr[-2000:])
    rep = json.load(open(out[:-5] + ".report.json"))
    ft = rep["finetune"]
    row = {"model": label, "cmd": " ".join(["graphprune"] + cmd[3:]), "macs": rep["macs"]["after"] / rep["macs"]["before"],
           "verify": rep["verify"]["passed"], "steps": ft["steps"], "seconds": ft["seconds"],
           "before": ft["agreement"]["before"], "after": ft["agreement"]["after"],
           "repair": rep.get("repair", {}).get("agreement")}
    return row, out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cache", default=os.path.join(tempfile.gettempdir(), "graphprune-coverage"))
    ap.add_argument("--models", nargs="+", default=["ppocr_cls", "keras"])
    ap.add_argument("--epochs", type=float, default=3)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    a.tmp = tempfile.mkdtemp()
    rows = []
    if "ppocr_cls" in a.models:
        from converter_coverage import wheel
        whl = wheel(a.cache, "rapidocr-onnxruntime==1.4.4")
        model = os.path.join(a.tmp, "cls.onnx")
        with zipfile.ZipFile(whl) as z:
            open(model, "wb").write(z.read("rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx"))
        np.savez(os.path.join(a.tmp, "cls_data.npz"), x=text_lines(1024, 0))
        np.savez(os.path.join(a.tmp, "cls_calib.npz"), x=text_lines(128, 1))
        row, out = run(a, "PP-OCR cls (paddle2onnx)", model, os.path.join(a.tmp, "cls_data.npz"),
                       os.path.join(a.tmp, "cls_calib.npz"))
        # top-1 agreement with the dense classifier on fresh synthetic lines
        from graphprune import bench
        from graphprune.io import load_model
        x = text_lines(256, 2)
        d = next(iter(bench.run_model(load_model(model), {"x": x}).values())).argmax(1)
        row["top1_agree_after"] = float((next(iter(bench.run_model(load_model(out), {"x": x}).values())).argmax(1)
                                         == d).mean())
        rows.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)
    if "keras" in a.models:
        rng = np.random.default_rng(0)
        np.savez(os.path.join(a.tmp, "k_data.npz"), x=rng.standard_normal((1024, 16, 32)).astype(np.float32))
        np.savez(os.path.join(a.tmp, "k_calib.npz"), x=rng.standard_normal((64, 16, 32)).astype(np.float32))
        row, _ = run(a, "Keras encoder (tf2onnx)", os.path.join(ROOT, "refmodels", "keras_encoder.onnx"),
                     os.path.join(a.tmp, "k_data.npz"), os.path.join(a.tmp, "k_calib.npz"), ["--static-batch", "1"])
        rows.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)
    print("| model | MACs kept | oracle | distillation | agreement before: cosine / rel. err | after |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        b, f = r["before"], r["after"]
        extra = f"; top-1 agreement {r['top1_agree_after'] * 100:.1f} %" if "top1_agree_after" in r else ""
        print(f"| {r['model']} | {r['macs']:.3f} | {'passed' if r['verify'] else 'FAILED'} | {r['steps']} steps, "
              f"{r['seconds']:.0f} s | {b['cosine']:.4f} / {b['rel_err']:.4f} | {f['cosine']:.4f} / "
              f"{f['rel_err']:.4f}{extra} |")


if __name__ == "__main__":
    main()
