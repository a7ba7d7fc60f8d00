"""The code version stores and bundles record: the commit of this checkout, never of a repository around an install."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
from pathlib import Path

import pytest

from factory.version import code_version

VERSION_FILE = Path(__file__).resolve().parents[1] / "factory" / "version.py"


def load_copy(path: Path):
    """factory/version.py imported from `path` (as an installed copy would be)."""
    spec = importlib.util.spec_from_file_location("version_copy", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_an_install_inside_another_repository_does_not_take_its_commit(tmp_path):
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    installed = tmp_path / ".venv" / "site-packages" / "factory" / "version.py"  # untracked, as a venv is
    installed.parent.mkdir(parents=True)
    shutil.copy(VERSION_FILE, installed)
    (tmp_path / "x").write_text("x")
    subprocess.run(["git", "-C", str(tmp_path), "add", "x"], check=True)
    subprocess.run(["git", "-C", str(tmp_path), "-c", "user.name=u", "-c", "user.email=u@x", "commit", "-qm", "x"],
                   check=True)
    assert "+g" not in load_copy(installed).code_version()


def test_this_checkout_records_its_commit():
    inside = subprocess.run(["git", "ls-files", "--error-unmatch", "version.py"], cwd=VERSION_FILE.parent,
                            capture_output=True) if shutil.which("git") else None
    if inside is None or inside.returncode != 0:
        pytest.skip("not a git checkout of this project")
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=VERSION_FILE.parent, capture_output=True,
                          text=True, check=True).stdout.strip()
    assert code_version().endswith(f"+g{head}")
