"""Small stores for the streaming, export and preview tests (cohort-like or synthetic-like)."""

from __future__ import annotations

import os
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from factory.data.clinical import measure
from factory.presets import get_preset
from factory.store.writer import StoreWriter

from conftest import make_subject

DIAGNOSES = ("NOR", "DCM", "HCM")


def subject_and_row(i: int, kind: str, prefix: str):
    """Subject i (4 to 7 frames, ED/ES labeled, or every frame for synthetic) and its table row."""
    n_frames = 4 + i % 4
    labeled = range(n_frames) if kind == "synthetic" else (0, 2)
    subject = make_subject(f"{prefix}{i:03d}", n_frames=n_frames, labeled_frames=labeled, seed=i)
    for t in range(n_frames):  # an LV cavity whose size varies by subject and contracts at ES
        half_width = 2 + i % 4 + (0 if t == subject.es_frame else 2)
        subject.mask[t][subject.mask[t] == 3] = 2
        subject.mask[t, 2:9, 24:36, 30 - half_width:30 + half_width] = 3
    noise = np.random.default_rng(i).normal(0, 0.05, subject.mask.shape)
    subject.image[:] = np.clip(subject.mask / 3 * 2 - 1 + noise, -1, 1)
    subject.slice_mask[-2:] = False  # two padding slices at the apex end
    row = {"source": prefix, "vendor": "A" if i % 2 else "B", "diagnosis": DIAGNOSES[i % len(DIAGNOSES)],
           **measure(subject.mask, subject.spacing_mm, subject.es_frame)}
    if kind == "synthetic":
        rng = np.random.default_rng(i)
        row |= {"requested_edv_ml": row["edv_ml"] * rng.uniform(0.9, 1.1),
                "requested_esv_ml": row["esv_ml"] * rng.uniform(0.9, 1.1),
                "requested_ef_pct": row["ef_pct"] * rng.uniform(0.9, 1.1),
                "gate_attempts": 1 + i % 3, "status": "ok" if i % 5 else "gate_failed"}
    return subject, row


def unlabeled(subject, row: dict):
    """The subject as an unlabeled pool study: no masks, no ES frame, no clinical values or diagnosis."""
    subject = replace(subject, mask=np.zeros_like(subject.mask), labeled=np.zeros(subject.n_frames, bool),
                      es_frame=None, phase=None)
    return subject, row | {key: None for key in ("diagnosis", "edv_ml", "esv_ml", "ef_pct", "myo_mass_g",
                                                   "rv_edv_ml", "rv_esv_ml", "rv_ef_pct")}


def write_store(path: Path | str, n: int = 6, kind: str = "cohort", prefix: str = "s", finalize: bool = True,
                overwrite: bool = False, n_unlabeled: int = 0) -> str:
    """A store of `n` small subjects in the tiny preset's geometry, the last `n_unlabeled` of them unlabeled
    (cohorts only); returns its path."""
    writer = StoreWriter.create(str(path), n_subjects=n, preset=get_preset("tiny"), kind=kind, overwrite=overwrite)
    for i in range(n):
        subject, row = subject_and_row(i, kind, prefix)
        writer.write_subject(i, *(unlabeled(subject, row) if i >= n - n_unlabeled else (subject, row)))
    if finalize:
        writer.finalize()
    return str(path)


def write_in_two_parts(url: str, go_file: str, timeout_s: float = 120) -> None:
    """Writer process for a created store: commit two subjects, wait for `go_file`, commit the rest, finalise."""
    writer = StoreWriter(url)
    for i in range(writer.n_subjects):
        if i == 2:
            deadline = time.monotonic() + timeout_s
            while not os.path.exists(go_file) and time.monotonic() < deadline:
                time.sleep(0.05)
        writer.write_subject(i, *subject_and_row(i, "cohort", "s"))
    writer.finalize()
