"""Voxelise the heart on the pixel grid: hard labels and partial-volume tissue fractions per frame.

Only a crop around the heart is evaluated (the rest of the image is background tissue that does
not move). Labels use the pixel centres, so the voxelised areas are unbiased estimates of the
analytic areas the volumes were calibrated with; tissue fractions are anti-aliased over one pixel
for the image (partial volume).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from factory.data.phantom.anatomy import SLICE_GAP_MM, Fields, Heart, angle_between, smoothstep
from factory.data.phantom.motion import Motion, Radii, deform
from factory.vocabulary import LV, MYO, RV

MARGIN_MM = 10.0  # crop margin beyond the heart's outline: anti-aliasing plus the widest PSF


@dataclass(frozen=True)
class Grid:
    """Short-axis stack geometry: rows x cols pixels of `pixel_mm`, slices 10 mm apart, image-centred."""

    rows: int
    cols: int
    pixel_mm: float
    n_slices: int

    @property
    def spacing_mm(self) -> tuple[float, float, float]:
        """(z, y, x) like the subject record."""
        return (SLICE_GAP_MM, self.pixel_mm, self.pixel_mm)

    def axis_mm(self, n: int, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Physical coordinate (mm, 0 at the image centre) of pixel centres start..stop along an axis."""
        index = np.arange(start, n if stop is None else stop, dtype=np.float64)
        return (index - (n - 1) / 2.0) * self.pixel_mm

    def coordinates(self) -> tuple[np.ndarray, np.ndarray]:
        """(y, x) in mm of every pixel, shaped (rows, 1) and (1, cols)."""
        return self.axis_mm(self.rows)[:, None], self.axis_mm(self.cols)[None, :]


class PapillaryMuscles:
    """Two papillary muscles: dark discs in the LV cavity that follow the wall (labelled LV, as in ACDC).

    A muscle stays within ~35 degrees of its angle and inside the ED cavity, so only those pixels
    are evaluated per frame.
    """

    def __init__(self, heart: Heart, rho: np.ndarray, theta: np.ndarray):
        self.r0_mm = heart.lv.r0_mm
        depths = heart.depths
        angles = np.asarray(heart.papillary)
        self.ed = heart.fields(angles[None, :], depths[:, None])  # (Z, 2)
        relative = depths / heart.lv.apex_mm
        depth = smoothstep((relative - 0.3) / 0.1) * smoothstep((0.85 - relative) / 0.1)  # mid-ventricle only
        near = (angle_between(theta[..., None], angles).min(axis=-1) < 0.65) & (rho < self.ed.endo.max())
        near &= (depth > 0)[:, None, None]
        self.shape = rho.shape
        self.index = np.flatnonzero(near)
        self.slice = self.index // (rho.shape[1] * rho.shape[2])
        self.rho = rho.ravel()[self.index][:, None]
        self.cos = np.cos(theta.ravel()[self.index][:, None] - angles[None, :]).astype(np.float32)
        self.depth = depth[self.slice].astype(np.float32)

    def fraction(self, lv_scale: float, pixel_mm: float) -> np.ndarray:
        """Partial-volume fraction (Z, h, w) of the muscles at contraction `lv_scale`."""
        center = (0.62 * self.ed.endo * (1.0 - lv_scale * self.ed.kinesis))[self.slice].astype(np.float32)
        radius = np.minimum(0.13 * self.r0_mm * (1.0 + 0.6 * lv_scale), 0.5 * center)
        distance = np.sqrt(np.maximum(self.rho ** 2 + center ** 2 - 2.0 * self.rho * center * self.cos, 0.0))
        inside = np.clip((radius - distance) / pixel_mm + 0.5, 0.0, 1.0).max(axis=1)
        out = np.zeros(int(np.prod(self.shape)), dtype=np.float32)
        out[self.index] = inside * self.depth
        return out.reshape(self.shape)


class HeartRaster:
    """The heart of one subject on one grid: per-pixel polar coordinates and ED fields in a crop.

    Labels need only the boundaries; the image-only details (trabeculae, papillary muscles) are
    prepared on first use.
    """

    def __init__(self, heart: Heart, motion: Motion, grid: Grid):
        self.heart, self.motion, self.grid = heart, motion, grid
        stretch = math.sqrt(heart.ellipticity)
        reach = heart.reach_mm() + float(heart.grid_fields().fat.max()) * stretch + MARGIN_MM
        depths = heart.depths
        centers = np.asarray(heart.center_mm)[None, :] + depths[:, None] * np.asarray(heart.tilt)[None, :]
        self.crop = tuple(self._window(n, lo, hi) for n, lo, hi in (
            (grid.rows, centers[:, 1].min() - reach, centers[:, 1].max() + reach),
            (grid.cols, centers[:, 0].min() - reach, centers[:, 0].max() + reach)))
        y = grid.axis_mm(grid.rows, self.crop[0].start, self.crop[0].stop)[None, :, None] - centers[:, 1, None, None]
        x = grid.axis_mm(grid.cols, self.crop[1].start, self.crop[1].stop)[None, None, :] - centers[:, 0, None, None]
        cos, sin = math.cos(heart.rotation), math.sin(heart.rotation)
        # Normalised frame: the elliptical cross-section becomes a circle (area preserving).
        u = ((x * cos + y * sin) / stretch).astype(np.float32)
        v = ((-x * sin + y * cos) * stretch).astype(np.float32)
        self.rho = np.hypot(u, v)
        self.theta = np.arctan2(v, u) + heart.rotation
        self.fields = Fields(*(f.astype(np.float32) for f in heart.fields(self.theta, depths[:, None, None])))

    @cached_property
    def _trabeculae(self) -> np.ndarray:
        return self.heart.trabecular_depth(self.theta, self.heart.depths[:, None, None]).astype(np.float32)

    @cached_property
    def _papillary(self) -> PapillaryMuscles:
        return PapillaryMuscles(self.heart, self.rho, self.theta)

    def _window(self, n: int, lo_mm: float, hi_mm: float) -> slice:
        """Pixel index range covering lo..hi mm along an axis of n pixels, clipped to the image."""
        offset = (n - 1) / 2.0
        start = max(0, int(math.floor(lo_mm / self.grid.pixel_mm + offset)))
        return slice(start, min(n, int(math.ceil(hi_mm / self.grid.pixel_mm + offset)) + 1))

    def radii(self, frame: int) -> Radii:
        """Boundaries of one frame over the crop, (Z, h, w)."""
        return deform(self.fields, np.float32(self.motion.lv_scale[frame]), np.float32(self.motion.rv_scale[frame]))

    def labels(self, frame: int) -> np.ndarray:
        """uint8 (Z, h, w) labels of one frame: 3 LV cavity, 2 myocardium, 1 RV cavity, 0 elsewhere."""
        r = self.radii(frame)
        rho = self.rho
        return np.where(rho < r.endo, LV, np.where(rho < r.epi, MYO, np.where(rho < r.rv, RV, 0))).astype(np.uint8)

    def full_labels(self, frames: np.ndarray | None = None) -> np.ndarray:
        """uint8 (T', Z, rows, cols) labels of the given frames (all by default) on the whole grid."""
        frames = np.arange(len(self.motion.lv_scale)) if frames is None else np.asarray(frames)
        out = np.zeros((len(frames), self.grid.n_slices, self.grid.rows, self.grid.cols), dtype=np.uint8)
        for i, frame in enumerate(frames):
            out[(i, slice(None)) + self.crop] = self.labels(int(frame))
        return out

    def tissue_fractions(self, frame: int) -> dict[str, np.ndarray]:
        """Partial-volume fraction of fat, myocardium and blood per pixel of the crop (they sum to <= 1)."""
        r = self.radii(frame)
        scale = np.float32(1.0 / self.grid.pixel_mm)

        def inside(radius: np.ndarray) -> np.ndarray:
            return np.clip((radius - self.rho) * scale + 0.5, 0.0, 1.0)

        lv_blood, epi, rv_blood, outer = inside(r.endo), inside(r.epi), inside(r.rv), inside(r.outer)
        compact = inside(r.endo - self._trabeculae * np.float32(1.0 + self.motion.lv_scale[frame]))
        papillary = self._papillary.fraction(self.motion.lv_scale[frame], self.grid.pixel_mm)
        muscle = np.maximum(papillary * lv_blood, lv_blood - compact)
        return {
            "fat": inside(r.outer + self.fields.fat) - outer,
            "myocardium": (outer - rv_blood) + (epi - lv_blood) + muscle,
            "blood": (rv_blood - epi) + lv_blood - muscle,
        }
