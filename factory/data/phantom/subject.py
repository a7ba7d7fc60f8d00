"""One phantom subject: clinical draw -> heart and motion -> chest -> voxelised labels -> cine images.

Every random choice derives from the subject's own seed, split into independent streams for the
clinical values, the anatomy, the image grid and the image noise, so the same heart is produced
whatever the vendor, and whether or not images are formed. Slice 0 is the most basal slice.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np

from factory.data.clinical import measure
from factory.data.nifti import spacing_affine
from factory.data.phantom.anatomy import SIGNATURES, rv_targets, sample_heart
from factory.data.phantom.body import Body, sample_body
from factory.data.phantom.imaging import Vendor, get_vendor, render
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


@dataclass(frozen=True)
class Anatomy:
    """Everything drawn for one subject before voxelisation: its heart, motion, chest and image grid."""

    diagnosis: str
    vendor: Vendor
    raster: HeartRaster  # heart + motion on the vendor's grid
    body: Body
    es_frame: int
    height_m: float
    weight_kg: float
    targets: dict[str, float]  # requested volumes (ml) and EF (%)

    @property
    def spacing_mm(self) -> tuple[float, float, float]:
        return self.raster.grid.spacing_mm


def _streams(seed: int) -> list[np.random.Generator]:
    """Independent generators for the clinical draw, the anatomy, the grid and the image noise."""
    return [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(4)]


def sample_anatomy(seed: int, diagnosis: str, vendor: str, priors: ClinicalPriors | None = None) -> Anatomy:
    """Draw clinical values from the priors and build a heart, its motion and the chest that realise them."""
    if diagnosis not in SIGNATURES:
        raise InputError(f"unknown diagnosis {diagnosis!r}; the phantom knows {sorted(SIGNATURES)}")
    try:
        scanner = get_vendor(vendor)
    except ValueError as err:
        raise InputError(str(err)) from None
    clinical_rng, anatomy_rng, grid_rng, _ = _streams(seed)
    draw = (priors or default_priors()).sample(diagnosis, clinical_rng)
    n_frames, n_slices, es = int(draw["n_frames"]), int(draw["n_slices"]), int(draw["es_frame"])
    height, weight = round(draw["height_m"], 2), round(draw["weight_kg"], 1)
    rv_edv, rv_esv = rv_targets(diagnosis, draw["edv_ml"], anatomy_rng)
    scene_angle = math.radians(anatomy_rng.uniform(-30.0, 30.0))
    heart = sample_heart(diagnosis, n_slices, draw["edv_ml"], rv_edv, scene_angle, anatomy_rng)
    motion = solve_motion(heart, volume_curve(draw["edv_ml"], draw["esv_ml"], n_frames, es),
                          volume_curve(rv_edv, rv_esv, n_frames, es))
    body = sample_body(heart.center_mm, heart.reach_mm(), scene_angle, n_slices, height, weight, anatomy_rng)
    raster = HeartRaster(heart, motion, scanner.sample_grid(n_slices, grid_rng))
    targets = {"edv_ml": draw["edv_ml"], "esv_ml": draw["esv_ml"], "ef_pct": draw["ef_pct"],
               "rv_edv_ml": rv_edv, "rv_esv_ml": rv_esv}
    return Anatomy(diagnosis, scanner, raster, body, es, height, weight, targets)


def generate_subject(index: int, seed: int, diagnosis: str, vendor: str, priors: ClinicalPriors | None = None,
                     render_image: bool = True) -> PhantomSubject:
    """Generate subject `index` (it only names it) from its own `seed`, diagnosis and vendor."""
    anatomy = sample_anatomy(seed, diagnosis, vendor, priors)
    mask = anatomy.raster.full_labels()
    image = (render(anatomy.raster, anatomy.body, anatomy.vendor, _streams(seed)[3]).astype(np.float32)
             if render_image else None)
    spacing, es = anatomy.spacing_mm, anatomy.es_frame
    return PhantomSubject(subject_id(index), diagnosis, vendor, int(seed), image, mask, spacing, es,
                          anatomy.height_m, anatomy.weight_kg, measure(mask, spacing, es), anatomy.targets)
