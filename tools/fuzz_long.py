"""Long fuzz run outside pytest: the generator of tests/fuzz_graphs.py, driven by a seeded numpy RNG.

    python tools/fuzz_long.py [-n 10000] [--seed 0] [--out .cache/fuzz-failures] [--time-limit SECONDS] [--sparse]

Example i uses the RNG seeded with (seed, i), so any failure is reproduced by
``python tools/fuzz_long.py --seed S --only I``. Every failing dense model is saved as
``OUT/KIND/case-I.onnx`` with ``case-I.json`` (recipe, options, message). Prints a progress line
every 500 examples and one summary line; exits 1 when an example failed.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import re
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests")]

import onnx  # noqa: E402

from fuzz_graphs import SPARSE_PATTERNS, FuzzFailure, RngChooser, build_case, check_case, check_sparse_case  # noqa: E402,E501


@contextlib.contextmanager
def muted_native_stderr(enabled: bool = True):
    """onnxruntime logs failing kernels straight to fd 2; keep the run's output readable."""
    if not enabled:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def _safe(kind: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", kind)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", "--examples", type=int, default=10000)
    ap.add_argument("--seed", type=int, default=0, help="base seed; example i uses (seed, i)")
    ap.add_argument("--start", type=int, default=0, help="first example index")
    ap.add_argument("--only", type=int, default=None, help="run just example I and print its recipe")
    ap.add_argument("--out", default=".cache/fuzz-failures", help="folder for failing models")
    ap.add_argument("--time-limit", type=float, default=None, help="stop after this many seconds")
    ap.add_argument("--max-blocks", type=int, default=8)
    ap.add_argument("--show-ort-log", action="store_true", help="do not mute onnxruntime's own stderr log")
    ap.add_argument("--sparse", action="store_true",
                    help="the sparse-layer property instead (fuzz_graphs.check_sparse_case): pattern and "
                         "sparsity cycle with the example index, every eligible layer on the kernels")
    args = ap.parse_args(argv)

    indices = [args.only] if args.only is not None else range(args.start, args.start + args.examples)
    counts: collections.Counter = collections.Counter()
    first_of: dict = {}
    t0 = time.perf_counter()
    done = 0
    for i in indices:
        if args.time_limit is not None and time.perf_counter() - t0 > args.time_limit:
            break
        case = build_case(RngChooser([args.seed, i]), max_blocks=args.max_blocks)
        if args.only is not None:
            print(f"case {i}: {case.describe()}")
        try:
            with muted_native_stderr(not args.show_ort_log):
                if args.sparse:
                    check_sparse_case(case, SPARSE_PATTERNS[i % len(SPARSE_PATTERNS)], (0.3, 0.5, 0.9)[i % 3])
                else:
                    check_case(case)
            counts["passed"] += 1
        except FuzzFailure as e:
            kind, msg = e.kind, str(e)
        except Exception as e:  # noqa: BLE001 - a harness problem, still counted
            kind, msg = f"harness:{type(e).__name__}", str(e)
        else:
            kind = None
        if kind is not None:
            counts[kind] += 1
            first_of.setdefault(kind, i)
            folder = os.path.join(args.out, _safe(kind))
            os.makedirs(folder, exist_ok=True)
            onnx.save(case.model, os.path.join(folder, f"case-{i}.onnx"))
            with open(os.path.join(folder, f"case-{i}.json"), "w", encoding="utf-8") as f:
                json.dump({"index": i, "seed": args.seed, "kind": kind, "message": msg[:2000],
                           "options": case.opts, "opset": case.opset, "recipe": case.recipe}, f, indent=2)
            if args.only is not None:
                print(f"  FAILED {msg[:500]}")
        done += 1
        if done % 500 == 0:
            el = time.perf_counter() - t0
            print(f"  {done} examples, {done - counts['passed']} failed, {el:.0f}s", flush=True)
    el = time.perf_counter() - t0
    failed = done - counts["passed"]
    kinds = ", ".join(f"{k}: {v} (first #{first_of[k]})" for k, v in sorted(counts.items()) if k != "passed")
    print(f"fuzz_long: {done} examples (seed {args.seed}), {counts['passed']} passed, {failed} failed"
          f"{' [' + kinds + ']' if kinds else ''} in {el:.1f}s ({el / max(done, 1) * 1e3:.0f} ms/example)"
          f"{'; failing models under ' + args.out if failed else ''}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
