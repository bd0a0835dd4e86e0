"""Latency-aware pruning benchmark: --target-latency against uniform-ratio plans and Torch-Pruning.

For each model of tools/latency_models.py (full-size stand-ins for six torchvision classifiers,
or with ``--torchvision`` torchvision's own modules; 224x224, random weights, exported by torch's
legacy exporter) this script makes, with the
L2-magnitude criterion throughout:

* **graphprune, latency-aware**: ``--target-latency T`` (global allocation, per-layer staircase
  snapping, measured bisection; ``--latency-objective auto``: importance per ms and MACs per ms
  both searched, the plan with the better output agreement on 4 random inputs kept);
* **graphprune, uniform**: ``--target-latency T --scope uniform --round-to auto`` (one ratio for
  every group, bisected on the same measured latency);
* **Torch-Pruning** (``MetaPruner``, ``MagnitudeImportance(p=2)``, local/uniform ratio, the last
  Linear ignored) at the ratio whose MACs equal the latency-aware plan's (two or three steps of a
  (1-r)^2 correction), with its default ``round_to`` and with ``round_to`` = the SIMD block;
* with ``--tp-equal-latency``, Torch-Pruning (``round_to`` = the SIMD block) once more at the
  latency graphprune's plan measures (secant steps on its ratio): the agreement of the two at
  equal speed.

Then, in one process, every pruned model is timed interleaved with the dense one (rotating
order, onnxruntime CPU, 1 thread, the thread's CPU time: see graphprune.latency._clock) and the
medians compared: latency fraction (pruned / dense), MACs kept, realization (speed-up / MACs
ratio) and the output cosine vs the dense model on 4 random inputs (a quality proxy: weights are
random). The machine's load (``os.getloadavg``) is recorded with every model.

Setup (Torch-Pruning in its own venv that sees the project's packages)::

    python -m venv --system-site-packages /tmp/venv-tp && /tmp/venv-tp/bin/pip install torch-pruning

Run::

    PYTHONPATH=$PWD nice -n 5 /tmp/venv-tp/bin/python tools/bench_latency.py --target 0.5 \\
        --json /tmp/bench_latency.json --work /tmp/lat
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import onnx

from tools import latency_models


def _quiet():
    return contextlib.redirect_stdout(io.StringIO())


def tp_prune(name: str, ratio: float, path: str, round_to=None):
    """Torch-Pruning's uniform pruning of the same torch model, exported like the dense one."""
    import torch
    import torch_pruning as tp
    from refmodels.export import export

    torch.set_num_threads(1)
    model, x = latency_models.build(name)
    last = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1]
    with _quiet():
        pruner = tp.pruner.MetaPruner(model, x, importance=tp.importance.MagnitudeImportance(p=2),
                                      pruning_ratio=ratio, ignored_layers=[last], global_pruning=False,
                                      round_to=round_to)
        pruner.step()
    with torch.no_grad():
        model(x)
    export(model, x, path, "legacy")
    return onnx.load(path)


def time_models(dense, others, feed, repeats: int):
    """Median thread-CPU time of each model, all interleaved with the dense one, rotating order."""
    from graphprune import bench
    from graphprune.latency import _clock

    sess = [bench.make_session(m, 1) for m in [dense] + list(others)]
    feeds = [{i.name: feed[i.name] for i in s.get_inputs() if i.name in feed} for s in sess]
    for _ in range(3):
        for s, f in zip(sess, feeds):
            s.run(None, f)
    clock = _clock(1)
    times = [[] for _ in sess]
    order = list(range(len(sess)))
    for r in range(repeats):
        k = order[r % len(order):] + order[:r % len(order)]
        for i in k:
            t0 = clock()
            sess[i].run(None, feeds[i])
            times[i].append(clock() - t0)
    med = [statistics.median(t) for t in times]
    return [m / med[0] for m in med[1:]], med[0] * 1e3


def cosine(dense, model, feeds):
    from graphprune.verify import agreement
    return agreement(dense, model, feeds)["cosine"]


def _tp_at_latency(name: str, dense, feed, out: dict, row: dict, args) -> None:
    """Torch-Pruning with ``round_to`` = the SIMD block at graphprune's *measured latency*
    (secant steps on its uniform ratio, each pruned model timed against the dense one as the
    search times graphprune's): who agrees better with the dense model at the same speed."""
    from graphprune import bench
    from graphprune.latency import measure_fraction

    dsess = bench.make_session(dense, 1)
    want = measure_fraction(dsess, bench.make_session(out["gp"], 1), feed, args.repeats)[0]
    path = os.path.join(args.work, f"{name}.tp_lat.onnx")
    pts, best = [], None
    r = row.get("tp_round", {}).get("ratio", 0.3)
    try:
        for _ in range(5):
            m = tp_prune(name, r, path, round_to=bench.simd_block())
            f = measure_fraction(dsess, bench.make_session(m, 1), feed, args.repeats)[0]
            pts.append((r, f))
            if best is None or abs(f / want - 1) < abs(best[2] / want - 1):
                best = (m, r, f)
            if abs(f / want - 1) < 0.03:
                break
            if len(pts) >= 2 and pts[-1][1] != pts[-2][1]:
                (r0, f0), (r1, f1) = pts[-2], pts[-1]
                r = r1 + (want - f1) * (r1 - r0) / (f1 - f0)
            else:
                r = r + (0.1 if f > want else -0.1)
            r = min(0.95, max(0.0, r))
        out["tp_lat"] = best[0]
        row["tp_lat"] = {"ratio": round(best[1], 4), "round_to": bench.simd_block(), "search_measured": round(best[2], 4),
                         "gp_measured": round(want, 4), "steps": len(pts)}
    except Exception as e:
        row["tp_lat"] = {"error": (str(e).splitlines() or [type(e).__name__])[0][:200]}


def run_model(name: str, args) -> dict:
    from graphprune import bench
    from graphprune.pipeline import Options, prune

    row = {"model": name, "load_before": round(os.getloadavg()[0], 2)}
    path = os.path.join(args.work, f"{name}.onnx")
    if not os.path.exists(path):
        latency_models.export(name, path)
    dense = onnx.load(path)
    feed = bench.random_inputs(dense, seed=0)
    probes = [bench.random_inputs(dense, seed=s) for s in range(1, 5)]
    md = bench.count_macs_params(dense, feed)[0]
    out = {}
    for label, kw in (("gp", dict(scope="global")), ("uniform", dict(scope="uniform", round_to="auto"))):
        t0 = time.perf_counter()
        res = prune(dense, Options(target_latency=args.target, bench=False, verify=True, **kw))
        t = res.report["summary"]["target"]
        out[label] = res.model
        row[label] = {"search_measured": t["measured"], "converged": t["converged"], "steps": len(t["iterations"]),
                      "layer_model_timed": t["model"]["timed"], "seconds": round(time.perf_counter() - t0, 1),
                      "verify": res.report["verify"]["passed"], "objective": t.get("objective"),
                      "objectives": t.get("objectives")}
    mg = bench.count_macs_params(out["gp"], feed)[0]
    # Torch-Pruning at the MACs of graphprune's latency-aware plan
    for label, rt in (() if args.no_tp else (("tp", None), ("tp_round", bench.simd_block()))):
        want = mg / md
        r = 1.0 - want ** 0.5
        best = None
        try:
            for _ in range(3):
                tpm = tp_prune(name, r, os.path.join(args.work, f"{name}.{label}.onnx"), round_to=rt)
                mt = bench.count_macs_params(tpm, feed)[0] / md
                if best is None or abs(mt / want - 1) < abs(best[1] / want - 1):
                    best = (tpm, mt, r)
                if abs(mt / want - 1) < 0.03:
                    break
                r = min(0.95, max(0.0, 1.0 - (1.0 - r) * (want / mt) ** 0.5))
            out[label] = best[0]
            row[label] = {"ratio": round(best[2], 4), "round_to": rt}
        except Exception as e:      # Torch-Pruning refusing a model is a result too
            row[label] = {"error": (str(e).splitlines() or [type(e).__name__])[0][:200]}
    if not args.no_tp and args.tp_equal_latency:
        _tp_at_latency(name, dense, feed, out, row, args)
    labels = list(out)
    fr, dense_ms = time_models(dense, [out[k] for k in labels], feed, args.repeats)
    row["dense_ms_cpu"] = round(dense_ms, 3)
    row["macs_dense"] = int(md)
    for k, f in zip(labels, fr):
        m = bench.count_macs_params(out[k], feed)[0]
        row[k].update({"latency": round(f, 4), "macs_kept": round(m / md, 4), "speedup": round(1 / f, 3),
                       "realization": round((1 / f) / (md / m), 3), "cosine": round(cosine(dense, out[k], probes), 5)})
    for k in ("tp", "tp_round"):
        if k in out:
            row[f"gp_vs_{k}_speedup"] = round(row["gp"]["speedup"] / row[k]["speedup"], 3)
    row["load_after"] = round(os.getloadavg()[0], 2)
    return row


def noise(args) -> None:
    """The same two models (dense mobilenet_v2 and its --target-latency 0.5 pruning) timed
    ``--noise`` times: wall-clock median of per-pair ratios (bench.measure_latency) against the
    thread-CPU-time ratio of medians (latency.measure_fraction), with the load."""
    from graphprune import bench
    from graphprune.latency import measure_fraction
    from graphprune.pipeline import Options, prune

    path = os.path.join(args.work, "mobilenet_v2.onnx")
    if not os.path.exists(path):
        latency_models.export("mobilenet_v2", path)
    dense = onnx.load(path)
    pruned = prune(dense, Options(target_latency=0.5, bench=False, verify=False)).model
    feed = bench.random_inputs(dense, seed=0)
    wall, cpu = [], []
    for _ in range(args.noise):
        wall.append(1.0 / bench.measure_latency(dense, pruned, feed, threads=1, repeats=30)["speedup"])
        cpu.append(measure_fraction(bench.make_session(dense, 1), bench.make_session(pruned, 1), feed, 30)[0])
    print(json.dumps({"load": round(os.getloadavg()[0], 2), "wall_clock": [round(x, 3) for x in wall],
                      "thread_cpu": [round(x, 3) for x in cpu]}))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=list(latency_models.NAMES))
    ap.add_argument("--target", type=float, default=0.5)
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--work", default="/tmp/lat")
    ap.add_argument("--json", default=None)
    ap.add_argument("--no-tp", action="store_true")
    ap.add_argument("--tp-equal-latency", action="store_true",
                    help="also Torch-Pruning round_to=SIMD block at graphprune's measured latency (tp_lat)")
    ap.add_argument("--torchvision", action="store_true",
                    help="torchvision's own modules instead of the stand-ins (a venv with torchvision; "
                         "use another --work folder)")
    ap.add_argument("--noise", type=int, default=0, help="only the timing-noise comparison, this many times")
    args = ap.parse_args(argv)
    if args.torchvision:
        os.environ["GRAPHPRUNE_TORCHVISION"] = "1"
    os.makedirs(args.work, exist_ok=True)
    if args.noise:
        return noise(args)
    rows = []
    for name in args.models:
        t0 = time.perf_counter()
        try:
            row = run_model(name, args)
        except Exception as e:
            row = {"model": name, "error": (str(e).splitlines() or [type(e).__name__])[0][:300]}
        row["wall_s"] = round(time.perf_counter() - t0, 1)
        rows.append(row)
        print(json.dumps(row), flush=True)
        if args.json:
            with open(args.json, "w") as fh:
                json.dump(rows, fh, indent=1)
    print_table(rows)


def print_table(rows):
    print("| model | plan | latency / dense | within ±5 % | MACs kept | speed-up | realization | cosine |")
    print("|---|---|---|---|---|---|---|---|")
    real = {"gp": [], "uniform": [], "tp": [], "tp_round": [], "tp_lat": []}
    for r in rows:
        for k, label in (("gp", "graphprune --target-latency"),
                         ("uniform", "graphprune uniform"),
                         ("tp", "Torch-Pruning (equal MACs)"), ("tp_round", "Torch-Pruning round_to (equal MACs)"),
                         ("tp_lat", "Torch-Pruning round_to (equal latency)")):
            d = r.get(k)
            if not d or "latency" not in d:
                continue
            within = "yes" if abs(d["latency"] / 0.5 - 1) <= 0.05 else "no"
            if d.get("objective") and k == "gp":
                label += f" ({d['objective']})"
            print(f"| {r['model']} | {label} | {d['latency']:.3f} | {within if not k.startswith('tp') else '–'} | "
                  f"{d['macs_kept']:.3f} | {d['speedup']:.2f}x | {d['realization']:.2f} | {d['cosine']:.4f} |")
            real[k].append(d["realization"])
    for k, v in real.items():
        if v:
            print(f"median realization {k}: {statistics.median(v):.3f} ({len(v)} models)")


if __name__ == "__main__":
    main()
