"""The subject record: one schema for real cohorts and synthetic output.

Array layout is (T, Z, H, W) everywhere inside the project. NIfTI voxel axes (i, j, k[, t]) map to
(t, k, j, i): Z is the slice axis k, H the row axis j, W the column axis i, and `spacing_mm` is
given in the same (z, y, x) order as the array axes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from factory.vocabulary import PHASE_CYCLE, PHASE_ES


def cycle_phase(n_frames: int, es_frame: int) -> np.ndarray:
    """Phase of every frame of a cycle that starts at ED (frame 0) and reaches ES at `es_frame`.

    Systole (0..es) maps linearly onto 0..100 and diastole (es..T) onto 100..200, so the frame after
    the last one would be the next ED at 200.
    """
    if not 0 < es_frame < n_frames:
        raise ValueError(f"ES frame {es_frame} must lie strictly inside a cycle of {n_frames} frames")
    t = np.arange(n_frames, dtype=np.float64)
    systole = PHASE_ES * t / es_frame
    diastole = PHASE_ES + (PHASE_CYCLE - PHASE_ES) * (t - es_frame) / (n_frames - es_frame)
    return np.where(t <= es_frame, systole, diastole).astype(np.float32)


@dataclass
class Subject:
    """One cine study: image and mask sequences with everything needed to interpret them.

    Real subjects come from readers in their native geometry (raw intensities, `affine` set);
    after preprocessing and for synthetic output they are in a preset's canonical geometry with
    intensities in [-1, 1]. Frame 0 is always ED.
    """

    subject_id: str
    image: np.ndarray  # float32 (T, Z, H, W)
    mask: np.ndarray  # uint8 (T, Z, H, W), labels 0 bg, 1 RV, 2 MYO, 3 LV (vocabulary); zeros where unlabeled
    labeled: np.ndarray  # bool (T,): which frames carry a trusted mask
    spacing_mm: tuple[float, float, float]  # (z, y, x)
    es_frame: int | None  # None when unknown (unlabeled pools)
    slice_mask: np.ndarray | None = None  # bool (Z,): which slices are real (not padding)
    phase: np.ndarray | None = None  # float32 (T,); derived from es_frame when None
    affine: np.ndarray | None = None  # 4x4 NIfTI affine of the (i, j, k) voxel axes, native data only
    meta: dict = field(default_factory=dict)  # source, vendor, diagnosis, clinical values, provenance

    def __post_init__(self) -> None:
        if self.image.ndim != 4:
            raise ValueError(f"{self.subject_id}: image must be (T, Z, H, W), got shape {self.image.shape}")
        if self.mask.shape != self.image.shape:
            raise ValueError(
                f"{self.subject_id}: mask shape {self.mask.shape} != image shape {self.image.shape}")
        t, z = self.image.shape[:2]
        if self.labeled.shape != (t,):
            raise ValueError(f"{self.subject_id}: labeled must have one entry per frame ({t})")
        if self.slice_mask is None:
            self.slice_mask = np.ones(z, dtype=bool)
        if self.phase is None:
            self.phase = (cycle_phase(t, self.es_frame) if self.es_frame is not None and t > 1
                          else np.zeros(t, dtype=np.float32))

    @property
    def n_frames(self) -> int:
        return int(self.image.shape[0])

    @property
    def n_slices(self) -> int:
        return int(np.count_nonzero(self.slice_mask))


def centred_slice_mask(n_slices: int, z: int) -> np.ndarray:
    """(Z,) bool mask of `n_slices` real slices centred in a stack of `z`, as preprocessing pads them."""
    if not 1 <= n_slices <= z:
        raise ValueError(f"{n_slices} slices do not fit a stack of {z}")
    start = (z - n_slices) // 2
    mask = np.zeros(z, dtype=bool)
    mask[start:start + n_slices] = True
    return mask
