"""docs/ops.md is generated from the rule registry and must stay in sync with it."""

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tools"))
import gen_ops_doc  # noqa: E402


def test_ops_doc_is_current():
    """What ``python tools/gen_ops_doc.py --check`` checks, in this process."""
    with open(gen_ops_doc.PATH) as f:
        assert f.read() == gen_ops_doc.render(), "docs/ops.md is stale: run python tools/gen_ops_doc.py"
