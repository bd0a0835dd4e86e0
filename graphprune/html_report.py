"""One self-contained HTML page from a run's report (and a sensitivity sweep, and other runs).

Everything is inline (CSS, SVG charts, a few lines of JS to sort tables); the page loads
nothing. Sections, each an element with a fixed id the tests look for:

* ``summary``: MACs, parameters, latency before/after, the latency target and how it was met;
* ``layers``: per layer (Conv/Gemm/MatMul) the channel widths before/after, MACs and the
  layer's measured latency before/after (timed alone in onnxruntime, scaled to the whole
  model), with a bar chart of the widths;
* ``sensitivity``: per group, output agreement and latency against the fraction removed, and
  the suggested ratio (from ``graphprune sensitivity``);
* ``tradeoff``: quality against measured latency for every run the page knows (this one, the
  measured steps of its latency search, other reports given with ``--runs``, sensitivity trials);
* ``groups``: every group, its widths, state and, when blocked, why.
"""

from __future__ import annotations

import html
import json
import os
from typing import Iterable, List, Optional, Sequence

from .io import save_bytes_atomic

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px;color:#1d2433;background:#fff}
h1{font-size:22px;margin:0 0 4px}h2{font-size:18px;margin:28px 0 8px;border-bottom:2px solid #e3e8f0;padding-bottom:4px}
.sub{color:#5b6478;font-size:13px}
table{border-collapse:collapse;font-size:13px;margin:6px 0}th,td{padding:3px 8px;border-bottom:1px solid #e9edf3;text-align:right}
th{background:#f4f6fa;cursor:pointer;position:sticky;top:0}td.l,th.l{text-align:left}
.kpi{display:inline-block;margin:6px 14px 6px 0;padding:10px 14px;border-radius:8px;background:#f4f6fa;min-width:120px}
.kpi b{display:block;font-size:20px}.ok{color:#157a3b}.bad{color:#b3261e}.muted{color:#8a93a6}
svg text{font-size:11px;fill:#1d2433}.chart{margin:8px 0}
.small-multiples{display:flex;flex-wrap:wrap;gap:10px}
"""

JS = """
document.querySelectorAll('table.sortable th').forEach(function(th, i){
  th.addEventListener('click', function(){
    var tb = th.closest('table').tBodies[0], rows = Array.from(tb.rows), dir = th.dataset.dir === 'a' ? -1 : 1;
    th.dataset.dir = dir === 1 ? 'a' : 'd';
    rows.sort(function(a, b){
      var x = a.cells[i].dataset.v || a.cells[i].textContent, y = b.cells[i].dataset.v || b.cells[i].textContent;
      var nx = parseFloat(x), ny = parseFloat(y);
      return (isNaN(nx) || isNaN(ny) ? x.localeCompare(y) : nx - ny) * dir;
    });
    rows.forEach(function(r){ tb.appendChild(r); });
  });
});
"""

PALETTE = ("#2f6fdf", "#e0742b", "#2a9d5c", "#b33dc6", "#c9a227", "#d33f49", "#3bb3c3", "#6b6b6b")


def _e(x) -> str:
    return html.escape(str(x), quote=True)


def _num(n) -> str:
    if n is None:
        return "–"
    if isinstance(n, float) and abs(n) < 1000:
        return f"{n:.3g}"
    for unit, div in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= div:
            return f"{n / div:.2f}{unit}"
    return str(n)


# --------------------------------------------------------------------------- charts


def line_chart(series: Sequence[dict], x_label: str, y_label: str, width: int = 300, height: int = 190,
               x_range=None, y_range=None, title: str = "", points_only: bool = False, cls: str = "") -> str:
    """SVG chart of ``series`` [{"name", "points": [(x, y)], "color"?}]."""
    pts = [p for s in series for p in s["points"] if p[0] is not None and p[1] is not None]
    if not pts:
        return ""
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    x0, x1 = x_range or (min(xs), max(xs))
    y0, y1 = y_range or (min(ys), max(ys))
    if x1 - x0 < 1e-12:
        x0, x1 = x0 - 0.5, x1 + 0.5
    if y1 - y0 < 1e-12:
        y0, y1 = y0 - 0.05, y1 + 0.05
    legend = len(series) > 1
    L, R, T, B = 44, 190 if legend else 10, 20 if title else 8, 34
    w, h = width - L - R, height - T - B

    def X(v):
        return L + (v - x0) / (x1 - x0) * w

    def Y(v):
        return T + h - (v - y0) / (y1 - y0) * h

    out = [f'<svg class="chart {cls}" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
           f'xmlns="http://www.w3.org/2000/svg" role="img" aria-label="{_e(title or y_label)}">']
    if title:
        out.append(f'<text x="{L}" y="13" font-weight="600">{_e(title)}</text>')
    out.append(f'<rect x="{L}" y="{T}" width="{w}" height="{h}" fill="#fafbfd" stroke="#d5dbe5"/>')
    for i in range(5):
        fy = y0 + (y1 - y0) * i / 4
        fx = x0 + (x1 - x0) * i / 4
        out.append(f'<line x1="{L}" x2="{L + w}" y1="{Y(fy):.1f}" y2="{Y(fy):.1f}" stroke="#eceff5"/>')
        out.append(f'<text x="{L - 4}" y="{Y(fy) + 4:.1f}" text-anchor="end">{fy:.3g}</text>')
        out.append(f'<text x="{X(fx):.1f}" y="{T + h + 13}" text-anchor="middle">{fx:.3g}</text>')
    out.append(f'<text x="{L + w / 2:.1f}" y="{height - 4}" text-anchor="middle">{_e(x_label)}</text>')
    out.append(f'<text x="10" y="{T + h / 2:.1f}" text-anchor="middle" transform="rotate(-90 10 {T + h / 2:.1f})">'
               f'{_e(y_label)}</text>')
    for k, s in enumerate(series):
        color = s.get("color") or PALETTE[k % len(PALETTE)]
        p = [(X(a), Y(b)) for a, b in s["points"] if a is not None and b is not None]
        if not p:
            continue
        if len(p) > 1 and not points_only:
            d = " ".join(f"{a:.1f},{b:.1f}" for a, b in p)
            out.append(f'<polyline fill="none" stroke="{color}" stroke-width="1.8" points="{d}"/>')
        for (a, b), raw in zip(p, s["points"]):
            out.append(f'<circle cx="{a:.1f}" cy="{b:.1f}" r="3.2" fill="{color}"><title>{_e(s["name"])}: '
                       f'{raw[0]:.4g}, {raw[1]:.4g}</title></circle>')
    if legend:                              # beside the plot, as many entries as fit
        rows = max(1, int((height - T - 4) // 13))
        for k, s in enumerate(series[:rows]):
            color = s.get("color") or PALETTE[k % len(PALETTE)]
            more = k == rows - 1 and len(series) > rows
            label = f"… {len(series) - rows + 1} more" if more else _e(s["name"])[-30:]
            out.append(f'<circle cx="{L + w + 12}" cy="{T + 6 + 13 * k}" r="4" fill="{color}"/>'
                       f'<text x="{L + w + 20}" y="{T + 10 + 13 * k}">{label}</text>')
    out.append("</svg>")
    return "".join(out)


def width_bars(rows: List[dict], width: int = 900) -> str:
    """Horizontal bars: every layer's output width before (light) and after (dark)."""
    rows = [r for r in rows if r.get("cout")]
    if not rows:
        return ""
    bar, gap, L = 9, 3, 210
    height = len(rows) * (bar + gap) + 30
    top = max(r["cout"][0] for r in rows) or 1
    w = width - L - 60
    out = [f'<svg id="width-bars" class="chart" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
           'xmlns="http://www.w3.org/2000/svg" role="img" aria-label="output widths before and after">']
    for i, r in enumerate(rows):
        y = 8 + i * (bar + gap)
        b, a = r["cout"]
        out.append(f'<text x="{L - 6}" y="{y + bar - 1}" text-anchor="end">{_e(r["name"])[-32:]}</text>')
        out.append(f'<rect x="{L}" y="{y}" width="{w * b / top:.1f}" height="{bar}" fill="#c9d7f2"/>')
        out.append(f'<rect class="after" x="{L}" y="{y}" width="{w * a / top:.1f}" height="{bar}" fill="#2f6fdf">'
                   f'<title>{_e(r["name"])}: {b} → {a}</title></rect>')
        out.append(f'<text x="{L + w * b / top + 4:.1f}" y="{y + bar - 1}">{a}/{b}</text>')
    out.append("</svg>")
    return "".join(out)


# --------------------------------------------------------------------------- sections


def _summary(rep: dict, title: str) -> str:
    m, p = rep.get("macs", {}), rep.get("params", {})
    lat = rep.get("latency_ms") or {}
    s = rep.get("summary", {})
    k = []

    def kpi(label, value, sub=""):
        k.append(f'<div class="kpi"><span class="sub">{_e(label)}</span><b>{value}</b><span class="sub">{sub}</span></div>')

    if m:
        kpi("MACs", f'{m["before"] / max(m["after"], 1):.2f}×', f'{_num(m["before"])} → {_num(m["after"])}')
    if p:
        kpi("parameters", f'{p["before"] / max(p["after"], 1):.2f}×', f'{_num(p["before"])} → {_num(p["after"])}')
    if lat and "skipped" not in lat:
        kpi("latency", f'{lat["speedup"]:.2f}×', f'{lat["before"]:.3f} → {lat["after"]:.3f} ms, '
                                                  f'{lat.get("threads", 1)} thread(s)')
    v = rep.get("verify")
    if v is not None:
        if "skipped" in v:
            kpi("verify", '<span class="muted">skipped</span>')
        else:
            ok = v.get("passed")
            kpi("verify", f'<span class="{"ok" if ok else "bad"}">{"passed" if ok else "FAILED"}</span>',
                f'max abs diff {v.get("max_abs_diff", 0):.2g}')
    if s:
        kpi("groups", f'{s.get("pruned_groups", 0)}/{s.get("prunable_groups", 0)}',
            f'pruned / prunable ({s.get("groups", 0)} found)')
    rep_ = rep.get("repair")
    if rep_ and rep_.get("agreement"):
        a = rep_["agreement"]
        kpi("output cosine", f'{a["repaired"]["cosine"]:.4f}', f'before repair {a["pruned"]["cosine"]:.4f}')
    out = [f'<section id="summary"><h1>{_e(title)}</h1>']
    opts = s.get("options", {})
    if opts:
        desc = ", ".join(f"{k}={v}" for k, v in opts.items() if v not in (None, [], 0.0, "none") or k == "ratio")
        out.append(f'<div class="sub">{_e(desc)}</div>')
    out.append("".join(k))
    t = s.get("target") or {}
    if "latency" in t:
        state = ('<span class="ok">within tolerance</span>' if t.get("converged")
                 else '<span class="bad">not within tolerance (closest shown)</span>')
        out.append(f'<p id="latency-target">Latency target {t["latency"]:.3f} of the dense model '
                   f'({t.get("dense_ms", 0):.3f} ms, {t.get("provider", "")}, {t.get("threads", 1)} thread(s)): '
                   f'measured <b>{t["measured"]:.3f}</b> ±{t.get("tolerance", 0):.0%}, {state}'
                   + (f' (timed again with fresh sessions: {t["remeasured"]:.3f})' if "remeasured" in t else "")
                   + '; '
                   f'{len(t.get("iterations", []))} measured step(s); ranking: {_e(t.get("objective", ""))}'
                   + "".join(f' ({_e(o)}: measured {v["measured"]:.3f}, cosine {v["cosine"]:.4f})'
                             for o, v in (t.get("objectives") or {}).items() if v.get("cosine") is not None)
                   + '; layer model: '
                   f'{t.get("model", {}).get("layers", 0)} layers, {t.get("model", {}).get("timed", 0)} timed, '
                   f'{t.get("model", {}).get("cache_hits", 0)} from the cache.</p>')
    elif t:
        out.append(f'<p class="sub">target: {_e(json.dumps(t))}</p>')
    out.append("</section>")
    return "".join(out)


def _layers(rep: dict) -> str:
    rows = rep.get("layers") or []
    out = ['<section id="layers"><h2>Layers</h2>']
    if not rows:
        out.append('<p class="muted">No per-layer table in this report (run with --target-latency or --html).</p>'
                   "</section>")
        return "".join(out)
    out.append('<p class="sub">Per Conv/Gemm/MatMul: channel widths, MACs and latency (each layer timed alone '
               'in onnxruntime at these widths, scaled to the dense model\'s measured time).</p>')
    out.append(width_bars(rows))
    out.append('<table id="layer-table" class="sortable"><thead><tr><th class="l">layer</th><th class="l">op</th>'
               "<th>in before</th><th>in after</th><th>out before</th><th>out after</th><th>MACs before</th>"
               "<th>MACs after</th><th>ms before</th><th>ms after</th><th>ms saved</th></tr></thead><tbody>")
    for r in rows:
        mb = r.get("macs") or 0
        ci, co = r["cin"], r["cout"]
        ma = r.get("macs_after", mb)
        ms = r.get("ms") or [None, None]
        saved = (ms[0] - ms[1]) if ms[0] is not None and ms[1] is not None else None
        out.append(f'<tr><td class="l">{_e(r["name"])}</td><td class="l">{_e(r["op"])}</td><td>{ci[0]}</td>'
                   f"<td>{ci[1]}</td><td>{co[0]}</td><td>{co[1]}</td><td data-v=\"{mb}\">{_num(mb)}</td>"
                   f'<td data-v="{ma}">{_num(ma)}</td><td>{_num(ms[0])}</td><td>{_num(ms[1])}</td>'
                   f"<td>{_num(saved)}</td></tr>")
    out.append("</tbody></table></section>")
    return "".join(out)


def _sensitivity(sens: Optional[dict]) -> str:
    out = ['<section id="sensitivity"><h2>Sensitivity</h2>']
    if not sens or not sens.get("groups"):
        out.append('<p class="muted">No sensitivity sweep given (graphprune sensitivity IN.onnx, then '
                   "report --sensitivity SENS.json).</p></section>")
        return "".join(out)
    metric = sens.get("metric_name") or "output cosine"
    out.append(f'<p class="sub">Each group pruned alone at {", ".join(str(r) for r in sens.get("ratios", []))} '
               f'of its channels: {_e(metric)} (left) and measured latency fraction (right) against the fraction '
               "removed. Suggested ratio: the largest whose quality stays above "
               f'{sens.get("threshold", "")}.</p>')
    groups = sorted(sens["groups"].items(), key=lambda kv: int(kv[0]))
    q_series, l_series = [], []
    for gid, g in groups:
        trials = sorted(g.get("trials", []), key=lambda t: t["ratio"])
        q_series.append({"name": f'{gid} {g.get("name", "")}',
                         "points": [(0.0, 1.0)] + [(t["ratio"], t.get("quality")) for t in trials]})
        l_series.append({"name": f'{gid} {g.get("name", "")}',
                         "points": [(0.0, 1.0)] + [(t["ratio"], t.get("latency")) for t in trials]})
    out.append('<div class="small-multiples">')
    out.append(line_chart(q_series, "fraction removed", metric, 560, 300, title="quality", cls="sens-quality"))
    out.append(line_chart(l_series, "fraction removed", "latency / dense", 560, 300, title="latency",
                          cls="sens-latency"))
    out.append("</div>")
    out.append('<table id="sensitivity-table" class="sortable"><thead><tr><th>group</th><th class="l">name</th>'
               "<th>channels</th>" + "".join(f"<th>q@{r}</th>" for r in sens.get("ratios", [])) +
               "<th>suggested ratio</th></tr></thead><tbody>")
    sugg = sens.get("suggested", {})
    for gid, g in groups:
        by = {round(t["ratio"], 6): t for t in g.get("trials", [])}
        cells = "".join(f'<td>{_num((by.get(round(r, 6)) or {}).get("quality"))}</td>' for r in sens.get("ratios", []))
        out.append(f'<tr><td>{gid}</td><td class="l">{_e(g.get("name", ""))}</td><td>{g.get("channels", "")}</td>'
                   f"{cells}<td>{_num(sugg.get(str(gid), sugg.get(gid)))}</td></tr>")
    out.append("</tbody></table></section>")
    return "".join(out)


def _run_point(rep: dict, label: str):
    """(latency fraction, quality, label) of a report: quality = output cosine after repair when
    known, else the fraction of MACs kept."""
    lat = rep.get("latency_ms") or {}
    t = (rep.get("summary") or {}).get("target") or {}
    x = t.get("measured") if "latency" in t else (1.0 / lat["speedup"] if lat.get("speedup") else None)
    a = (rep.get("repair") or {}).get("agreement")
    m = rep.get("macs") or {}
    if a:
        y, kind = a["repaired"]["cosine"], "cosine"
    elif m:
        y, kind = m["after"] / max(m["before"], 1), "MACs kept"
    else:
        return None
    return x, y, kind, label


def _tradeoff(rep: dict, runs: Sequence[dict], sens: Optional[dict]) -> str:
    out = ['<section id="tradeoff"><h2>Quality / latency trade-off</h2>']
    series = []
    pts = [p for p in [_run_point(rep, "this run")] + [_run_point(r, r.get("_label", f"run {i + 1}"))
                                                       for i, r in enumerate(runs)] if p and p[0] is not None]
    kinds = {p[2] for p in pts}
    y_label = kinds.pop() if len(kinds) == 1 else "quality (cosine or MACs kept)"
    for x, y, _, label in pts:
        series.append({"name": label, "points": [(x, y)]})
    steps = ((rep.get("summary") or {}).get("target") or {}).get("iterations") or []
    if y_label == "MACs kept" and steps and all("macs_kept" in s for s in steps):
        series.append({"name": "latency search steps", "points": [(s["measured"], s["macs_kept"]) for s in steps],
                       "color": "#8a93a6"})
    if sens and sens.get("groups") and y_label == "cosine" and not sens.get("dense_metric"):
        tp = [(tr.get("latency"), tr.get("quality")) for g in sens["groups"].values() for tr in g.get("trials", [])]
        series.append({"name": "sensitivity trials (one group each)", "points": tp, "color": "#c9a227"})
    if not series:
        out.append('<p class="muted">No measured runs.</p></section>')
        return "".join(out)
    out.append('<p class="sub">x: measured latency as a fraction of the dense model; y: ' + _e(y_label) +
               " (output cosine after repair when the run has one, else the fraction of MACs kept). Give "
               "other runs' reports with <code>graphprune report --runs</code>.</p>")
    out.append(line_chart(series, "latency / dense", y_label, 760, 320, points_only=True, cls="tradeoff"))
    out.append("</section>")
    return "".join(out)


def _groups(rep: dict) -> str:
    out = ['<section id="groups"><h2>Groups</h2><table id="group-table" class="sortable"><thead><tr><th>id</th>'
           '<th class="l">name</th><th class="l">kind</th><th>before</th><th>after</th><th class="l">state</th>'
           '<th class="l">why blocked / inexact</th></tr></thead><tbody>']
    for g in rep.get("groups", []):
        if g.get("blocked") and g.get("blocked_channels", 0) >= g["channels_before"]:
            state = "blocked"
        elif g.get("blocked"):
            state = "partial"
        elif not g.get("exact", True):
            state = "inexact"
        else:
            state = "pruned" if g["channels_after"] < g["channels_before"] else "kept"
        why = "; ".join(g.get("blocked", []) + g.get("inexact", []))
        out.append(f'<tr class="{state}"><td>{g["id"]}</td><td class="l">{_e(g.get("name", ""))}</td>'
                   f'<td class="l">{_e(g.get("kind", ""))}</td><td>{g["channels_before"]}</td>'
                   f'<td>{g["channels_after"]}</td><td class="l">{state}</td><td class="l">{_e(why)}</td></tr>')
    out.append("</tbody></table></section>")
    return "".join(out)


def render(rep: dict, sensitivity: Optional[dict] = None, runs: Iterable[dict] = (), title: str = "") -> str:
    runs = list(runs)
    sens = sensitivity if sensitivity is not None else rep.get("sensitivity")
    title = title or "graphprune report"
    body = [_summary(rep, title), _layers(rep), _sensitivity(sens), _tradeoff(rep, runs, sens), _groups(rep)]
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{_e(title)}</title><style>{CSS}</style></head><body>"
            + "".join(body) + f"<script>{JS}</script></body></html>\n")


def write_html(rep: dict, path: str, source: Optional[str] = None, sensitivity: Optional[dict] = None,
               runs: Iterable[dict] = ()) -> None:
    title = f"graphprune: {os.path.basename(source)}" if source else "graphprune report"
    save_bytes_atomic(render(rep, sensitivity, runs, title).encode("utf-8"), path)
