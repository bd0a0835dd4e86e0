"""Record, then re-check, graphprune's MAC and parameter counts over every ONNX model at hand.

A guard for changes to ``graphprune/count.py`` (or the shape resolution it uses): record the
counts of the current code once, change the code, check that every number is still the same.

    python tools/count_check.py record [--out FILE] [--fuzz 300] [--no-export] [--no-prune]
    python tools/count_check.py check  [--out FILE] [--fuzz 300] [--no-export] [--no-prune]

Models (each is a key of the JSON):

* ``exports/*``   tests/data/exports/*.onnx (the committed reference exports);
* ``refmodels/*`` every refmodels model (refmodels/cnn.py, transformers.py, MiniLM, tiny BERT)
  by both torch exporters (plus the resnext variants), exported once into the work folder
  (``--work``, default ~/.cache/graphprune-count-check) so record and check read the same
  files; refmodels/keras_encoder.onnx;
* ``pruned/*``    each committed export pruned at ratio 0.5 (defaults otherwise), written once
  into the work folder (the callers count pruned models too);
* ``wild/*``      the graphs of tests/wild_graphs.py;
* ``fuzz/I``      ``build_case(RngChooser([0, I]))`` of tests/fuzz_graphs.py, I < ``--fuzz``;
* ``demo``        graphprune.demo's model;
* ``zoo/*``       every ``*.onnx`` under ~/.cache/graphprune-zoo (``--zoo``), the dense exports
  and the pruned outputs of a tools/zoo.py sweep, whatever is there when it runs.

For each model and each input feed the callers use -- none (report, tests), ``count_feed(m, 64)``
(pipeline, latency, sparsify, finetune) and ``random_inputs(m, seed=0)`` (tools/zoo.py, tests) --
it records ``count_macs_params`` and ``macs_by_node``, the number of onnxruntime sessions the
two calls created (a change must not run a model the old code did not run), the warnings they
gave, and the time of ``count_macs_params``. ``check`` recounts and compares: exit 1 when any MAC / parameter count, per-node
count or session count differs from the record (models missing from either side are listed,
not failures: the zoo folder grows while a sweep runs). Warnings are compared and reported, not
failures; times are summed per model and the slowest models listed.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys
import time
import warnings

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests")]

import onnx  # noqa: E402

from graphprune import count, inputs, runtime  # noqa: E402
from graphprune.pipeline import count_feed  # noqa: E402

FEEDS = ("none", "count_feed", "random")


# ------------------------------------------------------------------------------ models
def _refmodel_specs():
    from helpers_graphs import TRANSFORMER_NAMES
    from refmodels.cnn import REGISTRY

    specs = [(n, e, None) for n in list(REGISTRY) + list(TRANSFORMER_NAMES) for e in ("legacy", "dynamo")]
    specs += [("resnext", e, v) for e in ("legacy", "dynamo") for v in ("bn-kept", "dynamic-batch", "opset13", "opset21")]
    return specs


def export_refmodels(work: str) -> None:
    """Export every refmodels model not yet in ``work`` (a failed export leaves a .err file)."""
    from helpers_graphs import export_file_name, export_reference

    d = os.path.join(work, "refmodels")
    os.makedirs(d, exist_ok=True)
    for name, exporter, variant in _refmodel_specs():
        path = os.path.join(d, export_file_name(name, exporter, variant))
        if os.path.exists(path) or os.path.exists(path + ".err"):
            continue
        t = time.time()
        try:
            export_reference(name, exporter, path, variant)
            print(f"exported {path} ({time.time() - t:.0f} s)", flush=True)
        except Exception as e:  # an exporter that cannot handle a model: not ours to check
            with open(path + ".err", "w") as f:
                f.write(f"{type(e).__name__}: {e}\n")
            print(f"export failed {path}: {type(e).__name__}", flush=True)


def prune_exports(work: str) -> None:
    """Prune each committed export at ratio 0.5 into ``work``/pruned (once)."""
    from graphprune.pipeline import Options, prune

    d = os.path.join(work, "pruned")
    os.makedirs(d, exist_ok=True)
    for src in sorted(glob.glob(os.path.join(ROOT, "tests", "data", "exports", "*.onnx"))):
        path = os.path.join(d, os.path.basename(src))
        if os.path.exists(path) or os.path.exists(path + ".err"):
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                res = prune(onnx.load(src), Options(ratio=0.5, bench=False, verify=False))
            onnx.save(res.model, path)
            print(f"pruned {path}", flush=True)
        except Exception as e:
            with open(path + ".err", "w") as f:
                f.write(f"{type(e).__name__}: {e}\n")
            print(f"prune failed {path}: {type(e).__name__}", flush=True)


def models(args):
    """(key, loader) for every model, in a fixed order."""
    out = []
    for p in sorted(glob.glob(os.path.join(ROOT, "tests", "data", "exports", "*.onnx"))):
        out.append(("exports/" + os.path.basename(p), lambda p=p: onnx.load(p)))
    for p in sorted(glob.glob(os.path.join(args.work, "refmodels", "*.onnx"))):
        out.append(("refmodels/" + os.path.basename(p), lambda p=p: onnx.load(p)))
    keras = os.path.join(ROOT, "refmodels", "keras_encoder.onnx")
    if os.path.exists(keras):
        out.append(("refmodels/keras_encoder.onnx", lambda: onnx.load(keras)))
    for p in sorted(glob.glob(os.path.join(args.work, "pruned", "*.onnx"))):
        out.append(("pruned/" + os.path.basename(p), lambda p=p: onnx.load(p)))
    import wild_graphs

    for name, make in wild_graphs.ALL.items():
        out.append(("wild/" + name, make))
    from fuzz_graphs import RngChooser, build_case

    for i in range(args.fuzz):
        out.append((f"fuzz/{i}", lambda i=i: build_case(RngChooser([0, i])).model))
    from graphprune.demo import build_demo_model

    out.append(("demo", build_demo_model))
    if args.zoo and os.path.isdir(args.zoo):
        for p in sorted(glob.glob(os.path.join(args.zoo, "**", "*.onnx"), recursive=True)):
            out.append(("zoo/" + os.path.relpath(p, args.zoo), lambda p=p: onnx.load(p)))
    return out


# ------------------------------------------------------------------------------ counting
class _Sessions:
    """Counts onnxruntime sessions made through graphprune.runtime.session while active."""

    def __init__(self):
        self.n = 0
        self._orig = runtime.session

    def __enter__(self):
        def wrapped(*a, **k):
            self.n += 1
            return self._orig(*a, **k)

        runtime.session = wrapped
        return self

    def __exit__(self, *exc):
        runtime.session = self._orig


def _feed(model, kind):
    if kind == "none":
        return None
    if kind == "count_feed":
        return count_feed(model, 64)
    return inputs.random_inputs(model, seed=0)


def measure(model) -> dict:
    rec = {}
    for kind in FEEDS:
        try:
            feed = _feed(model, kind)
        except Exception as e:
            rec[kind] = {"feed_error": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"}
            continue
        with warnings.catch_warnings(record=True) as caught, _Sessions() as s:
            warnings.simplefilter("always")
            t = time.perf_counter()
            try:
                macs, params = count.count_macs_params(model, feed)
                t_count = time.perf_counter() - t
                by_node = count.macs_by_node(model, feed)
            except Exception as e:
                rec[kind] = {"error": f"{type(e).__name__}: {e}"}
                continue
        rec[kind] = {"macs": int(macs), "params": int(params), "by_node": by_node, "sessions": s.n,
                     "warnings": sorted({str(w.message).splitlines()[0] for w in caught}), "seconds": t_count}
    return rec


def run(args) -> dict:
    if not args.no_export:
        export_refmodels(args.work)
    if not args.no_prune:
        prune_exports(args.work)
    result = {}
    ms = [(k, f) for k, f in models(args) if not args.only or args.only in k]
    for k, (key, load) in enumerate(ms):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                m = load()
        except Exception as e:
            result[key] = {"load_error": f"{type(e).__name__}: {e}"}
            continue
        result[key] = measure(m)
        if args.verbose:
            print(f"[{k + 1}/{len(ms)}] {key}: " + ", ".join(
                f"{f}={r.get('macs', r.get('error', r.get('feed_error')))}" for f, r in result[key].items()), flush=True)
    return result


# ------------------------------------------------------------------------------ compare
COMPARED = ("macs", "params", "by_node", "sessions", "error", "feed_error")


def compare(old: dict, new: dict) -> int:
    only_old = sorted(set(old) - set(new))
    only_new = sorted(set(new) - set(old))
    both = [k for k in new if k in old]
    bad, warn_diffs = [], []
    t_old = t_new = 0.0
    slow = []
    for key in both:
        o, n = old[key], new[key]
        if "load_error" in o or "load_error" in n:
            if o.get("load_error") != n.get("load_error"):
                bad.append(f"{key}: load {o.get('load_error')} -> {n.get('load_error')}")
            continue
        to = tn = 0.0
        for kind in FEEDS:
            ro, rn = o.get(kind, {}), n.get(kind, {})
            for field in COMPARED:
                if ro.get(field) != rn.get(field):
                    if field == "by_node" and isinstance(ro.get(field), dict) and isinstance(rn.get(field), dict):
                        a, b = ro[field], rn[field]
                        diff = {x: (a.get(x), b.get(x)) for x in set(a) | set(b) if a.get(x) != b.get(x)}
                        shown = dict(list(sorted(diff.items()))[:5])
                        bad.append(f"{key} [{kind}] by_node: {len(diff)} nodes differ, e.g. {shown}")
                    else:
                        bad.append(f"{key} [{kind}] {field}: {ro.get(field)} -> {rn.get(field)}")
            if ro.get("warnings") != rn.get("warnings"):
                warn_diffs.append(f"{key} [{kind}] warnings: {ro.get('warnings')} -> {rn.get('warnings')}")
            to += ro.get("seconds", 0.0)
            tn += rn.get("seconds", 0.0)
        t_old += to
        t_new += tn
        slow.append((to, tn, key))
    n_counts = sum(1 for k in both for f in FEEDS if "macs" in new[k].get(f, {}))
    print(f"{len(both)} models compared ({n_counts} counts over {len(FEEDS)} feeds); "
          f"{len(only_old)} only in the record, {len(only_new)} only in this run")
    for k in only_old:
        print(f"  only in the record: {k}")
    for k in only_new:
        print(f"  only in this run: {k}")
    print(f"count_macs_params time over the compared models: {t_old:.1f} s recorded, {t_new:.1f} s now")
    for to, tn, key in sorted(slow, reverse=True)[:8]:
        print(f"  {key}: {to:.2f} s -> {tn:.2f} s")
    for w in warn_diffs:
        print("  warning text differs: " + w)
    for b in bad:
        print("DIFFERS " + b)
    print("all equal" if not bad else f"{len(bad)} differences")
    return 1 if bad else 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("mode", choices=("record", "check"))
    ap.add_argument("--work", default=os.path.expanduser("~/.cache/graphprune-count-check"),
                    help="folder for the refmodels exports, pruned exports and the record")
    ap.add_argument("--out", default=None, help="the record (default WORK/baseline.json)")
    ap.add_argument("--zoo", default=os.path.expanduser("~/.cache/graphprune-zoo"))
    ap.add_argument("--fuzz", type=int, default=300, help="fuzz cases (default 300)")
    ap.add_argument("--no-export", action="store_true", help="do not export missing refmodels")
    ap.add_argument("--no-prune", action="store_true", help="do not prune missing committed exports")
    ap.add_argument("--only", default=None, help="only models whose key contains this")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args(argv)
    out = args.out or os.path.join(args.work, "baseline.json")
    os.makedirs(args.work, exist_ok=True)
    new = run(args)
    if args.mode == "record":
        with open(out, "w") as f:
            json.dump(new, f, indent=0, sort_keys=True)
        n = sum(1 for v in new.values() if "load_error" not in v)
        print(f"recorded {n} models to {out}")
        return 0
    with open(out) as f:
        old = json.load(f)
    if args.only:
        old = {k: v for k, v in old.items() if args.only in k}
    return compare(old, new)


if __name__ == "__main__":
    sys.exit(main())
