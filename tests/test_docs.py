"""docs/ops.md is generated from the rule registry and must stay in sync with it."""

import subprocess
import sys


def test_ops_doc_is_current():
    r = subprocess.run([sys.executable, "tools/gen_ops_doc.py", "--check"], capture_output=True, text=True)
    assert r.returncode == 0, "docs/ops.md is stale: run python tools/gen_ops_doc.py"
