"""Run graphprune over a folder of ONNX files and tabulate what happened to each.

    python tools/wild.py FOLDER [--ratio 0.5] [--timeout 600] [--json OUT.json] [-- EXTRA graphprune run ARGS]

Every ``*.onnx`` under FOLDER (recursively; ``*.pruned.onnx`` skipped) is pruned by
``graphprune run`` in its own process into a temporary folder (the collection is never written
to). The table gives, per model: exit code, groups pruned / prunable / found, MACs ratio, verify
outcome, wall time, and the reason when nothing was pruned or the run failed (the note lines
graphprune printed, e.g. nodes sorted or initializer-inputs made constants, are listed below the
table). Point it at your own collection to see how graphprune fares on it.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import subprocess
import sys
import tempfile
import time


def run_one(path: str, extra: list, timeout: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="graphprune-wild-") as tmp:
        out = os.path.join(tmp, "out.onnx")
        rep_path = os.path.join(tmp, "out.report.json")
        cmd = [sys.executable, "-m", "graphprune", "run", path, "-o", out, "--report", rep_path, *extra]
        t0 = time.perf_counter()
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
            code, err = r.returncode, r.stderr
        except subprocess.TimeoutExpired:
            code, err = None, f"timed out after {timeout}s"
        row = {"model": path, "exit": code, "time_s": round(time.perf_counter() - t0, 2)}
        lines = [ln.strip() for ln in err.splitlines() if ln.strip()]
        row["notes"] = [ln[len("note: "):] for ln in lines if ln.startswith("note: ")]
        errors = [ln for ln in lines if ln.startswith("graphprune: ")]
        if code is None:
            row["reason"] = err
        elif errors:
            row["reason"] = errors[-1][len("graphprune: "):]
        if code == 0 and os.path.exists(rep_path):
            with open(rep_path) as f:
                rep = json.load(f)
            s = rep["summary"]
            row["groups"] = f"{s['pruned_groups']}/{s['prunable_groups']}/{s['groups']}"
            m = rep.get("macs", {})
            row["macs_ratio"] = round(m["before"] / m["after"], 2) if m.get("after") else None
            v = rep.get("verify") or {}
            row["verify"] = ("skipped" if "skipped" in v else "passed" if v.get("passed") else "FAILED") if v else "off"
            lat = rep.get("latency_ms") or {}
            row["speedup"] = round(lat["speedup"], 2) if "speedup" in lat else None
            if s.get("reason"):
                row["reason"] = s["reason"]
        return row


def table(rows: list) -> str:
    head = ["model", "exit", "groups (pruned/prunable/found)", "MACs", "speed-up", "verify", "time s", "reason"]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [os.path.basename(r["model"]), str(r["exit"]), r.get("groups", "-"),
                 f"{r['macs_ratio']}x" if r.get("macs_ratio") else "-",
                 f"{r['speedup']}x" if r.get("speedup") else "-", r.get("verify", "-"), str(r["time_s"]),
                 (r.get("reason") or "").replace("|", "/")[:160]]
        out.append("| " + " | ".join(cells) + " |")
    notes = [(os.path.basename(r["model"]), n) for r in rows for n in r["notes"]]
    if notes:
        out.append("")
        out += [f"- {m}: {n}" for m, n in notes]
    return "\n".join(out)


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = []
    if "--" in argv:
        i = argv.index("--")
        argv, extra = argv[:i], argv[i + 1:]
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("folder")
    ap.add_argument("--ratio", type=float, default=None, help="passed to graphprune run")
    ap.add_argument("--timeout", type=int, default=600, help="seconds per model")
    ap.add_argument("--json", default=None, help="also write the rows as JSON here")
    a = ap.parse_args(argv)
    if a.ratio is not None:
        extra = ["--ratio", str(a.ratio)] + extra
    files = sorted(p for p in glob.glob(os.path.join(a.folder, "**", "*.onnx"), recursive=True)
                   if not p.endswith(".pruned.onnx"))
    if not files:
        print(f"no .onnx files under {a.folder}", file=sys.stderr)
        return 2
    rows = []
    for p in files:
        print(f"{p} ...", file=sys.stderr, flush=True)
        rows.append(run_one(p, extra, a.timeout))
    print(table(rows))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
