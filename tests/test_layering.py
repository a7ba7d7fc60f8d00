"""Imports point one way: vocabulary and contracts at the bottom, jobs at the top (README: module map)."""

from __future__ import annotations

import re
from pathlib import Path

FACTORY = Path(__file__).resolve().parents[1] / "factory"

# A module may import modules of its own layer or of a lower one.
LAYERS = {
    "errors": 0, "version": 0, "vocabulary": 0, "presets": 0, "record": 0,
    "outputs": 1, "cli_args": 1, "cluster": 1,
    "data": 2,
    "store": 3,
    "models": 4, "bundle": 4,
    "stream": 5, "export": 5,
    "train": 6,
    "sample": 7,
    "reporting": 8,
    "evaluate": 9, "preview": 9,
    "cli": 10,
}
# Upward imports accepted for now (each would be recorded in README's module map): none.
KNOWN = set()


def upward_imports() -> set[tuple[str, str]]:
    """(module file, imported top-level part) pairs where a lower layer imports a higher one."""
    found = set()
    for path in sorted(FACTORY.rglob("*.py")):
        name = path.relative_to(FACTORY).as_posix()
        owner = name.split("/")[0].removesuffix(".py")
        for target in re.findall(r"^\s*(?:from|import) factory\.(\w+)", path.read_text(), re.M):
            assert target in LAYERS, f"{name} imports factory.{target}, which has no layer: add it to LAYERS"
            if owner in LAYERS and LAYERS[target] > LAYERS[owner]:
                found.add((name, target))
    return found


def test_every_package_has_a_layer():
    parts = {p.name.removesuffix(".py") for p in FACTORY.iterdir() if p.suffix == ".py" or (p / "__init__.py").exists()}
    assert parts - {"__init__"} - {"schemas", "bundles"} <= set(LAYERS), sorted(parts - set(LAYERS))


def test_no_import_runs_against_the_layering():
    assert upward_imports() == KNOWN
