"""Clinical and shape features of a subject measured on its ED and ES masks (diagnosis classifier input)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from factory.data.clinical import measure
from factory.store.reader import Store
from factory.vocabulary import LV, MYO

MEASURED: tuple[str, ...] = ("edv_ml", "esv_ml", "ef_pct", "myo_mass_g", "rv_edv_ml", "rv_esv_ml")
FEATURES: tuple[str, ...] = (*MEASURED, "rv_lv_ratio", "wall_thickness_mm")


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
    rows = {}
    for i, row in table.iterrows():
        es = row["es_frame"]
        if pd.isna(es) or not (labeled[i, 0] and labeled[i, int(es)]):
            continue
        ed, es_mask = store.read("mask", int(i), 0), store.read("mask", int(i), int(es))
        rows[i] = {**subject_features(ed, es_mask, store.spacing_mm), "diagnosis": row["diagnosis"]}
    return pd.DataFrame.from_dict(rows, orient="index", columns=[*FEATURES, "diagnosis"])
