"""Anatomical quality gate on a segmentation mask: is this a plausible short-axis heart?

`check_ed_mask` gates a generated ED mask (the sampler resamples a subject that fails, the evaluation
counts the frames that pass); `check_labeled_mask` applies to the trusted frames of a real cohort at
ingest only those of its checks that hold for every real heart at any phase. Checks are deliberately
simple and explainable: each failure returns a reason string.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from factory.data.clinical import label_volumes_ml
from factory.vocabulary import LV, MYO

# Plausible ranges (adult hearts, generous on purpose: the gate rejects broken anatomy, not disease).
LV_ML = (15.0, 500.0)
RV_ML = (5.0, 500.0)
MYO_ML = (20.0, 400.0)
ED_VOLUMES_ML = {"lv": LV_ML, "rv": RV_ML, "myo": MYO_ML}
# At any phase: the LV cavity of a hypertrophied heart at end-systole can shrink below the ED floor
# (ACDC's smallest ESV is 19 ml; cavity obliteration goes lower), so there it only has to be clearly
# present. The myocardium keeps its volume over the cycle and the RV never empties.
ANY_PHASE_VOLUMES_ML = {**ED_VOLUMES_ML, "lv": (5.0, LV_ML[1])}
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


def _volume_reasons(mask: np.ndarray, spacing_mm: tuple[float, float, float],
                    ranges: dict[str, tuple[float, float]]) -> list[str]:
    """One reason per structure whose volume lies outside its (low, high) range in ml."""
    volumes = {k: float(v) for k, v in label_volumes_ml(mask, spacing_mm).items()}
    return [f"{name.upper()} volume {volumes[name]:.0f} ml outside {low:.0f}-{high:.0f}"
            for name, (low, high) in ranges.items() if not low <= volumes[name] <= high]


def _heart_slices(mask: np.ndarray) -> np.ndarray:
    """Indices of the slices holding any label."""
    return np.flatnonzero((mask > 0).any(axis=(1, 2)))


def _contiguity_reasons(heart_slices: np.ndarray) -> list[str]:
    """A heart has no gap between its slices; a gap is a missing or misplaced slice."""
    if heart_slices.size and heart_slices[-1] - heart_slices[0] + 1 != heart_slices.size:
        return [f"heart slices not contiguous: {heart_slices.tolist()}"]
    return []


def _padding_reasons(heart_slices: np.ndarray, slice_mask: np.ndarray | None) -> list[str]:
    """Heart only on real slices, never on the padding of a canonical stack."""
    if slice_mask is not None and heart_slices.size and not slice_mask[heart_slices].all():
        return ["heart extends into padding slices"]
    return []


def _enclosure_reasons(mask: np.ndarray) -> list[str]:
    """The LV cavity (when there is one) sits inside the myocardial ring."""
    if not (mask == LV).any():
        return []
    share = enclosure(mask)
    return [f"LV cavity not enclosed by myocardium ({share:.0%} of its rim)"] if share < MIN_ENCLOSURE else []


def _fragment_reasons(mask: np.ndarray) -> list[str]:
    """The LV cavity is essentially one connected piece."""
    labels, count = ndimage.label(mask == LV)
    if count > 1 and np.bincount(labels.ravel())[1:].max() / np.count_nonzero(labels) < MIN_LARGEST_COMPONENT:
        return [f"LV cavity fragmented into {count} pieces"]
    return []


def check_ed_mask(mask: np.ndarray, spacing_mm: tuple[float, float, float],
                  slice_mask: np.ndarray | None = None) -> GateResult:
    """Gate a (Z, H, W) ED mask; `slice_mask` marks the slices that should hold heart."""
    heart_slices = _heart_slices(mask)
    reasons = [*_volume_reasons(mask, spacing_mm, ED_VOLUMES_ML), *_contiguity_reasons(heart_slices),
               *_padding_reasons(heart_slices, slice_mask), *_enclosure_reasons(mask), *_fragment_reasons(mask)]
    return GateResult(passed=not reasons, reasons=reasons)


def check_labeled_mask(mask: np.ndarray, spacing_mm: tuple[float, float, float]) -> GateResult:
    """Gate a trusted (Z, H, W) mask of a real heart at any phase (ED, ES or between), in native geometry.

    Not empty; volumes in `ANY_PHASE_VOLUMES_ML`; contiguous heart slices; LV enclosed by myocardium.
    Left out of `check_ed_mask`: the ED floor of the LV volume, the padding check (a native stack has
    no padding) and fragmentation (at ES papillary muscles and trabeculae pinch off cavity pockets).
    """
    if not mask.any():
        return GateResult(passed=False, reasons=["mask is empty (no RV, MYO or LV voxels)"])
    reasons = [*_volume_reasons(mask, spacing_mm, ANY_PHASE_VOLUMES_ML), *_contiguity_reasons(_heart_slices(mask)),
               *_enclosure_reasons(mask)]
    return GateResult(passed=not reasons, reasons=reasons)
