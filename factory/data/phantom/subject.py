"""One phantom subject: clinical draw -> heart and motion -> chest -> voxelised labels -> cine images.

Every random choice derives from the subject's own seed, split into independent streams for the
clinical values, the anatomy and the acquisition, so the same heart is produced whatever the
vendor, and whether or not images are formed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np

from factory.data.clinical import measure
from factory.data.nifti import spacing_affine
from factory.data.phantom.anatomy import SIGNATURES, rv_targets, sample_heart
from factory.data.phantom.body import sample_body
from factory.data.phantom.imaging import get_vendor, render
from factory.data.phantom.motion import solve_motion, volume_curve
from factory.data.phantom.raster import HeartRaster
from factory.data.priors import ClinicalPriors
from factory.errors import InputError
from factory.record import Subject


@lru_cache(maxsize=1)
def default_priors() -> ClinicalPriors:
    """The shipped ACDC priors, loaded once per process."""
    return ClinicalPriors.default()


@dataclass
class PhantomSubject:
    """A generated cine study with its ground truth; image None when image formation was skipped."""

    subject_id: str
    diagnosis: str
    vendor: str
    seed: int
    image: np.ndarray | None  # float32 (T, Z, H, W), scanner units (integral values, stored as int16)
    mask: np.ndarray  # uint8 (T, Z, H, W): 0 bg, 1 RV, 2 MYO, 3 LV
    spacing_mm: tuple[float, float, float]  # (z, y, x)
    es_frame: int  # 0-based; ED is frame 0
    height_m: float
    weight_kg: float
    clinical: dict[str, float]  # measured from `mask`
    targets: dict[str, float] = field(default_factory=dict)  # requested volumes (ml) and EF (%)

    @property
    def n_frames(self) -> int:
        return int(self.mask.shape[0])

    @property
    def n_slices(self) -> int:
        return int(self.mask.shape[1])

    def to_record(self) -> Subject:
        """The project-wide subject record (every frame labelled, native geometry)."""
        if self.image is None:
            raise ValueError(f"{self.subject_id}: generated without images")
        meta = {"subject_id": self.subject_id, "source": "phantom", "vendor": self.vendor,
                "diagnosis": self.diagnosis, "seed": self.seed, "height_m": self.height_m,
                "weight_kg": self.weight_kg, **self.clinical}
        return Subject(self.subject_id, self.image, self.mask, np.ones(self.n_frames, dtype=bool),
                       self.spacing_mm, self.es_frame, affine=spacing_affine(self.spacing_mm), meta=meta)


def subject_id(index: int) -> str:
    """ACDC-style id of the 0-based subject index: patient001, patient002, ..."""
    return f"patient{index + 1:03d}"


def generate_subject(index: int, seed: int, diagnosis: str, vendor: str, priors: ClinicalPriors | None = None,
                     render_image: bool = True) -> PhantomSubject:
    """Generate subject `index` (it only names it) from its own `seed`, diagnosis and vendor."""
    if diagnosis not in SIGNATURES:
        raise InputError(f"unknown diagnosis {diagnosis!r}; the phantom knows {sorted(SIGNATURES)}")
    try:
        scanner = get_vendor(vendor)
    except ValueError as err:
        raise InputError(str(err)) from None
    clinical_rng, anatomy_rng, imaging_rng = (np.random.default_rng(s)
                                              for s in np.random.SeedSequence(seed).spawn(3))
    draw = (priors or default_priors()).sample(diagnosis, clinical_rng)
    n_frames, n_slices, es = int(draw["n_frames"]), int(draw["n_slices"]), int(draw["es_frame"])
    height, weight = round(draw["height_m"], 2), round(draw["weight_kg"], 1)
    rv_edv, rv_esv = rv_targets(diagnosis, draw["edv_ml"], anatomy_rng)
    scene_angle = math.radians(anatomy_rng.uniform(-30.0, 30.0))
    heart = sample_heart(diagnosis, n_slices, draw["edv_ml"], rv_edv, scene_angle, anatomy_rng)
    motion = solve_motion(heart, volume_curve(draw["edv_ml"], draw["esv_ml"], n_frames, es),
                          volume_curve(rv_edv, rv_esv, n_frames, es))
    body = sample_body(heart.center_mm, heart.reach_mm(), scene_angle, n_slices, height, weight, anatomy_rng)
    grid = scanner.sample_grid(n_slices, imaging_rng)
    raster = HeartRaster(heart, motion, grid)
    mask = raster.full_labels()
    image = render(raster, body, scanner, imaging_rng).astype(np.float32) if render_image else None
    targets = {"edv_ml": draw["edv_ml"], "esv_ml": draw["esv_ml"], "ef_pct": draw["ef_pct"],
               "rv_edv_ml": rv_edv, "rv_esv_ml": rv_esv}
    return PhantomSubject(subject_id(index), diagnosis, vendor, int(seed), image, mask, grid.spacing_mm, es,
                          height, weight, measure(mask, grid.spacing_mm, es), targets)
