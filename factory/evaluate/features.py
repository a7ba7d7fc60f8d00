"""Clinical and shape features of a subject measured on its ED and ES masks (diagnosis classifier input)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from factory.data.clinical import measure
from factory.store.reader import Store
from factory.vocabulary import LV, MYO

MEASURED: tuple[str, ...] = ("edv_ml", "esv_ml", "ef_pct", "myo_mass_g", "rv_edv_ml", "rv_esv_ml")
FEATURES: tuple[str, ...] = (*MEASURED, "rv_lv_ratio", "wall_thickness_mm")
READ_SUBJECTS = 32  # subjects whose ED and ES masks are read together (memory stays bounded on big stores)


def mean_wall_thickness_mm(mask: np.ndarray, spacing_mm: tuple[float, float, float]) -> float:
    """Mean over slices holding an LV cavity of (epicardial - endocardial radius), areas taken as circles."""
    pixel_mm2 = spacing_mm[1] * spacing_mm[2]
    lv = np.count_nonzero(mask == LV, axis=(1, 2)) * pixel_mm2
    myo = np.count_nonzero(mask == MYO, axis=(1, 2)) * pixel_mm2
    slices = (lv > 0) & (myo > 0)
    if not slices.any():
        return float("nan")
    return float(np.mean(np.sqrt((lv[slices] + myo[slices]) / np.pi) - np.sqrt(lv[slices] / np.pi)))


def subject_features(mask_ed: np.ndarray, mask_es: np.ndarray, spacing_mm: tuple[float, float, float]) -> dict:
    """The FEATURES of one subject from its (Z, H, W) ED and ES masks."""
    values = measure(np.stack([mask_ed, mask_es]), spacing_mm, es_frame=1)
    edv = values["edv_ml"]
    return {**{k: values[k] for k in MEASURED}, "rv_lv_ratio": values["rv_edv_ml"] / edv if edv else np.nan,
            "wall_thickness_mm": mean_wall_thickness_mm(mask_ed, spacing_mm)}


def store_features(store: Store) -> pd.DataFrame:
    """FEATURES and diagnosis of every subject whose ED and ES frames are labeled (indexed like the table)."""
    table = store.table
    labeled = store.group["labeled"][:]
    es_frames = {int(i): int(es) for i, es in table["es_frame"].items()
                 if pd.notna(es) and labeled[i, 0] and labeled[i, int(es)]}
    subjects = list(es_frames)
    rows = {}
    for start in range(0, len(subjects), READ_SUBJECTS):
        block = subjects[start:start + READ_SUBJECTS]
        masks, = store.read_frames([(i, t) for i in block for t in (0, es_frames[i])], ("mask",))
        for i, ed, es_mask in zip(block, masks[0::2], masks[1::2]):
            rows[i] = {**subject_features(ed, es_mask, store.spacing_mm), "diagnosis": table.loc[i, "diagnosis"]}
    return pd.DataFrame.from_dict(rows, orient="index", columns=[*FEATURES, "diagnosis"])
