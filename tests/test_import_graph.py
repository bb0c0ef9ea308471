"""The package's import graph has no loop, lazy and type-only imports counted (issue 24): `config`
imports the registries, so nothing a registry's package imports may reach back to `config`."""

import importlib.util
from pathlib import Path


def test_no_import_loop_counting_lazy_and_type_only_imports():
    spec = importlib.util.spec_from_file_location(
        "import_graph", Path(__file__).resolve().parent.parent / "benchmarks" / "import_graph.py")
    graph = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(graph)
    found = graph.measure(graph.modules(), {"module", "lazy", "typing"})
    assert found["loops"] == [], found["loops"]
