"""End-diastolic heart geometry: LV cavity, myocardium, RV crescent, per diagnosis.

The heart is described in polar coordinates around the LV axis: an angle theta in the short-axis
plane (0 = +x, pi/2 = +y, i.e. down on screen) and the depth s in mm from the base plane toward
the apex. Every boundary is a radius function of (theta, s), so the same code evaluates it on a
coarse angle grid (to calibrate volumes analytically) and on the pixel grid (to voxelise it).
The LV cavity is a truncated prolate "bullet" narrowing to the apex; the myocardium a shell of
(regionally varying) thickness; the RV a crescent of blood wrapping the septum.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import NamedTuple

import numpy as np

SLICE_GAP_MM = 10.0
N_THETA = 256  # angle samples of the analytic area integrals
THETA = np.linspace(0.0, 2.0 * math.pi, N_THETA, endpoint=False)


def smoothstep(u: np.ndarray | float) -> np.ndarray:
    """0 below 0, 1 above 1, a raised cosine in between."""
    return 0.5 - 0.5 * np.cos(math.pi * np.clip(u, 0.0, 1.0))


def angle_between(theta: np.ndarray, center: float | np.ndarray) -> np.ndarray:
    """Absolute angular distance in 0..pi."""
    return np.abs(np.mod(theta - center + math.pi, 2.0 * math.pi) - math.pi)


def angular_window(theta: np.ndarray, center: float, half_width: float, taper: float) -> np.ndarray:
    """1 within `half_width` of `center` (rad), falling smoothly to 0 over +-`taper` around the edge."""
    distance = angle_between(theta, center)
    return smoothstep((half_width + taper - distance) / (2.0 * taper))


def profile(s: np.ndarray, equator: float, apex: float, bluntness: float) -> np.ndarray:
    """Relative radius along the long axis: 1 at the equator, 0 at the apex (superellipse)."""
    x = np.abs((np.asarray(s, dtype=np.float64) - equator) / (apex - equator))
    return np.where(x < 1.0, np.abs(1.0 - np.minimum(x, 1.0) ** bluntness) ** (1.0 / bluntness), 0.0)


def volume_ml(area_terms: np.ndarray) -> np.ndarray:
    """Voxelised volume (ml) of star-shaped regions from r^2 sampled on THETA, summed over slices.

    `area_terms` has the angle on its last axis and slices on the one before; the area of one
    slice is (1/2) * integral r^2 dtheta = pi * mean(r^2).
    """
    return math.pi * area_terms.mean(axis=-1).sum(axis=-1) * SLICE_GAP_MM / 1000.0


@dataclass(frozen=True)
class Infarct:
    """A transmural scar: thinned, akinetic wall over an angular sector and a range of depths."""

    angle: float  # rad, sector centre
    half_width: float  # rad
    s_from_mm: float
    s_to_mm: float
    thinning: float  # fraction of the wall thickness lost
    kinesis: float  # residual inward motion (1 = normal, 0 = akinetic)

    def extent(self, theta: np.ndarray, s: np.ndarray) -> np.ndarray:
        """0..1 membership of (theta, s) in the scar, with smooth borders."""
        depth = smoothstep((s - self.s_from_mm) / 8.0 + 0.5) * smoothstep((self.s_to_mm - s) / 8.0 + 0.5)
        return angular_window(theta, self.angle, self.half_width, 0.25) * depth


@dataclass(frozen=True)
class LeftVentricle:
    """LV cavity and myocardium at end-diastole."""

    r0_mm: float  # cavity radius scale, calibrated so the voxelised cavity holds the EDV
    apex_mm: float  # depth of the cavity apex
    equator_mm: float  # depth of the widest cross-section
    bluntness: float  # profile exponent: 2 = ellipsoid, larger = more bullet-shaped
    apex_cap_mm: float  # myocardium beyond the cavity apex
    wall_mm: float  # free-wall thickness
    septal_gain: float  # extra septal thickness as a fraction of wall_mm (asymmetric HCM)
    septal_kinesis: float  # inward motion of the septum relative to the free wall
    outline: tuple[tuple[float, float], ...]  # (amplitude, phase) of Fourier modes 2, 3, ... of the cavity
    infarct: Infarct | None

    def outline_factor(self, theta: np.ndarray) -> np.ndarray:
        return 1.0 + sum(a * np.cos((m + 2) * theta + phase) for m, (a, phase) in enumerate(self.outline))


@dataclass(frozen=True)
class RightVentricle:
    """RV blood crescent on the septal side of the LV, and its thin free wall."""

    height_mm: float  # crescent thickness scale, calibrated to the RV EDV
    half_width: float  # angular half-width at the base (rad)
    length_mm: float  # depth where the RV ends (before the LV apex)
    wall_mm: float

    def shape(self, theta: np.ndarray, s: np.ndarray, septum: float) -> np.ndarray:
        """Crescent thickness for height 1: widest at the base and mid-septum, 0 at the insertions."""
        along = np.sqrt(np.clip(1.0 - (s / self.length_mm) ** 2, 0.0, 1.0))
        half_width = self.half_width * (1.0 - 0.3 * np.clip(s / self.length_mm, 0.0, 1.0))
        offset = angle_between(theta, septum)
        across = np.cos(0.5 * math.pi * np.minimum(offset / half_width, 1.0)) ** 0.5
        return along * across


class Fields(NamedTuple):
    """End-diastolic radii (mm, in the LV's normalised in-plane frame) and motion weights."""

    endo: np.ndarray  # LV cavity boundary
    epi: np.ndarray  # LV epicardium
    kinesis: np.ndarray  # weight of the inward endocardial motion (1 normal, ~0 akinetic)
    rv_height: np.ndarray  # RV crescent thickness beyond the epicardium
    rv_wall: np.ndarray  # RV free-wall thickness beyond the crescent
    fat: np.ndarray  # epicardial fat thickness beyond everything


@dataclass(frozen=True)
class Heart:
    """A whole heart at ED, placed in the scene, with the depth of every short-axis slice."""

    lv: LeftVentricle
    rv: RightVentricle
    septum: float  # direction (rad) from the LV centre to the septum / RV
    center_mm: tuple[float, float]  # LV axis position (x, y) in the image plane at the first slice
    tilt: tuple[float, float]  # in-plane drift of the LV axis per mm of depth (imperfect SAX planning)
    rotation: float  # orientation (rad) of the LV cross-section's long in-plane axis
    ellipticity: float  # ratio of the long to the short in-plane semi-axis of the cross-section
    slice_depths_mm: tuple[float, ...]  # depth s of each slice, 10 mm apart
    fat_mm: float
    fat_modes: tuple[tuple[float, float], ...]  # (amplitude, phase) of modes 1, 2, ... of the fat layer
    papillary: tuple[float, float]  # angles of the two papillary muscles
    trabeculae: tuple[tuple[float, float, float], ...]  # (angle, depth into the cavity mm, angular width)

    def trabecular_depth(self, theta: np.ndarray, s: np.ndarray) -> np.ndarray:
        """How far (mm) trabeculations protrude into the cavity at ED: spikes, more toward the apex."""
        lut = np.linspace(0.0, 2.0 * math.pi, 2048, endpoint=False)
        spikes = sum(depth * np.exp(-0.5 * (angle_between(lut, angle) / width) ** 2)
                     for angle, depth, width in self.trabeculae)
        around = np.interp(np.mod(theta, 2.0 * math.pi), lut, spikes, period=2.0 * math.pi)
        return around * (0.5 + 0.5 * np.clip(s / self.lv.apex_mm, 0.0, 1.0))

    def reach_mm(self) -> float:
        """Largest distance (mm) from the LV axis to the heart's outline (epicardial fat excluded)."""
        ed = self.grid_fields()
        return float((ed.epi + ed.rv_height + ed.rv_wall).max()) * math.sqrt(self.ellipticity)

    @property
    def depths(self) -> np.ndarray:
        return np.asarray(self.slice_depths_mm, dtype=np.float64)

    def fields(self, theta: np.ndarray, s: np.ndarray) -> Fields:
        """Evaluate every ED boundary at broadcastable (theta, s) arrays."""
        lv, rv = self.lv, self.rv
        cavity = lv.r0_mm * lv.outline_factor(theta)
        septal = angular_window(theta, self.septum, math.radians(55), math.radians(25))
        wall = lv.wall_mm * (1.0 + lv.septal_gain * septal)
        kinesis = 1.0 - (1.0 - lv.septal_kinesis) * septal
        if lv.infarct is not None:
            scar = lv.infarct.extent(theta, s)
            wall = wall * (1.0 - lv.infarct.thinning * scar)
            kinesis = kinesis * (1.0 - (1.0 - lv.infarct.kinesis) * scar)
        endo = cavity * profile(s, lv.equator_mm, lv.apex_mm, lv.bluntness)
        epi = (cavity + wall) * profile(s, lv.equator_mm, lv.apex_mm + lv.apex_cap_mm, lv.bluntness)
        rv_height = rv.height_mm * rv.shape(theta, s, self.septum)
        rv_wall = rv.wall_mm * np.clip(rv_height / rv.wall_mm, 0.0, 1.0)
        fat_shape = 0.4 + sum(a * np.cos((m + 1) * theta + phase) for m, (a, phase) in enumerate(self.fat_modes))
        fat = self.fat_mm * np.clip(fat_shape, 0.0, None) * np.clip(1.0 - 0.6 * s / lv.apex_mm, 0.2, 1.0)
        return Fields(*np.broadcast_arrays(endo, epi, kinesis, rv_height, rv_wall, fat))

    def grid_fields(self) -> Fields:
        """Fields on the (slices, THETA) grid used by the analytic volume integrals."""
        return self.fields(THETA[None, :], self.depths[:, None])


@dataclass(frozen=True)
class Signature:
    """What a diagnosis does to the anatomy (2-tuples: uniform ranges, or (mean, sd) where noted)."""

    wall_mm: tuple[float, float]
    septal_gain: tuple[float, float]
    bluntness: tuple[float, float]
    rv_to_lv_edv: tuple[float, float]  # (mean, sd) of RV EDV / LV EDV
    rv_ef_pct: tuple[float, float]  # (mean, sd)
    rv_half_width_deg: tuple[float, float]
    infarct: bool = False


# RV volumes are not in the ACDC table; ratios and RV EFs follow published cine-MRI values per group.
SIGNATURES: dict[str, Signature] = {
    "NOR": Signature((7.0, 9.5), (0.0, 0.15), (2.3, 3.0), (1.10, 0.12), (58.0, 6.0), (85.0, 105.0)),
    "MINF": Signature((7.0, 9.5), (0.0, 0.15), (2.3, 3.0), (0.90, 0.15), (48.0, 8.0), (85.0, 105.0), infarct=True),
    "DCM": Signature((6.0, 8.0), (0.0, 0.10), (2.0, 2.4), (0.65, 0.15), (38.0, 10.0), (85.0, 100.0)),
    "HCM": Signature((11.0, 15.0), (0.2, 0.7), (2.3, 3.0), (1.00, 0.15), (62.0, 7.0), (80.0, 100.0)),
    "RV": Signature((6.5, 9.0), (0.0, 0.15), (2.3, 3.0), (2.00, 0.35), (32.0, 8.0), (100.0, 120.0)),
}
RV_EDV_RANGE_ML = (50.0, 450.0)
RV_EF_RANGE = (10.0, 80.0)


def rv_targets(diagnosis: str, lv_edv_ml: float, rng: np.random.Generator) -> tuple[float, float]:
    """RV end-diastolic and end-systolic volume (ml) for a diagnosis and LV size."""
    sig = SIGNATURES[diagnosis]
    edv = float(np.clip(lv_edv_ml * max(rng.normal(*sig.rv_to_lv_edv), 0.3), *RV_EDV_RANGE_ML))
    ef = float(np.clip(rng.normal(*sig.rv_ef_pct), *RV_EF_RANGE))
    return edv, edv * (1.0 - ef / 100.0)


def _sample_infarct(septum: float, apex_mm: float, rng: np.random.Generator) -> Infarct:
    """LAD (anterior/anteroseptal, apical half) or RCA/LCx (inferior/inferolateral, basal half) scar."""
    if rng.random() < 0.6:
        angle = septum + math.radians(rng.uniform(40.0, 100.0))
        s_from, s_to = rng.uniform(0.25, 0.5) * apex_mm, apex_mm + 20.0
    else:
        angle = septum - math.radians(rng.uniform(80.0, 140.0))
        s_from, s_to = -20.0, rng.uniform(0.5, 0.8) * apex_mm
    return Infarct(angle=angle, half_width=math.radians(rng.uniform(30.0, 55.0)), s_from_mm=s_from,
                   s_to_mm=s_to, thinning=rng.uniform(0.35, 0.55), kinesis=rng.uniform(0.0, 0.2))


def _modes(rng: np.random.Generator, amplitudes: tuple[float, ...]) -> tuple[tuple[float, float], ...]:
    return tuple((float(rng.uniform(0.0, a)), float(rng.uniform(0.0, 2 * math.pi))) for a in amplitudes)


def sample_heart(diagnosis: str, n_slices: int, edv_ml: float, rv_edv_ml: float, scene_angle: float,
                 rng: np.random.Generator) -> Heart:
    """Draw a heart of a diagnosis with `n_slices` slices from base to apex, calibrated to the EDVs."""
    sig = SIGNATURES[diagnosis]
    first = rng.uniform(2.0, 7.0)
    depths = tuple(first + SLICE_GAP_MM * k for k in range(n_slices))
    apex = depths[-1] + rng.uniform(-6.0, 5.0)
    wall = rng.uniform(*sig.wall_mm)
    septum = math.pi + scene_angle + math.radians(rng.uniform(-25.0, 25.0))
    lv = LeftVentricle(
        r0_mm=1.0, apex_mm=apex, equator_mm=rng.uniform(0.15, 0.3) * apex, bluntness=rng.uniform(*sig.bluntness),
        apex_cap_mm=rng.uniform(0.6, 0.9) * wall, wall_mm=wall, septal_gain=rng.uniform(*sig.septal_gain),
        septal_kinesis=rng.uniform(0.75, 0.95), outline=_modes(rng, (0.04, 0.03, 0.02)),
        infarct=_sample_infarct(septum, apex, rng) if sig.infarct else None)
    rv = RightVentricle(height_mm=1.0, half_width=math.radians(rng.uniform(*sig.rv_half_width_deg)),
                        length_mm=rng.uniform(0.7, 0.9) * apex, wall_mm=rng.uniform(2.5, 4.0))
    away = septum + math.pi
    heart = Heart(
        lv=lv, rv=rv, septum=septum, center_mm=(rng.normal(0.0, 8.0), rng.normal(0.0, 8.0)),
        tilt=(float(rng.uniform(-0.1, 0.1)), float(rng.uniform(-0.1, 0.1))), rotation=rng.uniform(0.0, math.pi),
        ellipticity=rng.uniform(1.0, 1.25), slice_depths_mm=depths, fat_mm=rng.uniform(3.0, 8.0),
        fat_modes=_modes(rng, (0.6, 0.5, 0.4)),
        papillary=(away + math.radians(rng.uniform(35.0, 60.0)), away - math.radians(rng.uniform(35.0, 60.0))),
        trabeculae=tuple((float(a), float(d), float(w)) for a, d, w in zip(
            rng.uniform(0.0, 2.0 * math.pi, 12), rng.uniform(1.0, 3.0, 12), rng.uniform(0.02, 0.06, 12))))
    return calibrate(heart, edv_ml, rv_edv_ml)


def _positive_root(quadratic: np.ndarray, linear: np.ndarray, target: np.ndarray) -> np.ndarray:
    """The x >= 0 solving quadratic * x^2 + linear * x = target (all >= 0)."""
    return 2.0 * target / (linear + np.sqrt(linear ** 2 + 4.0 * quadratic * target))


def rv_scale(epi: np.ndarray, rv_shape: np.ndarray, volume: np.ndarray) -> np.ndarray:
    """Factor g on the crescent thickness that makes the RV hold `volume` ml (per leading index).

    RV area per slice = pi * mean((epi + g h)^2 - epi^2), quadratic in g.
    """
    return _positive_root(volume_ml(rv_shape ** 2), volume_ml(2.0 * epi * rv_shape), np.asarray(volume))


def calibrate(heart: Heart, edv_ml: float, rv_edv_ml: float) -> Heart:
    """Scale the LV cavity and the RV crescent so that their voxelised ED volumes hit the targets."""
    unit = heart.grid_fields()
    r0 = math.sqrt(edv_ml / float(volume_ml(unit.endo ** 2)))
    heart = replace(heart, lv=replace(heart.lv, r0_mm=r0))
    fields = heart.grid_fields()
    height = float(rv_scale(fields.epi, fields.rv_height, np.asarray(rv_edv_ml)))
    return replace(heart, rv=replace(heart.rv, height_mm=height))
