"""Mask-based temporal coherence of subjects whose every frame is labeled (all synthetic subjects).

Per subject: smoothness of the RV / MYO / LV volume curves (mean |second difference| over the
cycle divided by the structure's largest volume), Dice between consecutive frames, whether ES
(smallest LV volume) falls on the frame whose phase is 100 (the requested ES), the coefficient of
variation of the myocardial volume (a real myocardium is incompressible) and the share of frames
whose mask passes the anatomical gate.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from factory.data.clinical import label_volumes_ml
from factory.data.gate import check_ed_mask
from factory.evaluate.overlap import dice
from factory.reporting.stats import mean_sd
from factory.store.reader import Store
from factory.vocabulary import PHASE_ES, STRUCTURES


def fully_labeled(store: Store) -> list[int]:
    """Subjects with three or more frames, every one of them labeled."""
    n_frames = store.table["n_frames"].to_numpy()
    labeled = store.group["labeled"][:]
    return [i for i in range(store.n_subjects) if n_frames[i] >= 3 and labeled[i, :n_frames[i]].all()]


def subject_coherence(mask: np.ndarray, volumes: dict[str, np.ndarray], phase: np.ndarray,
                      spacing_mm: tuple[float, float, float], slice_mask: np.ndarray | None = None) -> dict:
    """Coherence measures of one (T, Z, H, W) mask sequence, its `label_volumes_ml` and per-frame phase."""
    curves = {s: volumes[s.lower()] for s in STRUCTURES}
    consecutive = dice(mask[1:], mask[:-1])
    measured_es, requested_es = int(np.argmin(curves["LV"])), int(np.argmin(np.abs(phase - PHASE_ES)))
    myo = curves["MYO"]
    return {
        **{f"smoothness_{s}": float(np.abs(np.diff(v, 2)).mean() / v.max()) if v.max() > 0 else np.nan
           for s, v in curves.items()},
        **{f"frame_dice_{s}": float(np.nanmean(consecutive[:, k])) if np.isfinite(consecutive[:, k]).any() else np.nan
           for k, s in enumerate(STRUCTURES)},
        "es_frame_error": measured_es - requested_es,
        "es_phase_error": float(phase[measured_es] - PHASE_ES),
        "myo_volume_cv": float(myo.std() / myo.mean()) if myo.mean() > 0 else np.nan,
        "gate_pass_share": float(np.mean([check_ed_mask(m, spacing_mm, slice_mask).passed for m in mask])),
    }


def mask_coherence(stores: list[Store]) -> tuple[dict, list[dict]]:
    """Summary over the fully labeled subjects of `stores`, and their (phase, volume curves) for plots."""
    rows, curves = [], []
    for store in stores:
        subjects = fully_labeled(store)
        for i, (mask,) in zip(subjects, store.read_sequences(subjects, ("mask",))):
            phase = store.read("phase", i, slice(0, len(mask)))
            volumes = label_volumes_ml(mask, store.spacing_mm)
            rows.append(subject_coherence(mask, volumes, phase, store.spacing_mm, store.read("slice_mask", i)))
            curves.append({"phase": phase, **volumes})
    if not rows:
        return {"n_subjects": 0}, curves
    table = pd.DataFrame(rows)
    errors = table["es_frame_error"].to_numpy()
    return {"n_subjects": len(table),
            "volume_smoothness": {s: mean_sd(table[f"smoothness_{s}"]) for s in STRUCTURES},
            "frame_to_frame_dice": {s: mean_sd(table[f"frame_dice_{s}"]) for s in STRUCTURES},
            "es_at_requested_frame_share": float(np.mean(errors == 0)),
            "es_frame_abs_error": mean_sd(np.abs(errors)),
            "es_phase_error": mean_sd(table["es_phase_error"]),
            "myo_volume_cv": mean_sd(table["myo_volume_cv"]),
            "gate_pass_share": mean_sd(table["gate_pass_share"])}, curves
