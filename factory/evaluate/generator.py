"""The generator of a synthetic store: its bundle, what it was trained on, and the labels it saw (label regimes).

A bundle records its training cohort's fingerprint (URL, size, checksum of the metadata table). When
the evaluation's --cohort has that checksum, it is the generator's training cohort, and the labeled
subjects the generator saw are counted on it: every subject with a labeled frame, whichever split of
training it served (the VAE trains its segmentation decoder on them and validates on the held-out
ones; the LDMs' `subjects` in bundle.json count only their training split). Otherwise the count is
unknown, which the scarce regime refuses.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from factory.bundle import BUNDLE_FILE, read_config, sha256_file, training_fingerprint
from factory.errors import FactoryError, InputError
from factory.store.reader import Store

# The most labeled subjects the generator may have seen in each regime (None: no limit).
REGIMES: dict[str, int | None] = {"scarce": 20, "full": None}


def generator_bundle(synthetic: Store, bundle: str | None) -> tuple[str | None, str]:
    """The generator's bundle directory (`bundle`, else the one the synthetic store names) and where it came from;
    refuses a `bundle` whose bundle.json is not the one the store records."""
    recorded = synthetic.attrs.get("bundle", {})
    if bundle is None:
        return recorded.get("path"), "named by the synthetic store"
    read_config(bundle)  # a clear error for a folder that is no bundle
    if recorded.get("sha256") and recorded["sha256"] != sha256_file(Path(bundle) / BUNDLE_FILE):
        raise InputError(f"--bundle {bundle}: not the generator of {synthetic.url} (its bundle.json checksum differs"
                         " from the one the store records)")
    return bundle, "--bundle"


def labeled_per_vendor(store: Store) -> dict[str, int]:
    """How many subjects of `store` have at least one labeled frame, per vendor."""
    labeled = store.group["labeled"][:].any(axis=1)
    vendors = store.table["vendor"].astype(str).to_numpy()[labeled]
    return {str(v): int(n) for v, n in zip(*np.unique(vendors, return_counts=True))}


def generator_training(synthetic: Store, cohort: Store, bundle: str | None = None) -> dict:
    """What the generator of `synthetic` was trained on: its bundle, training data and stage records, and the labeled
    subjects it saw per vendor (None when `cohort` is not its training cohort or the bundle is not readable)."""
    path, source = generator_bundle(synthetic, bundle)
    if path is None:
        return {"bundle": None, "labeled_subjects": None,
                "note": "the synthetic store names no model bundle (give --bundle)"}
    try:
        config = read_config(path)
    except FactoryError as err:
        return {"bundle": path, "bundle_from": source, "labeled_subjects": None, "note": f"not readable here ({err})"}
    trained = config["training_data"]
    same = bool(trained.get("table_sha256")) and trained["table_sha256"] == training_fingerprint(cohort)["table_sha256"]
    record = {"bundle": path, "bundle_from": source, "preset": config["preset"], "training_data": trained,
              "cohort_is_training_cohort": same, "labeled_subjects": labeled_per_vendor(cohort) if same else None,
              **({"vendor_counts": config["vendor_counts"]} if config.get("vendor_counts") else {}),
              "ldm_subjects": {stage: info["subjects"] for stage, info in config["stages"].items() if "subjects" in info}}
    if not same:
        record["note"] = (f"--cohort {cohort.url} is not the generator's training cohort ({trained.get('store')}:"
                          " another table checksum), so the labels it saw are not counted")
    return record


def describe(generator: dict) -> str:
    """One line for the report: which data trained the generator and how many labeled subjects it saw."""
    if generator.get("training_data") is None:
        return f"unknown ({generator['note']})"
    trained = generator["training_data"]
    text = f"bundle {generator['bundle']}: {trained.get('n_subjects')} subjects of {trained.get('store')}"
    labeled = generator["labeled_subjects"]
    if labeled is None:
        return f"{text} ({generator['note']})"
    return f"{text} (this cohort store), {sum(labeled.values())} of them labeled ({labeled})"


def check_regime(regime: str, generator: dict) -> None:
    """Refuse a generator that saw more labeled subjects than `regime` allows, or one whose count is unknown."""
    limit = REGIMES[regime]
    if limit is None:
        return
    labeled = generator["labeled_subjects"]
    if labeled is None:
        raise InputError(f"--regime {regime}: cannot tell how many labeled subjects the generator saw:"
                         f" {generator['note']}; give its training cohort as --cohort")
    if sum(labeled.values()) > limit:
        raise InputError(f"--regime {regime} allows a generator that saw at most {limit} labeled subjects; bundle"
                         f" {generator['bundle']} saw {sum(labeled.values())} ({labeled}) in its training cohort")
