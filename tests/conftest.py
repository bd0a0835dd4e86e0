import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from helpers_graphs import (committed_export, export_file_name, export_reference,  # noqa: E402
                            run_cli_in_process, run_cli_subprocess)


@pytest.fixture(scope="session")
def exported(tmp_path_factory):
    """exported(name, exporter, variant=None, fresh=False) -> path of that reference export: the
    committed file (tests/data/exports, see helpers_graphs.COMMITTED_EXPORTS) when there is one and
    ``fresh`` is false, else a fresh export (slow tier) alone in its own folder, made once per
    session."""
    made = {}

    def get(name, exporter, variant=None, fresh=False):
        key = (name, exporter, variant)
        if not fresh:
            path = committed_export(*key)
            if path is not None:
                return path
        if key not in made:
            folder = tmp_path_factory.mktemp("exported")
            made[key] = export_reference(name, exporter, str(folder / export_file_name(*key)), variant)
        return made[key]

    return get


@pytest.fixture(params=["in-process", pytest.param("subprocess", marks=pytest.mark.slow)])
def gp(request):
    """The command line: gp(*args, cwd=None) -> CliResult(returncode, stdout, stderr).

    Every test that takes it runs twice: through graphprune.cli.main in this process (default
    tier) and as a real ``python -m graphprune`` subprocess (slow tier, ~1 s of imports each)."""
    return run_cli_in_process if request.param == "in-process" else run_cli_subprocess
