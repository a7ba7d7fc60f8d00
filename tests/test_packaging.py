"""The wheel is complete: built, installed outside the checkout and used from there, it creates, writes and
verifies a store (the schemas), reads the shipped clinical priors and the shipped demo bundle."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BUILD_INPUTS = ("pyproject.toml", "README.md", "factory", "schemas")  # everything setuptools reads

# Run from the installed copy: every factory module it loads, the schemas and the demo bundle must come from
# there (the venv's editable finder would otherwise quietly serve whatever the wheel lacks from the checkout).
SCRIPT = """
import sys
from importlib import resources
from pathlib import Path

from factory.bundle import read_config
from factory.data.priors import ClinicalPriors
from factory.presets import get_preset
from factory.sample.job import DEMO_BUNDLE
from factory.store.layout import SCHEMA_DIR
from factory.store.verify import verify_store
from factory.store.writer import StoreWriter
from store_builders import subject_and_row

site = Path(sys.argv[1]).resolve()
writer = StoreWriter.create(sys.argv[2], n_subjects=2, preset=get_preset("tiny"), kind="cohort")
for i in range(2):
    writer.write_subject(i, *subject_and_row(i, "cohort", "s"))
writer.finalize()
assert verify_store(sys.argv[2]) == [], verify_store(sys.argv[2])
assert read_config(DEMO_BUNDLE)["preset"] == "tiny"
ClinicalPriors.default()  # reads the shipped acdc_priors.json
paths = [Path(m.__file__) for name, m in sys.modules.items()
         if name.split(".")[0] == "factory" and getattr(m, "__file__", None)]
paths += [Path(SCHEMA_DIR), DEMO_BUNDLE, Path(resources.files("factory.data"))]
outside = [str(p) for p in paths if not p.resolve().is_relative_to(site)]
assert not outside, f"used from outside {site}: {outside}"
"""


def pip(*args: str) -> None:
    """Run the venv's pip; a failure shows pip's own error."""
    run = subprocess.run([sys.executable, "-m", "pip", *args, "--no-deps", "-q"], capture_output=True, text=True,
                         timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]


def build_wheel(tmp: Path) -> Path:
    """`pip wheel` of a copy of the checkout (its build/ and egg-info stay out of the shared working tree)."""
    src = tmp / "src"
    src.mkdir()
    for name in BUILD_INPUTS:
        if (REPO / name).is_dir():  # symlinks kept: factory/schemas links to the top-level schemas/
            shutil.copytree(REPO / name, src / name, symlinks=True, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(REPO / name, src / name)
    pip("wheel", str(src), "--no-build-isolation", "-w", str(tmp / "dist"))
    (wheel,) = (tmp / "dist").glob("cine_factory-*.whl")
    return wheel


def test_the_wheel_ships_its_data_and_works_outside_the_checkout(tmp_path: Path) -> None:
    wheel = build_wheel(tmp_path)
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = {f"factory/schemas/{p.name}" for p in (REPO / "schemas").glob("*.json")}
    shipped |= {f"factory/bundles/demo/{p.name}" for p in (REPO / "factory" / "bundles" / "demo").iterdir()}
    shipped |= {f"factory/data/{p.name}" for p in (REPO / "factory" / "data").glob("*.json")}
    assert len(shipped) >= 9 and shipped <= names, sorted(shipped - names)

    site = tmp_path / "site"
    pip("install", "--target", str(site), str(wheel))
    work = tmp_path / "work"
    work.mkdir()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(REPO / "tests")])}
    run = subprocess.run([sys.executable, "-c", SCRIPT, str(site), str(work / "store.zarr")], cwd=work, env=env,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
