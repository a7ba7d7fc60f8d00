"""Anatomical quality gate on a generated ED mask: is this a plausible short-axis heart?

Checks are deliberately simple and explainable: each failure returns a reason string, which the
sampler records, and a subject is resampled (with a seed derived from its own) when it fails.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from factory.data.clinical import LV, MYO, label_volumes_ml

# Plausible ranges (adult hearts, generous on purpose: the gate rejects broken anatomy, not disease).
LV_ML = (15.0, 500.0)
RV_ML = (5.0, 500.0)
MYO_ML = (20.0, 400.0)
MIN_ENCLOSURE = 0.75  # share of the LV cavity's outer rim that must be myocardium
MIN_LARGEST_COMPONENT = 0.95  # share of LV voxels in its largest connected component


@dataclass
class GateResult:
    passed: bool
    reasons: list[str] = field(default_factory=list)


def enclosure(mask: np.ndarray) -> float:
    """Share of the voxels bordering the LV cavity in-plane that are myocardium (1.0 = fully enclosed)."""
    lv = mask == LV
    rim = ndimage.binary_dilation(lv, structure=np.array([[[0, 1, 0], [1, 1, 1], [0, 1, 0]]], bool)) & ~lv
    return float(np.count_nonzero(mask[rim] == MYO) / max(np.count_nonzero(rim), 1))


def check_ed_mask(mask: np.ndarray, spacing_mm: tuple[float, float, float],
                  slice_mask: np.ndarray | None = None) -> GateResult:
    """Gate a (Z, H, W) ED mask; `slice_mask` marks the slices that should hold heart."""
    reasons = []
    volumes = {k: float(v) for k, v in label_volumes_ml(mask, spacing_mm).items()}
    for name, (low, high) in (("lv", LV_ML), ("rv", RV_ML), ("myo", MYO_ML)):
        if not low <= volumes[name] <= high:
            reasons.append(f"{name.upper()} volume {volumes[name]:.0f} ml outside {low:.0f}-{high:.0f}")
    heart_slices = np.flatnonzero((mask > 0).any(axis=(1, 2)))
    if heart_slices.size and heart_slices[-1] - heart_slices[0] + 1 != heart_slices.size:
        reasons.append(f"heart slices not contiguous: {heart_slices.tolist()}")
    if slice_mask is not None and heart_slices.size and not slice_mask[heart_slices].all():
        reasons.append("heart extends into padding slices")
    if volumes["lv"] > 0:
        share = enclosure(mask)
        if share < MIN_ENCLOSURE:
            reasons.append(f"LV cavity not enclosed by myocardium ({share:.0%} of its rim)")
        labels, count = ndimage.label(mask == LV)
        if count > 1:
            largest = np.bincount(labels.ravel())[1:].max() / np.count_nonzero(labels)
            if largest < MIN_LARGEST_COMPONENT:
                reasons.append(f"LV cavity fragmented into {count} pieces")
    return GateResult(passed=not reasons, reasons=reasons)
