"""Compare the graphprune rows of two zoo CSVs (tools/zoo.py) on what a re-check must keep.

    python tools/zoo_compare.py docs/zoo/zoo.csv docs/zoo/recheck.csv [--explain OTHER.csv ...]

Rows are matched by (source, model, exporter); the columns compared are the structural ones
(status, runs in onnxruntime, output shapes, oracle, MACs and params before and after, groups
found and pruned), never timings.  A row that differs from the first CSV but equals a row of an
``--explain`` CSV (e.g. the same models re-run with an older commit on the same cached exports)
is listed as explained: the first CSV was written by older code than the commit being checked.
Exit status 1 when an unexplained difference remains.
"""

from __future__ import annotations

import argparse
import csv
import sys

COLUMNS = ("status", "runs_ort", "shape_ok", "oracle", "macs_dense", "macs_pruned", "params_dense",
           "params_pruned", "groups", "pruned_groups")


def rows(path: str, tool: str = "graphprune") -> dict:
    with open(path, newline="") as fh:
        return {(r["source"], r["model"], r["exporter"]): r for r in csv.DictReader(fh) if r["tool"] == tool}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("before")
    ap.add_argument("after", nargs="+", help="one or more CSVs of the re-check (later files win)")
    ap.add_argument("--explain", nargs="*", default=[])
    a = ap.parse_args(argv)
    before = rows(a.before)
    after: dict = {}
    for p in a.after:
        after.update(rows(p))
    other: dict = {}
    for p in a.explain:
        other.update(rows(p))
    same, explained, differ, missing = [], [], [], []
    for k, r in sorted(after.items()):
        b = before.get(k)
        if b is None:
            missing.append(k)
            continue
        d = {c: (b[c], r[c]) for c in COLUMNS if b[c] != r[c]}
        if not d:
            same.append(k)
        elif k in other and all(other[k][c] == r[c] for c in COLUMNS):
            explained.append(k)
        else:
            differ.append((k, d))
    print(f"{len(after)} rows: {len(same)} identical, {len(explained)} differ from {a.before} but equal "
          f"--explain, {len(differ)} differ, {len(missing)} not in {a.before}")
    for k in explained:
        print("explained", "/".join(k))
    for k, d in differ:
        print("differs", "/".join(k), d)
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
