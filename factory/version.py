"""The code version recorded in stores and bundles: package version plus the git commit when known."""

from __future__ import annotations

import functools
import subprocess
from importlib import metadata
from pathlib import Path


@functools.cache
def code_version() -> str:
    """`0.1.0+g1a2b3c4` in a git checkout of this project, the bare package version otherwise (an install
    inside some other repository, e.g. a venv in a user's project, must not take that repository's commit)."""
    try:
        version = metadata.version("cine-factory")
    except metadata.PackageNotFoundError:
        version = "0+unknown"
    here = Path(__file__)
    try:
        git(here.parent, "ls-files", "--error-unmatch", here.name)  # this file is tracked: our own checkout
        commit = git(here.parent, "rev-parse", "--short", "HEAD")
    except (OSError, subprocess.SubprocessError):
        return version
    return f"{version}+g{commit}" if commit else version


def git(cwd: Path, *args: str) -> str:
    """The output of a git command run in `cwd` (raises if git is missing or the command fails)."""
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=5, check=True).stdout.strip()
