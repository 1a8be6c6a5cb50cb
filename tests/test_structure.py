"""The shape of the package holds: no import circles, no import from a lower floor to a higher
one, plain data that imports nothing above it, short functions, a short trainer
(``scripts/structure.py`` measures it)."""

import importlib.util
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "structure.py"


def load():
    spec = importlib.util.spec_from_file_location("structure", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_package_keeps_its_shape():
    structure = load()
    report = structure.report()
    assert report["circles"] == []
    assert report["upward_imports"] == []
    assert report["plain_data_imports"] == []
    assert report["functions_over_limit"] == []
    assert 0 < report["trainer_lines"] <= structure.MAX_TRAINER_LINES


def test_the_measure_sees_a_circle_and_an_upward_import():
    structure = load()
    graph = {"explorl.a": {"explorl.b"}, "explorl.b": {"explorl.c"}, "explorl.c": {"explorl.a"},
             "explorl.d": set()}
    assert structure.circles(graph) == [["explorl.a", "explorl.b", "explorl.c"]]
    assert structure.floor_of("explorl.batch") < structure.floor_of("explorl.trainer")
    assert structure.floor_of("explorl.algorithms.losses") < structure.floor_of(
        "explorl.algorithms.ppo")  # the longest named prefix decides
