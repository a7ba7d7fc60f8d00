"""Cardiac motion over one cycle: volume curves and the deformation that realises them.

The endocardium moves radially inward by a per-frame factor c_t weighted by the regional kinesis;
the epicardium follows so that the myocardial cross-section is conserved at every angle and depth
(the wall thickens as the cavity shrinks, so myocardial volume is constant over the cycle). The RV
crescent scales by a factor g_t. Both factors are solved per frame in closed form so that the
voxelised LV and RV volumes follow their target curves.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from factory.data.phantom.anatomy import Fields, Heart, rv_scale, smoothstep, volume_ml

MAX_CONTRACTION = 0.95  # the cavity radius never shrinks below 5 % of its ED value


def volume_curve(edv: float, esv: float, n_frames: int, es_frame: int) -> np.ndarray:
    """Volume (ml) of every frame: ED at frame 0, ejection to ES, rapid filling, diastasis, atrial kick.

    Ejection is fastest mid-systole and still under way just before ES, so ES is the strict minimum.
    """
    t = np.arange(n_frames, dtype=np.float64)
    systole = np.clip(t / es_frame, 0.0, 1.0)
    ejected = 1.0 - (1.0 - systole ** 1.4) ** 1.3
    diastole = np.clip((t - es_frame) / (n_frames - es_frame), 0.0, 1.0)
    filled = 0.75 * smoothstep(diastole / 0.35) + 0.25 * smoothstep((diastole - 0.75) / 0.25)
    stroke = edv - esv
    return np.where(t <= es_frame, edv - stroke * ejected, esv + stroke * filled)


class Radii(NamedTuple):
    """Boundaries of one or more frames (mm, normalised in-plane frame)."""

    endo: np.ndarray
    epi: np.ndarray
    rv: np.ndarray  # outer boundary of the RV blood
    outer: np.ndarray  # outer boundary of the RV free wall (the heart's outline)


def deform(fields: Fields, lv_scale: np.ndarray, rv_scale_: np.ndarray) -> Radii:
    """Boundaries after contraction c (`lv_scale`) and RV scaling g, broadcast against the fields."""
    endo = fields.endo * (1.0 - lv_scale * fields.kinesis)
    epi = np.sqrt(endo ** 2 + fields.epi ** 2 - fields.endo ** 2)
    rv = epi + rv_scale_ * fields.rv_height
    return Radii(endo, epi, rv, rv + fields.rv_wall)


@dataclass(frozen=True)
class Motion:
    """Per-frame contraction factors and the volume curves they realise."""

    lv_scale: np.ndarray  # (T,) c_t
    rv_scale: np.ndarray  # (T,) g_t
    lv_volume_ml: np.ndarray  # (T,) target curve
    rv_volume_ml: np.ndarray  # (T,)


def solve_motion(heart: Heart, lv_volume_ml: np.ndarray, rv_volume_ml: np.ndarray) -> Motion:
    """Contraction factors that make the voxelised LV and RV follow the given volume curves."""
    fields = heart.grid_fields()  # (Z, THETA)
    r2, k = fields.endo ** 2, fields.kinesis
    # LV volume(c) = a0 - 2 a1 c + a2 c^2; take the root on the shrinking branch.
    a0, a1, a2 = volume_ml(r2), volume_ml(r2 * k), volume_ml(r2 * k ** 2)
    discriminant = np.maximum(a1 ** 2 - a2 * (a0 - lv_volume_ml), 0.0)
    lv_scale = np.clip((a1 - np.sqrt(discriminant)) / a2, 0.0, MAX_CONTRACTION)
    epi = deform(fields, lv_scale[:, None, None], np.zeros(1)).epi  # (T, Z, THETA)
    rv = rv_scale(epi, np.broadcast_to(fields.rv_height, epi.shape), rv_volume_ml)
    return Motion(lv_scale=lv_scale, rv_scale=rv, lv_volume_ml=lv_volume_ml, rv_volume_ml=rv_volume_ml)
