"""Clinical values measured from segmentation masks (ACDC labels: 1 RV, 2 MYO, 3 LV)."""

from __future__ import annotations

import math

import numpy as np

from factory.vocabulary import LV, MYO, RV

MYOCARDIUM_DENSITY_G_PER_ML = 1.05

CLINICAL_COLUMNS: tuple[str, ...] = (
    "edv_ml", "esv_ml", "ef_pct", "myo_mass_g", "rv_edv_ml", "rv_esv_ml", "rv_ef_pct")


def label_volumes_ml(mask: np.ndarray, spacing_mm: tuple[float, float, float]) -> dict[str, np.ndarray]:
    """Per-frame volume in ml of RV, MYO and LV for a (T, Z, H, W) or (Z, H, W) label array."""
    voxel_ml = float(np.prod(spacing_mm)) / 1000.0
    axes = tuple(range(mask.ndim - 3, mask.ndim))
    return {name: np.count_nonzero(mask == label, axis=axes) * voxel_ml
            for name, label in (("rv", RV), ("myo", MYO), ("lv", LV))}


def ejection_fraction(edv: float, esv: float) -> float:
    """EF in percent; NaN when the end-diastolic volume is empty."""
    return 100.0 * (edv - esv) / edv if edv > 0 else math.nan


def measure(mask: np.ndarray, spacing_mm: tuple[float, float, float], es_frame: int,
            ed_frame: int = 0) -> dict[str, float]:
    """EDV, ESV, EF, myocardial mass (at ED) and RV volumes from a (T, Z, H, W) mask sequence."""
    vol = label_volumes_ml(mask[[ed_frame, es_frame]], spacing_mm)
    lv_ed, lv_es = (float(v) for v in vol["lv"])
    rv_ed, rv_es = (float(v) for v in vol["rv"])
    return {
        "edv_ml": lv_ed,
        "esv_ml": lv_es,
        "ef_pct": ejection_fraction(lv_ed, lv_es),
        "myo_mass_g": float(vol["myo"][0]) * MYOCARDIUM_DENSITY_G_PER_ML,
        "rv_edv_ml": rv_ed,
        "rv_esv_ml": rv_es,
        "rv_ef_pct": ejection_fraction(rv_ed, rv_es),
    }


def empty_measurement() -> dict[str, float]:
    """The clinical columns of a subject without labels: all NaN (null in the metadata table)."""
    return {name: math.nan for name in CLINICAL_COLUMNS}
