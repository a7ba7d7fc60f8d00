"""Finished work of an evaluation, kept beside its output so an interrupted evaluation resumes (`--resume`).

Each downstream (arm, seed) and each expensive report section (FVD, classifier two-sample test, vendor
fidelity) is written the moment it finishes, as one JSON file in a hidden sibling of `--out`
(`.<name>.runs/`), under a key that hashes everything its result depends on: for a run the experiment
(pools, splits, test frames, training settings), the arm and seed and the bundle that pseudo-labels; for
a section its settings; for both the metadata-table checksums of the stores read and the code version.
A resumed evaluation reuses the files whose key matches and computes only the rest; the folder is removed
once the report is in place.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import numpy as np

from factory.bundle import BUNDLE_FILE, sha256_file
from factory.evaluate.arms import Experiment
from factory.outputs import hidden_sibling, remove
from factory.store.reader import open_store
from factory.version import code_version


def runs_folder(out: str | Path) -> Path:
    """The hidden sibling of the evaluation output `out` that holds its finished downstream runs."""
    return Path(hidden_sibling(Path(out).resolve(), "runs"))


def table_checksums(stores: list[str]) -> dict[str, str | None]:
    """The metadata-table SHA-256 of each store (what its subjects are), by URL."""
    return {url: (open_store(url).manifest or {}).get("table", {}).get("sha256") for url in sorted(set(stores))}


def digest(document: dict) -> str:
    """SHA-256 of a JSON document, with the code version that computes from it."""
    document = {**document, "code_version": code_version()}
    return hashlib.sha256(json.dumps(document, sort_keys=True, default=str).encode()).hexdigest()


def section_key(name: str, stores: list[str], settings: dict) -> str:
    """SHA-256 of what the report section `name` depends on: the stores it reads and its settings."""
    return digest({"section": name, "tables": table_checksums(stores), "settings": settings})


def run_key(experiment: Experiment, arm: str, seed: int, bundle: str | None) -> str:
    """SHA-256 of what the result of (arm, seed) depends on; a stored result is reused only under the same key.

    Only what the arm reads counts (its pools, not the other arms'), so a run of the real arm, say, is
    the same run whatever synthetic store the evaluation also compares."""
    main, extra = experiment.pools(arm)
    tables = table_checksums([experiment.cohort_store, experiment.test_store, *(s.store for s in main + extra)])
    settings = {k: v for k, v in asdict(experiment).items() if k not in ("real", "synthetic", "pseudo", "n_extra")}
    if not extra:
        settings.pop("extra_share")  # no extra pool: the share draws nothing
    document = {"main": [asdict(s) for s in main], "extra": [asdict(s) for s in extra], "settings": settings,
                "arm": arm, "seed": seed, "tables": tables,
                "bundle": sha256_file(Path(bundle) / BUNDLE_FILE) if arm == "pseudo" and bundle else None}
    return digest(document)


def native(value: object) -> object:
    """numpy values as plain Python for JSON (NaN kept: a reused section must read as the computed one)."""
    if isinstance(value, (np.ndarray, np.generic)):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


class FinishedRuns:
    """The finished work of one evaluation output: `load` a run by key, `save` one as it finishes, compute or
    reuse a `section`, `discard` what an interrupted evaluation left, `clear` it all."""

    def __init__(self, out: str | Path) -> None:
        self.folder = runs_folder(out)

    def write(self, path: Path, document: dict) -> None:
        """Write one JSON document atomically into the folder."""
        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(document, default=native))
        os.replace(tmp, path)

    def read(self, path: Path, key: str) -> dict | None:
        """The document at `path` if it was written under `key`, else None."""
        try:
            document = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        return document if isinstance(document, dict) and document.get("key") == key else None

    def section(self, name: str, key: str, compute: Callable[[], dict]) -> dict:
        """The report section `name`: the one saved under `key` if there is one, else `compute()`, saved at once."""
        path = self.folder / f"section-{name}.json"
        if (document := self.read(path, key)) is not None:
            print(f"[evaluate] {name}: reused from {self.folder}", flush=True)
            return document["value"]
        value = compute()
        self.write(path, {"key": key, "value": value})
        return value

    def discard(self) -> None:
        """Remove what an interrupted evaluation left (a run without --resume starts afresh), saying so."""
        if self.folder.exists():
            print(f"[evaluate] discarding the finished work an interrupted evaluation left in {self.folder}"
                  " (--resume reuses it)", flush=True)
            self.clear()

    def path(self, arm: str, seed: int) -> Path:
        return self.folder / f"{arm}-seed{seed}.json"

    def load(self, arm: str, seed: int, key: str) -> dict | None:
        """The stored result of (arm, seed) if one was saved under `key`, else None."""
        if (document := self.read(self.path(arm, seed), key)) is None:
            return None
        scores = {k: np.asarray(v["values"], dtype=v["dtype"]) for k, v in document["scores"].items()}
        return {**document["result"], **scores}

    def save(self, result: dict, key: str) -> None:
        """Write one finished result atomically (its per-frame score arrays as lists, with their dtype)."""
        scores = {k: {"dtype": str(v.dtype), "values": v.tolist()} for k, v in result.items()
                  if isinstance(v, np.ndarray)}
        document = {"key": key, "result": {k: v for k, v in result.items() if k not in scores}, "scores": scores}
        self.write(self.path(result["arm"], result["seed"]), document)

    def clear(self) -> None:
        remove(self.folder)
