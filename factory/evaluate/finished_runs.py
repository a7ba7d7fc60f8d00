"""Finished downstream runs, kept beside the evaluation's output so an interrupted evaluation resumes (`--resume`).

Each (arm, seed) that finishes is written at once as one JSON file into a hidden sibling of `--out`
(`.<name>.runs/`), under a key that hashes everything its result depends on: the experiment (pools,
splits, test frames, training settings), the arm and seed, the metadata-table checksums of the stores
it reads, the bundle that pseudo-labels and the code version. A resumed evaluation reuses the files
whose key matches and trains only the rest; the folder is removed once the report is in place.
"""

from __future__ import annotations

import hashlib
import json
import os
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


def run_key(experiment: Experiment, arm: str, seed: int, bundle: str | None) -> str:
    """SHA-256 of what the result of (arm, seed) depends on; a stored result is reused only under the same key.

    Only what the arm reads counts (its pools, not the other arms'), so a run of the real arm, say, is
    the same run whatever synthetic store the evaluation also compares."""
    main, extra = experiment.pools(arm)
    stores = sorted({experiment.cohort_store, experiment.test_store, *(s.store for s in main + extra)})
    tables = {url: (open_store(url).manifest or {}).get("table", {}).get("sha256") for url in stores}
    settings = {k: v for k, v in asdict(experiment).items() if k not in ("real", "synthetic", "pseudo", "n_extra")}
    if not extra:
        settings.pop("extra_share")  # no extra pool: the share draws nothing
    document = {"main": [asdict(s) for s in main], "extra": [asdict(s) for s in extra], "settings": settings,
                "arm": arm, "seed": seed, "tables": tables, "code_version": code_version(),
                "bundle": sha256_file(Path(bundle) / BUNDLE_FILE) if arm == "pseudo" and bundle else None}
    return hashlib.sha256(json.dumps(document, sort_keys=True, default=str).encode()).hexdigest()


class FinishedRuns:
    """The finished runs of one evaluation output: `load` one by key, `save` one as it finishes, `clear` them all."""

    def __init__(self, out: str | Path) -> None:
        self.folder = runs_folder(out)

    def path(self, arm: str, seed: int) -> Path:
        return self.folder / f"{arm}-seed{seed}.json"

    def load(self, arm: str, seed: int, key: str) -> dict | None:
        """The stored result of (arm, seed) if one was saved under `key`, else None."""
        try:
            document = json.loads(self.path(arm, seed).read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(document, dict) or document.get("key") != key:
            return None
        scores = {k: np.asarray(v["values"], dtype=v["dtype"]) for k, v in document["scores"].items()}
        return {**document["result"], **scores}

    def save(self, result: dict, key: str) -> None:
        """Write one finished result atomically (its per-frame score arrays as lists, with their dtype)."""
        scores = {k: {"dtype": str(v.dtype), "values": v.tolist()} for k, v in result.items()
                  if isinstance(v, np.ndarray)}
        document = {"key": key, "result": {k: v for k, v in result.items() if k not in scores}, "scores": scores}
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.path(result["arm"], result["seed"])
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(document))
        os.replace(tmp, path)

    def clear(self) -> None:
        remove(self.folder)
