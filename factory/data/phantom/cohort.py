"""Write a phantom cohort in the ACDC layout, plus a `metadata.csv` with one row per subject.

OUT/patientNNN/ holds Info.cfg, the int16 cine `patientNNN_4d.nii.gz`, its full-cycle labels
`patientNNN_4d_gt.nii.gz`, and the ED and ES frames with their labels (`patientNNN_frameXX[_gt]`,
XX 1-based) exactly like ACDC. Files are byte-identical for the same seed. The cohort is written to
a temporary sibling folder that is renamed at the end, so a folder with that name is complete.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from factory.data.clinical import CLINICAL_COLUMNS
from factory.data.nifti import save_nifti
from factory.data.phantom.imaging import VENDORS
from factory.data.phantom.subject import PhantomSubject, generate_subject
from factory.errors import InputError
from factory.outputs import replacing
from factory.vocabulary import DIAGNOSES, derive_seed

METADATA_COLUMNS: tuple[str, ...] = (
    "subject_id", "source", "vendor", "diagnosis", "n_frames", "n_slices", "ed_frame", "es_frame",
    "spacing_x_mm", "spacing_y_mm", "spacing_z_mm", "height_m", "weight_kg", "seed") + CLINICAL_COLUMNS
KIND = "phantom-cohort"  # the output folder's kind: --overwrite replaces only an earlier phantom cohort
COMPRESSLEVEL = 1  # the noisy int16 cine barely compresses; level 1 is ~4x faster than 6


def write_subject(subject: PhantomSubject, root: Path) -> Path:
    """One ACDC patient folder: Info.cfg, 4D image and labels, ED and ES frames with labels."""
    folder = root / subject.subject_id
    folder.mkdir(parents=True)
    stem = folder / subject.subject_id
    ed, es = 0, subject.es_frame
    (folder / "Info.cfg").write_text(
        f"ED: {ed + 1}\nES: {es + 1}\nGroup: {subject.diagnosis}\nHeight: {100.0 * subject.height_m:.1f}\n"
        f"Weight: {subject.weight_kg:.1f}\nNbFrame: {subject.n_frames}\n")
    image = subject.image.astype(np.int16)
    spacing = subject.spacing_mm
    save_nifti(image, spacing, Path(f"{stem}_4d.nii.gz"), compresslevel=COMPRESSLEVEL)
    save_nifti(subject.mask, spacing, Path(f"{stem}_4d_gt.nii.gz"), compresslevel=COMPRESSLEVEL)
    for frame in (ed, es):
        save_nifti(image[frame], spacing, Path(f"{stem}_frame{frame + 1:02d}.nii.gz"), compresslevel=COMPRESSLEVEL)
        save_nifti(subject.mask[frame], spacing, Path(f"{stem}_frame{frame + 1:02d}_gt.nii.gz"),
                   compresslevel=COMPRESSLEVEL)
    return folder


def metadata_row(subject: PhantomSubject) -> dict:
    """The subject's row of metadata.csv (clinical values as measured from its written labels)."""
    z, y, x = subject.spacing_mm
    return {"subject_id": subject.subject_id, "source": "phantom", "vendor": subject.vendor,
            "diagnosis": subject.diagnosis, "n_frames": subject.n_frames, "n_slices": subject.n_slices,
            "ed_frame": 0, "es_frame": subject.es_frame, "spacing_x_mm": x, "spacing_y_mm": y, "spacing_z_mm": z,
            "height_m": subject.height_m, "weight_kg": subject.weight_kg, "seed": subject.seed,
            **subject.clinical}


def _check_names(names: Sequence[str], known: Sequence[str], what: str) -> list[str]:
    names = [n.strip().upper() for n in names if n.strip()]
    unknown = [n for n in names if n not in known]
    if unknown or not names:
        raise InputError(f"{what} {unknown or names}: choose one or more of {list(known)}")
    return names


def generate_cohort(out_dir: Path, n_subjects: int, seed: int, vendors: Sequence[str] = ("A", "B", "C"),
                    diagnoses: Sequence[str] | None = None, overwrite: bool = False) -> pd.DataFrame:
    """Write `n_subjects` phantom subjects; diagnoses round-robin, vendors in turn; returns metadata.

    Subject k's seed derives from (seed, k) alone, so subject k is the same in cohorts of any size.
    """
    if n_subjects < 1:
        raise InputError(f"number of subjects must be >= 1, got {n_subjects}")
    vendors = _check_names(vendors, sorted(VENDORS), "vendors")
    diagnoses = _check_names(diagnoses or DIAGNOSES, DIAGNOSES, "diagnoses")
    with replacing(out_dir, KIND, overwrite=overwrite) as tmp:  # built beside out_dir, swapped in when complete
        rows = []
        for k in range(n_subjects):
            subject = generate_subject(k, derive_seed(seed, k), diagnoses[k % len(diagnoses)], vendors[k % len(vendors)])
            write_subject(subject, tmp)
            rows.append(metadata_row(subject))
        table = pd.DataFrame(rows, columns=list(METADATA_COLUMNS))
        table.to_csv(tmp / "metadata.csv", index=False, float_format="%.6g")
    return table
