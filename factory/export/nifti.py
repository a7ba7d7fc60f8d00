"""Per-subject 4D NIfTI export: `<case>_image.nii.gz` (float32), `<case>_label.nii.gz` (uint8), metadata.csv.

Voxel axes are (i, j, k, t) = the store's (W, H, Z, T) reversed, with an axis-aligned affine carrying
the store's spacing (`factory.data.nifti.save_nifti`); only real slices are written (their span in
the store is in the CSV), unlabeled frames have all-zero labels (their indices are in the CSV).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from factory.data.nifti import save_nifti
from factory.export.cases import iter_cases, open_stores
from factory.outputs import replacing

METADATA = "metadata.csv"
KIND = "nifti-export"


def export_nifti(stores: list[str], out: Path | str, overwrite: bool = False) -> Path:
    """Write every subject of `stores` as a 4D image + label NIfTI pair under `out`; returns `out`."""
    opened = open_stores(stores)
    records = []
    with replacing(out, KIND, overwrite=overwrite, inputs=stores) as staging:
        for case in iter_cases(opened):
            image, label = f"{case.name}_image.nii.gz", f"{case.name}_label.nii.gz"
            save_nifti(case.image, case.store.spacing_mm, staging / image)
            save_nifti(case.mask, case.store.spacing_mm, staging / label)
            records.append({**case.record(), "image_file": image, "label_file": label})
        pd.DataFrame(records).to_csv(staging / METADATA, index=False)
    return Path(out)
