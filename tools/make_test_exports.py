"""Write the reference exports the default test tier loads (tests/data/exports, the list is
tests/helpers_graphs.py's COMMITTED_EXPORTS) from the current torch exporters and refmodels/ code.

    python tools/make_test_exports.py             # rewrite every committed export
    python tools/make_test_exports.py vit llama   # only these models

The dynamo exporter's node stack traces (source paths of this machine) are dropped; everything
else is as the exporter wrote it. Run it when the slow test
tests/test_committed_exports.py::test_committed_export_is_current says an export changed.
"""

import argparse
import os
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))

import onnx  # noqa: E402

from helpers_graphs import (COMMITTED_EXPORTS, EXPORTS_DIR, export_file_name, export_reference,  # noqa: E402
                            without_stack_traces)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("names", nargs="*", help="models to rewrite (default: all committed)")
    args = ap.parse_args(argv)
    os.makedirs(EXPORTS_DIR, exist_ok=True)
    declared = {export_file_name(*spec) for spec in COMMITTED_EXPORTS}
    for f in sorted(set(os.listdir(EXPORTS_DIR)) - declared):
        print(f"not in COMMITTED_EXPORTS, removed: {f}")
        os.remove(os.path.join(EXPORTS_DIR, f))
    with tempfile.TemporaryDirectory() as tmp:
        for name, exporter, variant in COMMITTED_EXPORTS:
            if args.names and name not in args.names:
                continue
            fname = export_file_name(name, exporter, variant)
            model = onnx.load(export_reference(name, exporter, os.path.join(tmp, fname), variant))
            out = os.path.join(EXPORTS_DIR, fname)
            onnx.save(without_stack_traces(model), out)
            print(f"{out}  {os.path.getsize(out) / 1024:.0f} KiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
