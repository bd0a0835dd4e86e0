import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


@pytest.fixture(scope="session")
def exported(tmp_path_factory):
    """Export reference models once per session: exported(name, exporter) -> onnx path."""
    from models.export import export_named

    cache = {}
    folder = tmp_path_factory.mktemp("exported")

    def get(name, exporter):
        key = (name, exporter)
        if key not in cache:
            path = str(folder / f"{name}.{exporter}.onnx")
            export_named(name, path, exporter)
            cache[key] = path
        return cache[key]

    return get
