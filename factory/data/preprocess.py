"""Preprocessing: a native-geometry `Subject` -> the preset's canonical geometry, with MONAI transforms.

Steps, all in the short-axis voxel frame (an oblique stack is never reoriented to RAS, so every
subject keeps rows = NIfTI j and columns = NIfTI i):
1. cut the native in-plane field of view that the output window will cover (plus a voxel), centred
   on the LV+RV centroid at ED (image centre when unlabeled);
2. scale intensities by the 1st..99.5th percentile over all its frames to [-1, 1], clipped (at
   native size, where it is cheapest; bilinear resampling cannot leave [-1, 1]);
3. resample every frame to the preset spacing (bilinear image, nearest labels; through-plane too);
4. crop/pad in-plane to exactly (H, W) around the same centre, padding with -1 / label 0;
5. keep at most Z slices (centred on the heart when labeled, central otherwise) and pad evenly on
   both sides to Z, recording real slices in `slice_mask`.
Frames are never resampled in time; the clinical values measured at native resolution are kept, and
meta gains `n_slices` (real slices kept) and `native_spacing_mm` (z, y, x as text, e.g. '10x1.5x1.5').
"""

from __future__ import annotations

import math

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import BorderPadd, Compose, ScaleIntensityRangePercentilesd, Spacingd, SpatialCropd

from factory.presets import Geometry, Preset
from factory.record import Subject
from factory.vocabulary import LV, RV

PERCENTILES = (1.0, 99.5)
INTENSITY_RANGE = (-1.0, 1.0)
KEYS = ("image", "mask")


def _voxel_frame(array: np.ndarray, spacing_mm: tuple[float, float, float]) -> MetaTensor:
    """(T, Z, H, W) array as a channel-first MetaTensor whose affine is just the voxel spacing."""
    affine = torch.diag(torch.tensor([*spacing_mm, 1.0], dtype=torch.float64))
    return MetaTensor(torch.from_numpy(np.ascontiguousarray(array)), affine=affine)


def _window_start(centre: float, size: int, length: int, keep_inside: bool) -> int:
    """First index of a `size`-long window centred on `centre` (continuous voxel coordinates).

    With `keep_inside` the window never leaves data it could cover: it stays within the axis when
    the axis is longer than `size`, and holds the whole axis when it is shorter.
    """
    start = math.floor(float(centre) - size / 2 + 0.5)
    if keep_inside:
        start = int(np.clip(start, min(0, length - size), max(0, length - size)))
    return start


def _window_centre(mask: np.ndarray, labeled: np.ndarray, n_slices: int) -> np.ndarray:
    """(z, y, x) centre, in continuous voxel coordinates of a (T, Z, H, W) mask, of the canonical window.

    In-plane: the LV+RV centroid at ED when ED is labeled, else the image centre. Through-plane: the
    middle of the labeled heart slices when there are more than `n_slices` slices, else the middle
    of the stack (all slices are kept, padded evenly on both sides).
    """
    centre = np.array(mask.shape[1:], dtype=np.float64) / 2
    heart_slices = np.flatnonzero(mask[labeled].any(axis=(0, 2, 3))) if labeled.any() else np.empty(0)
    if heart_slices.size and mask.shape[1] > n_slices:
        centre[0] = (heart_slices[0] + heart_slices[-1] + 1) / 2
    cavities = np.argwhere(np.isin(mask[0], (LV, RV))) if labeled[0] else np.empty((0, 3))
    if len(cavities):
        centre[1:] = cavities[:, 1:].mean(axis=0) + 0.5
    return centre


def _field_of_view(centre: np.ndarray, spacing_mm: tuple[float, float, float], geometry: Geometry,
                   lengths: tuple[int, ...]) -> SpatialCropd:
    """Native in-plane crop (every slice kept) just holding the canonical window, with a 1-voxel margin.

    Resampling and percentiles then touch only the voxels that can end up in the output rather than
    the whole field of view; the exact window is cut after resampling.
    """
    half = np.ceil(np.multiply(geometry.shape, geometry.spacing_mm) / np.array(spacing_mm) / 2) + 1
    start, end = np.floor(centre - half).astype(int), np.ceil(centre + half).astype(int)
    start[0], end[0] = 0, lengths[0]
    return SpatialCropd(KEYS, roi_start=start.tolist(), roi_end=end.tolist())


def _crop_or_pad(starts: list[int], shape: tuple[int, ...], lengths: tuple[int, ...]) -> Compose:
    """Cut the window [start, start + size) per axis, padding outside the data (-1 image, 0 labels)."""
    before = [max(0, -s) for s in starts]
    after = [max(0, s + size - n) for s, size, n in zip(starts, shape, lengths)]
    border = [pad for pair in zip(before, after) for pad in pair]
    roi_start = [s + b for s, b in zip(starts, before)]
    return Compose([
        BorderPadd("image", border, value=INTENSITY_RANGE[0]),
        BorderPadd("mask", border),
        SpatialCropd(KEYS, roi_start=roi_start, roi_end=[r + size for r, size in zip(roi_start, shape)]),
    ])


def preprocess(subject: Subject, preset: Preset) -> Subject:
    """Return `subject` resampled, intensity-scaled and cropped/padded to `preset.geometry`."""
    geometry = preset.geometry
    scale = ScaleIntensityRangePercentilesd("image", lower=PERCENTILES[0], upper=PERCENTILES[1],
                                            b_min=INTENSITY_RANGE[0], b_max=INTENSITY_RANGE[1], clip=True)
    resample = Spacingd(KEYS, pixdim=geometry.spacing_mm, mode=("bilinear", "nearest"),
                        padding_mode=("border", "zeros"), dtype=np.float32)
    data = {"image": _voxel_frame(subject.image.astype(np.float32), subject.spacing_mm),
            "mask": _voxel_frame(subject.mask, subject.spacing_mm)}
    centre = _window_centre(subject.mask, subject.labeled, geometry.n_slices)
    fov = _field_of_view(centre, subject.spacing_mm, geometry, subject.image.shape[1:])
    data = Compose([fov, scale, resample])(data)
    mask = data["mask"].as_tensor().numpy()
    lengths = mask.shape[1:]
    centre = _window_centre(mask, subject.labeled, geometry.n_slices)
    starts = [_window_start(c, size, n, keep_inside=(axis == 0))
              for axis, (c, size, n) in enumerate(zip(centre, geometry.shape, lengths))]
    data = _crop_or_pad(starts, geometry.shape, lengths)(data)

    n_slices, z_start = geometry.shape[0], starts[0]
    slice_mask = np.zeros(n_slices, dtype=bool)
    slice_mask[max(0, -z_start): lengths[0] - z_start] = True
    meta = {**subject.meta, "n_slices": int(slice_mask.sum()),
            "native_spacing_mm": "x".join(f"{s:g}" for s in subject.spacing_mm)}
    return Subject(
        subject_id=subject.subject_id,
        image=data["image"].as_tensor().numpy().astype(np.float32),
        mask=np.rint(data["mask"].as_tensor().numpy()).astype(np.uint8),
        labeled=subject.labeled.copy(), spacing_mm=geometry.spacing_mm, es_frame=subject.es_frame,
        slice_mask=slice_mask, phase=None if subject.phase is None else subject.phase.copy(),
        affine=None, meta=meta)
