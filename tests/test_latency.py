"""--target-latency, the per-layer latency model and its cache, sensitivity sweeps, the HTML report."""

import json
import math
import os
import subprocess
import sys
from html.parser import HTMLParser

import numpy as np
import onnx
import pytest

from graphprune import latency
from graphprune.errors import UsageError
from graphprune.pipeline import Analyzed, Options, prune, scores_for
from tests.helpers_graphs import GraphBuilder

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def conv_net(width=40, hidden=16):
    """input (8 channels) -> conv 3x3 (width) -> relu -> conv 1x1 (hidden) -> relu -> GAP -> flatten -> fc."""
    b = GraphBuilder(seed=1)
    x = b.input("x", [1, 8, 16, 16])
    y = b.relu(b.conv(x, 8, width, 3))
    y = b.relu(b.conv(y, width, hidden, 1))
    y = b.node("GlobalAveragePool", [y])
    y = b.node("Flatten", [y], axis=1)
    return b.model(b.gemm(y, hidden, 10))


def mlp(hidden=40):
    b = GraphBuilder(seed=2)
    x = b.input("x", [4, 32])
    h = b.relu(b.gemm(x, 32, hidden))
    return b.model(b.gemm(h, hidden, 8))


def stair_timer(block=8, penalty=1.6, calls=None):
    """Fake layer timings with a staircase: widths are padded to the block, and widths off the
    block cost ``penalty`` times more (the slow fallback kernels)."""
    def t(spec, a, b):
        if calls is not None:
            calls.append((a, b))
        pa, pb = math.ceil(a / block) * block, math.ceil(b / block) * block
        f = 1.0 if (a % block == 0 and b % block == 0) else penalty
        return 1e-4 * pa * pb * f + 0.01
    return t


def linear_timer(spec, a, b):
    return 1e-4 * a * b + 0.01


def _model(m, timer, tmp_path, block=8):
    an = Analyzed(m)
    cache = latency.TimingCache("test-machine", str(tmp_path / "cache"))
    lm = latency.LatencyModel(an, dense_ms=1.0, cache=cache, timer=timer, block=block)
    lm.calibrate(lm.layers_ms)            # the layers are the whole time (the rest: the 5 % floor)
    return an, lm


def _alloc(an, lm, scope="global"):
    scores = scores_for(an, Options())
    return latency._Alloc(lm, an.groups, scores, scope, "mean", (), False, 0.0, None, 1)


def _group_of(an, n):
    return next(g for g in an.groups if g.prunable and len(g.units) == n)


def test_sample_widths_cover_the_staircase():
    w = latency.sample_widths(40, 8)
    assert {8, 16, 24, 32, 40} <= set(w)            # every aligned step (few enough to take all)
    assert any(k % 8 for k in w)                     # and widths off the block
    assert max(w) == 40 and min(w) >= 1
    assert len(latency.sample_widths(2048, 16)) <= latency.ALIGNED_POINTS + latency.UNALIGNED_POINTS + 1


def test_staircase_snapping_picks_the_block_when_faster(tmp_path):
    an, lm = _model(conv_net(), stair_timer(), tmp_path)
    al = _alloc(an, lm)
    g = _group_of(an, 40)
    for k in (17, 19, 23):
        assert al.snap(g, k) == 24                   # 17..23 are slower than 24: snap up to the step
    assert al.snap(g, 24) == 24
    # a MatMul layer is snapped by its timed staircase alone: with padded steps every width of a
    # step costs the same, so the widest (the multiple of the block) is taken ...
    an2, lm2 = _model(mlp(), stair_timer(penalty=1.0), tmp_path / "b")
    al2 = _alloc(an2, lm2)
    g2 = _group_of(an2, 40)
    assert al2.fast_step(g2) == 1
    assert al2.snap(g2, 19) == 24
    # ... and where time falls with every channel, a width is kept as it is
    an3, lm3 = _model(mlp(), linear_timer, tmp_path / "c")
    al3 = _alloc(an3, lm3)
    assert al3.snap(_group_of(an3, 40), 24) == 24
    assert lm3.layers[0].time(32, 23) < lm3.layers[0].time(32, 24)


def test_macs_objective_keeps_more_macs(tmp_path):
    """--latency-objective macs ranks by MACs per ms saved: at the same predicted latency its plan
    keeps at least the MACs the importance ranking keeps."""
    an, lm = _model(conv_net(width=128, hidden=64), stair_timer(), tmp_path)
    scores = scores_for(an, Options())
    plans = {}
    for obj in ("importance", "macs"):
        al = latency._Alloc(lm, an.groups, scores, "global", "mean", (), False, 0.0, None, 1, objective=obj)
        keep, pred = al.at(0.6)
        assert pred <= 0.6
        plans[obj] = lm.macs_fraction(al.removed(keep))
    assert plans["macs"] >= plans["importance"]


def test_latency_model_predicts_from_the_curves(tmp_path):
    an, lm = _model(conv_net(), stair_timer(), tmp_path)
    assert len(lm.layers) == 3
    dense = lm.dense_predicted()
    assert dense == pytest.approx(lm.layers_ms, rel=1e-6)     # calibrated to the measured dense time
    g = _group_of(an, 40)
    on = lm.predict(g.units[:16].tolist())           # 24 kept: on the block
    off = lm.predict(g.units[:17].tolist())          # 23 kept: off the block
    assert on < dense and off > on                   # fewer channels, but the slow fallback
    rows = lm.layer_table(g.units[:20].tolist())
    conv1 = next(r for r in rows if r["cout"][0] == 40)
    assert conv1["cout"] == [40, 20] and conv1["ms"][1] < conv1["ms"][0]
    assert conv1["macs_after"] == conv1["macs"] // 2


def test_cache_hit_on_rerun(tmp_path):
    calls = []
    m = conv_net()
    an, lm = _model(m, stair_timer(calls=calls), tmp_path)
    first = len(calls)
    assert first > 0 and lm.timed == first
    assert os.path.exists(lm.cache.path)
    calls.clear()
    an2, lm2 = _model(m, stair_timer(calls=calls), tmp_path)
    assert calls == [] and lm2.timed == 0 and lm2.cache.hits >= first
    assert lm2.predict(()) == pytest.approx(lm.predict(()))
    # another machine key is another file
    other = latency.TimingCache("other-machine", str(tmp_path / "cache"))
    assert other.path != lm.cache.path and other.data == {}


def test_real_timing_of_one_layer_and_cache(tmp_path):
    """The real timer: one-node models run in onnxruntime; the cache file holds every width."""
    m = conv_net(width=16, hidden=8)
    an = Analyzed(m)
    cache = latency.TimingCache(latency.machine_key(1), str(tmp_path / "cache"))
    lm = latency.LatencyModel(an, dense_ms=0.05, cache=cache, block=8)
    assert lm.timed > 0 and all(l.dense_ms > 0 for l in lm.layers)
    blob = json.load(open(cache.path))
    assert blob["machine"] == latency.machine_key(1) and len(blob["timings"]) >= lm.timed
    lm2 = latency.LatencyModel(an, dense_ms=0.05, cache=latency.TimingCache(latency.machine_key(1),
                                                                            str(tmp_path / "cache")), block=8)
    assert lm2.timed == 0
    # every layer's time inside the whole graph, from onnxruntime's profiler (fused kernels included)
    from graphprune import bench
    prof = latency.profile_layers(an.model, bench.random_inputs(an.model), runs=3)
    assert set(prof) == {l.name for l in lm.layers} and all(v > 0 for v in prof.values())
    lm3 = latency.LatencyModel(an, dense_ms=1.0, cache=cache, block=8, in_graph=prof)
    assert lm3.in_graph == 3
    assert [l.dense_ms for l in lm3.layers] == pytest.approx([prof[l.name] for l in lm3.layers])


@pytest.mark.parametrize("kw", [dict(target_latency=0.0), dict(target_latency=1.5),
                                dict(target_latency=0.5, target_macs=0.5),
                                dict(target_latency=0.5, latency_tolerance=0.0),
                                dict(target_latency=0.5, latency_iterations=0),
                                dict(target_latency=0.5, latency_objective="flops")])
def test_target_latency_option_validation(kw):
    with pytest.raises(UsageError):
        Options(**kw).check()


def _cli(args, capsys):
    """(exit code, stdout, stderr) of the command line, in this process."""
    from graphprune.cli import main

    code = 0
    try:
        main(args)
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def test_target_latency_cli_errors(tmp_path, capsys):
    m = tmp_path / "m.onnx"
    onnx.save(conv_net(), str(m))
    code, _, err = _cli(["run", str(m), "--target-latency", "2"], capsys)
    assert code == 2 and "--target-latency must be in (0, 1]" in err
    assert len(err.strip().splitlines()) == 1
    code, _, err = _cli(["run", str(m), "--target-latency", "0.5", "--target-macs", "0.5"], capsys)
    assert code == 2 and "not both" in err


def test_bisection_converges_on_the_measurement(tmp_path, monkeypatch):
    """The measured bisection corrects a latency model that is off: here the real model is
    20 % slower than predicted, so the predicted target must go down until it lands."""
    from graphprune import bench
    monkeypatch.setattr(bench, "simd_block", lambda: 8)       # the fake staircase's block
    m = conv_net(width=256, hidden=128)
    an, lm = _model(m, stair_timer(), tmp_path)
    scores = scores_for(an, Options())
    opts = Options(target_latency=0.6, latency_timer=stair_timer(), latency_cache=str(tmp_path / "cache"),
                   scope="global", latency_objective="importance")
    seen = []

    def measure(removed):
        f = min(1.0, lm.fraction(removed) * 1.2)
        seen.append(f)
        return f, 1.0
    plan = latency.target_latency_plan(an, scores, opts, measure=measure)
    t = plan.options["target"]
    assert t["latency"] == 0.6 and len(t["iterations"]) == len(seen) >= 2
    assert t["converged"] and abs(t["measured"] / 0.6 - 1) <= 0.05
    assert t["iterations"][-1]["predicted_target"] < t["iterations"][0]["predicted_target"]
    assert plan.removed_units()
    # a tolerance no plan meets (widths move in steps of 8): the closest is kept, and said so
    tight = Options(target_latency=0.6, latency_timer=stair_timer(), latency_cache=str(tmp_path / "cache"),
                    scope="global", latency_tolerance=0.001, latency_objective="importance")
    t2 = latency.target_latency_plan(an, scores, tight, measure=measure).options["target"]
    assert not t2["converged"] and len(t2["iterations"]) <= tight.latency_iterations
    assert abs(t2["measured"] / 0.6 - 1) == min(abs(i["measured"] / 0.6 - 1) for i in t2["iterations"])
    # every pruned conv width is a multiple of the block (the staircase's fast steps)
    for g in an.groups:
        k = int(plan.keep[g.id].sum())
        if k < len(g.units) and any(l.op == "Conv" for l in lm.layers if l.out_units is not None
                                    and set(l.out_units.tolist()) & set(g.units.tolist())):
            assert k % 8 == 0


def test_target_latency_end_to_end_on_a_small_model(tmp_path):
    """Real timing on a small model: the search ran, measured, and reported how it went."""
    from graphprune.demo import build_demo_model

    m = build_demo_model()
    opts = Options(target_latency=0.7, latency_cache=str(tmp_path / "cache"), scope="global",
                   latency_iterations=3, bench_repeats=10)
    res = prune(m, opts)
    rep = res.report
    t = rep["summary"]["target"]
    assert set(t) >= {"latency", "measured", "tolerance", "converged", "iterations", "predicted", "dense_ms", "model"}
    assert 1 <= len(t["iterations"]) <= 3
    assert t["measured"] == pytest.approx(t["iterations"][t["chosen"]]["measured"])
    assert 0.0 < t["remeasured"] < 2.0                   # the chosen plan timed again, fresh sessions
    if t["converged"]:
        assert abs(t["measured"] / 0.7 - 1) <= t["tolerance"]
    assert rep["verify"]["passed"]
    assert rep["layers"] and all({"name", "cin", "cout", "ms", "macs"} <= set(r) for r in rep["layers"])
    assert rep["summary"]["options"]["target_latency"] == 0.7
    # auto: both rankings searched, the one whose outputs agree best (among those that landed) kept
    objs = t["objectives"]
    assert set(objs) == {"importance", "macs"} and t["objective"] in objs
    landed = [o for o in objs if objs[o]["converged"]] or list(objs)
    assert objs[t["objective"]]["cosine"] == max(objs[o]["cosine"] for o in landed)


# --------------------------------------------------------------------------- sensitivity


def _sweep(tmp_path, model_path, **kw):
    from graphprune.sensitivity import SweepConfig, sweep

    cfg = SweepConfig(model=str(model_path), ratios=(0.25, 0.5), samples=2, repeats=3, **kw)
    return sweep(cfg, str(tmp_path / "s.json"), jobs=1)


def test_sensitivity_curves_plan_and_resume(tmp_path):
    from graphprune.io import load_model
    from graphprune.plan import Plan

    mp = tmp_path / "m.onnx"
    onnx.save(conv_net(), str(mp))
    res = _sweep(tmp_path, mp)
    assert res["trials_run"] == len(res["groups"]) * 2 and res["trials_reused"] == 0
    for gid, g in res["groups"].items():
        assert [t["ratio"] for t in g["trials"]] == [0.25, 0.5]
        for t in g["trials"]:
            assert 0.0 < t["latency"] < 5.0 and -1.0 <= t["quality"] <= 1.0 + 1e-9
        assert res["suggested"][gid] in (0.0, 0.25, 0.5)
    lines = (tmp_path / "s.trials.jsonl").read_text().splitlines()
    assert len(lines) == res["trials_run"]
    # the suggested plan is one `prune --plan` accepts
    pj = json.load(open(tmp_path / "s.plan.json"))
    an = Analyzed(load_model(str(mp)))
    Plan.from_json(pj, an.groups)
    res_p = prune(load_model(str(mp)), Options(ratio=0.0, bench=False), plan_json=pj)   # what `prune --plan` runs
    assert res_p.report["verify"]["passed"]
    # a rerun skips every finished trial
    res2 = _sweep(tmp_path, mp)
    assert res2["trials_run"] == 0 and res2["trials_reused"] == res["trials_run"]
    assert res2["suggested"] == res["suggested"]
    # an interrupted run leaves a cut line: it is ignored and that trial runs again
    with open(tmp_path / "s.trials.jsonl", "w") as fh:
        fh.write("\n".join(lines[:-1]) + "\n" + lines[-1][:20])
    res3 = _sweep(tmp_path, mp)
    assert res3["trials_run"] == 1


def test_sensitivity_user_metric(tmp_path):
    mp = tmp_path / "m.onnx"
    onnx.save(conv_net(), str(mp))
    metric = tmp_path / "my_metric.py"
    metric.write_text("import numpy as np\n"
                      "def score(model, feeds):\n"
                      "    return float(sum(1 for n in model.graph.initializer if n.dims and n.dims[0] >= 40))\n")
    res = _sweep(tmp_path, mp, metric=f"{metric}:score")
    assert res["metric_name"].endswith(":score") and res["dense_metric"] >= 1.0
    g40 = next(g for g in res["groups"].values() if g["channels"] == 40)
    assert all(t["metric"] == 0.0 for t in g40["trials"])          # the 40-wide conv shrank
    from graphprune.sensitivity import load_metric
    with pytest.raises(UsageError):
        load_metric("no_colon")
    with pytest.raises(UsageError):
        load_metric(f"{tmp_path / 'missing.py'}:f")


# --------------------------------------------------------------------------- HTML report


class _Ids(HTMLParser):
    def __init__(self):
        super().__init__()
        self.ids, self.tags, self.srcs = set(), [], []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags.append(tag)
        if "id" in a:
            self.ids.add(a["id"])
        for k in ("src", "href"):
            if a.get(k):
                self.srcs.append(a[k])


def _report_and_sens(tmp_path):
    from graphprune.demo import build_demo_model

    m = build_demo_model()
    mp = tmp_path / "demo.onnx"
    onnx.save(m, str(mp))
    opts = Options(target_latency=0.8, latency_timer=stair_timer(), latency_cache=str(tmp_path / "cache"),
                   scope="global", latency_iterations=2, bench_repeats=5, bench=False)
    rep = prune(m, opts).report
    rp = tmp_path / "demo.report.json"
    rp.write_text(json.dumps(rep))
    sens = {"ratios": [0.25, 0.5], "threshold": 0.99, "metric_name": "output cosine",
            "groups": {"0": {"name": "stem", "channels": 16,
                             "trials": [{"ratio": 0.25, "quality": 0.999, "latency": 0.9},
                                        {"ratio": 0.5, "quality": 0.97, "latency": 0.8}]}},
            "suggested": {"0": 0.25}}
    sp = tmp_path / "s.json"
    sp.write_text(json.dumps(sens))
    return rp, sp


def test_report_renders_every_section(tmp_path, capsys):
    rp, sp = _report_and_sens(tmp_path)
    out = tmp_path / "r.html"
    code, _, err = _cli(["report", str(rp), "-o", str(out), "--sensitivity", str(sp), "--runs", str(rp)], capsys)
    assert code == 0, err
    text = out.read_text()
    p = _Ids()
    p.feed(text)
    assert {"summary", "layers", "layer-table", "width-bars", "sensitivity", "sensitivity-table", "tradeoff",
            "groups", "group-table", "latency-target"} <= p.ids
    assert p.tags.count("svg") >= 4                      # widths, two sensitivity charts, trade-off
    assert p.srcs == []                                  # self-contained: nothing loaded from anywhere
    assert "http://" not in text.replace('xmlns="http://www.w3.org/2000/svg"', "") and "https://" not in text
    rep = json.loads(rp.read_text())
    for row in rep["layers"]:
        assert row["name"] in text
    # bad inputs: one line, an error code
    bad = tmp_path / "bad.json"
    bad.write_text("[1]")
    code, _, err = _cli(["report", str(bad)], capsys)
    assert code == 3 and len(err.strip().splitlines()) == 1


def _png_pixels(path):
    """(width, height, rows of RGB(A) bytes) of an 8-bit non-interlaced PNG (what Chromium writes)."""
    import struct
    import zlib

    data = open(path, "rb").read()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, w = 8, b"", None
    while pos < len(data):
        n, kind = struct.unpack(">I4s", data[pos:pos + 8])
        chunk = data[pos + 8:pos + 8 + n]
        if kind == b"IHDR":
            w, h, depth, ctype = struct.unpack(">IIBB", chunk[:10])
            assert depth == 8 and ctype in (2, 6)
            bpp = 3 if ctype == 2 else 4
        elif kind == b"IDAT":
            idat += chunk
        pos += 12 + n
    raw = zlib.decompress(idat)
    stride = w * bpp
    rows, prev = [], bytearray(stride)
    for y in range(h):
        f = raw[y * (stride + 1)]
        line = bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - bpp] if i >= bpp else 0
            b, c = prev[i], (prev[i - bpp] if i >= bpp else 0)
            if f == 1:
                line[i] = (line[i] + a) & 255
            elif f == 2:
                line[i] = (line[i] + b) & 255
            elif f == 3:
                line[i] = (line[i] + (a + b) // 2) & 255
            elif f == 4:
                pa, pb, pc = abs(b - c), abs(a - c), abs(a + b - 2 * c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        rows.append(bytes(line))
        prev = line
    return w, h, bpp, rows


@pytest.mark.slow
def test_report_in_headless_chromium(tmp_path):
    """The page in a real browser: the DOM it builds has every section, and a screenshot of it
    is the requested size, not blank, and shows the blue bars of the width chart."""
    import shutil

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    assert chromium, "chromium is not installed (.ci/run installs Debian's package)"
    rp, sp = _report_and_sens(tmp_path)
    from graphprune.html_report import write_html
    out = tmp_path / "r.html"
    write_html(json.loads(rp.read_text()), str(out), sensitivity=json.loads(sp.read_text()))
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--hide-scrollbars",
             f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run([chromium, *flags, "--dump-dom", out.as_uri()], capture_output=True, text=True,
                         timeout=120).stdout
    p = _Ids()
    p.feed(dom)
    assert {"summary", "layers", "sensitivity", "tradeoff", "groups", "width-bars"} <= p.ids
    png = tmp_path / "shot.png"
    subprocess.run([chromium, *flags, f"--screenshot={png}", "--window-size=1000,1400", out.as_uri()],
                   capture_output=True, timeout=120)
    w, h, bpp, rows = _png_pixels(png)
    assert (w, h) == (1000, 1400)
    colours = set()
    blue = 0
    for row in rows[::7]:
        for x in range(0, w * bpp, bpp * 5):
            px = row[x:x + 3]
            colours.add(px)
            if px == bytes((0x2f, 0x6f, 0xdf)):
                blue += 1
    assert len(colours) > 20                              # not blank
    assert blue > 20                                      # the width bars (#2f6fdf) are drawn


@pytest.mark.slow
def test_sensitivity_in_processes_and_on_ray(tmp_path):
    """--jobs 2 (worker processes) and --ray local give the same trials as one process."""
    mp = tmp_path / "m.onnx"
    onnx.save(conv_net(), str(mp))
    env = dict(os.environ, PYTHONPATH=ROOT)
    outs = {}
    for name, extra in (("one", []), ("procs", ["--jobs", "2"]), ("ray", ["--ray", "local", "--jobs", "2"])):
        o = tmp_path / f"{name}.json"
        r = subprocess.run([sys.executable, "-m", "graphprune", "sensitivity", str(mp), "-o", str(o), "--ratios",
                            "0.25,0.5", "--samples", "2", "--repeats", "3", "-q", *extra],
                           capture_output=True, text=True, env=env, timeout=600)
        assert r.returncode == 0, r.stderr
        outs[name] = json.loads(o.read_text())
    assert outs["ray"]["backend"] == "ray local" and outs["procs"]["backend"] == "processes (2)"
    for name in ("procs", "ray"):
        assert outs[name]["trials_run"] == outs["one"]["trials_run"]
        for gid, g in outs["one"]["groups"].items():
            q1 = [t["cosine"] for t in g["trials"]]
            q2 = [t["cosine"] for t in outs[name]["groups"][gid]["trials"]]
            assert np.allclose(q1, q2, atol=1e-6)         # the same trials, wherever they ran


def test_target_latency_composes_with_calibration_and_repair(tmp_path):
    """A calibration criterion ranks, the latency search allocates, repair refits afterwards; the
    comparison of the two rankings uses the calibration samples."""
    from graphprune.demo import INPUT_NAME, INPUT_SHAPE, build_demo_model

    rng = np.random.default_rng(0)
    feeds = [{INPUT_NAME: rng.standard_normal(INPUT_SHAPE).astype(np.float32)} for _ in range(8)]
    opts = Options(target_latency=0.8, calib=feeds, criterion="activation", repair="lstsq", scope="global",
                   latency_timer=stair_timer(), latency_cache=str(tmp_path / "cache"), bench=False,
                   latency_iterations=2)
    rep = prune(build_demo_model(), opts).report
    t = rep["summary"]["target"]
    assert t["latency"] == 0.8 and t["iterations"] and set(t["objectives"]) == {"importance", "macs"}
    assert rep["summary"]["options"]["criterion"] == "activation"
    assert rep["repair"]["agreement"]["repaired"]["cosine"] is not None
    assert rep["verify"]["passed"]


def test_sensitivity_cli_errors(tmp_path, capsys):
    mp = tmp_path / "m.onnx"
    onnx.save(conv_net(), str(mp))
    for args, code, text in ((["--ratios", "0.5,1.5"], 2, "--ratios must lie in (0, 1)"),
                             (["--ratios", "a,b"], 2, "--ratios must be comma-separated"),
                             (["--metric", "nocolon"], 2, "--metric must be"),
                             (["--jobs", "0"], 2, "--jobs must be >= 1")):
        c, _, err = _cli(["sensitivity", str(mp), "-o", str(tmp_path / "s.json"), *args], capsys)
        assert c == code and text in err and len(err.strip().splitlines()) == 1, (args, err)
    c, _, err = _cli(["sensitivity", str(tmp_path / "missing.onnx")], capsys)
    assert c == 3 and len(err.strip().splitlines()) == 1
