"""nnU-Net v2 raw dataset export: one training case per labeled 3D frame, from one or more stores.

Layout: `DatasetXXX_Name/imagesTr/<case>_0000.nii.gz`, `labelsTr/<case>.nii.gz`, `dataset.json`, and
`cases.csv` mapping each case back to its store, subject and frame. Padding slices are dropped.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd

from factory.data.nifti import save_nifti
from factory.errors import InputError
from factory.export.cases import iter_cases, open_stores
from factory.outputs import replacing
from factory.vocabulary import LABEL_MAP

FILE_ENDING = ".nii.gz"
CHANNEL = "cineMRI"
KIND = "nnunet-dataset"


def dataset_folder_name(dataset_id: int, name: str) -> str:
    """`Dataset501_CineFactory`; nnU-Net ids have three digits and names no spaces or slashes."""
    if not 1 <= dataset_id <= 999:
        raise InputError(f"dataset id must be 1..999, got {dataset_id}")
    if not re.fullmatch(r"[A-Za-z0-9_-]+", name):
        raise InputError(f"dataset name {name!r} may only hold letters, digits, '_' and '-'")
    return f"Dataset{dataset_id:03d}_{name}"


def dataset_json(name: str, n_cases: int, stores: list[str]) -> dict:
    """The dataset.json nnU-Net v2 requires (channel_names, labels, numTraining, file_ending)."""
    return {"name": name, "description": "cine-factory export, one case per labeled 3D cine frame",
            "channel_names": {"0": CHANNEL}, "labels": {v: int(k) for k, v in LABEL_MAP.items()},
            "numTraining": n_cases, "file_ending": FILE_ENDING, "sources": stores}


def export_nnunet(stores: list[str], out: Path | str, dataset_id: int = 501, dataset_name: str = "CineFactory",
                  overwrite: bool = False) -> Path:
    """Write the labeled frames of `stores` as nnU-Net raw dataset `out/DatasetXXX_Name`; returns its path."""
    folder = Path(out) / dataset_folder_name(dataset_id, dataset_name)
    opened = open_stores(stores)
    records = []
    with replacing(folder, KIND, overwrite=overwrite, inputs=stores) as staging:
        for case in iter_cases(opened):
            spacing = case.store.spacing_mm
            for t in np.flatnonzero(case.subject.labeled):
                name = f"{case.name}_f{t:02d}"
                save_nifti(case.image[t], spacing, staging / "imagesTr" / f"{name}_0000{FILE_ENDING}")
                save_nifti(case.mask[t], spacing, staging / "labelsTr" / f"{name}{FILE_ENDING}")
                records.append({**case.record(), "case": name, "subject_case": case.name, "frame": int(t),
                                "phase": float(case.subject.phase[t])})
        if not records:
            raise InputError(f"{', '.join(stores)}: no labeled frames to export")
        (staging / "dataset.json").write_text(json.dumps(dataset_json(dataset_name, len(records), stores), indent=1))
        pd.DataFrame(records).to_csv(staging / "cases.csv", index=False)
    return folder
