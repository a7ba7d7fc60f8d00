"""Static chest anatomy around the heart: body outline, subcutaneous fat, chest-wall muscle and ribs,
lungs, liver dome, stomach, descending aorta, spine with the back muscles, and lung vessels.

Positions are set in a canonical short-axis view (RV to the left, chest wall to the upper left,
liver below, aorta and spine to the lower right, as on scanner consoles) relative to the heart, then
rotated with the scene. Every structure is returned as a partial-volume alpha map for painting.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from factory.data.phantom.raster import Grid

# Canonical directions (rad, y down) from the LV centre.
ANTERIOR = math.radians(200.0)
INFERIOR = math.radians(100.0)
POSTERIOR = math.radians(45.0)


@dataclass(frozen=True)
class Disc:
    """A round structure at `angle` and `distance` from the heart centre (canonical frame)."""

    angle: float
    distance_mm: float
    radius_mm: float


@dataclass(frozen=True)
class Body:
    """Chest cross-section geometry of one subject (mm)."""

    scene_angle: float
    heart_xy: tuple[float, float]  # LV centre in the image (mm)
    heart_reach_mm: float  # radius of the heart's outline
    semi_axes_mm: tuple[float, float]  # body outline: left-right, antero-posterior
    anterior_mm: float  # heart centre to skin along the anterior direction
    fat_mm: float
    muscle_mm: float
    liver: Disc  # the liver dome is a big disc; its distance shrinks toward the apex
    liver_rise_mm: float  # per slice
    stomach: Disc
    mediastinum: Disc  # soft tissue between the heart, the aorta and the spine
    fat_pad: Disc  # pericardial fat by the RV and the diaphragm
    aorta: Disc
    spine: Disc
    vessels: np.ndarray  # (N, 5): x, y (canonical mm), slice index, sigma (mm), brightness
    ribs: tuple[Disc, ...] = ()

    def wall_point(self, phi: float, depth_mm: float) -> Disc:
        """The point `depth_mm` under the skin at parametric angle `phi` of the body outline (0 = anterior)."""
        a, b = self.semi_axes_mm
        ax, ay = math.cos(ANTERIOR), math.sin(ANTERIOR)
        along = self.anterior_mm - b + (b - depth_mm) * math.cos(phi)
        across = (a - depth_mm) * math.sin(phi)
        x, y = along * ax - across * ay, along * ay + across * ax
        return Disc(math.atan2(y, x), math.hypot(x, y), 0.0)

    def _canonical(self, grid: Grid) -> tuple[np.ndarray, np.ndarray]:
        """Pixel coordinates (mm) relative to the heart in the canonical (unrotated) frame."""
        y, x = grid.coordinates()
        x, y = x - self.heart_xy[0], y - self.heart_xy[1]
        cos, sin = math.cos(self.scene_angle), math.sin(self.scene_angle)
        return np.broadcast_arrays(x * cos + y * sin, -x * sin + y * cos)

    def layers(self, grid: Grid) -> list[tuple[str, np.ndarray]]:
        """(tissue, alpha) in painting order; alphas are (rows, cols) or (Z, rows, cols)."""
        x, y = self._canonical(grid)
        pixel = grid.pixel_mm

        def occupancy(distance_inside: np.ndarray) -> np.ndarray:
            return np.clip(distance_inside / pixel + 0.5, 0.0, 1.0).astype(np.float32)

        def disc(d: Disc, shrink: np.ndarray | float = 0.0, radius: float | None = None) -> np.ndarray:
            cx = (d.distance_mm - shrink) * math.cos(d.angle)
            cy = (d.distance_mm - shrink) * math.sin(d.angle)
            return occupancy((d.radius_mm if radius is None else radius) - np.hypot(x - cx, y - cy))

        # Body outline: an ellipse whose short axis points anterior, centred behind the heart.
        a, b = self.semi_axes_mm
        ax, ay = math.cos(ANTERIOR), math.sin(ANTERIOR)
        bx, by = x - ax * (self.anterior_mm - b), y - ay * (self.anterior_mm - b)
        along, across = bx * ax + by * ay, -bx * ay + by * ax
        radius = np.hypot(along, across)
        reach = radius / np.maximum(np.hypot(along / b, across / a), 1e-6)  # outline radius along each ray

        def inset(mm: float) -> np.ndarray:
            return occupancy(reach - mm - radius)

        thorax = inset(self.fat_mm + self.muscle_mm)
        rises = self.liver_rise_mm * np.arange(grid.n_slices, dtype=np.float32)[:, None, None]
        liver = disc(self.liver, rises) * thorax
        stomach = disc(self.stomach) * thorax * (1.0 - liver)
        back = disc(self.spine, radius=self.spine.radius_mm + 30.0)
        mediastinum, fat_pad = disc(self.mediastinum) * thorax, disc(self.fat_pad) * thorax
        lung = thorax * (1.0 - liver) * (1.0 - stomach) * (1.0 - back) * (1.0 - mediastinum) * (1.0 - fat_pad)
        ribs = [(disc(r, radius=r.radius_mm + 1.5), disc(r)) for r in self.ribs]
        return [
            ("fat", inset(0.0)),
            ("muscle", inset(self.fat_mm)),
            *[layer for cortex, marrow in ribs for layer in (("bone", cortex), ("rib", marrow))],
            ("lung", thorax),
            ("liver", liver),
            ("fluid", stomach),
            ("muscle", back * thorax),
            ("soft", mediastinum),
            ("fat", fat_pad),
            ("blood", disc(self.aorta)),
            ("bone", disc(self.spine, radius=self.spine.radius_mm + 2.5)),
            ("marrow", disc(self.spine)),
            ("vessel", self._vessels(x, y, grid.n_slices) * lung),
        ]

    def _vessels(self, x: np.ndarray, y: np.ndarray, n_slices: int) -> np.ndarray:
        """Pulmonary vessels cut across: Gaussian dots of varying size and brightness in every slice.

        Each dot is evaluated in a small window around it (x, y are the canonical coordinates).
        """
        out = np.zeros((n_slices,) + x.shape, dtype=np.float32)
        rows, cols = x.shape
        cos, sin = math.cos(self.scene_angle), math.sin(self.scene_angle)
        pixel = float(np.hypot(x[0, 1] - x[0, 0], y[0, 1] - y[0, 0]))
        for vx, vy, k, sigma, brightness in self.vessels:
            # Back to image pixel indices: rotate by the scene angle, shift by the heart position.
            col = (vx * cos - vy * sin + self.heart_xy[0]) / pixel + (cols - 1) / 2.0
            row = (vx * sin + vy * cos + self.heart_xy[1]) / pixel + (rows - 1) / 2.0
            half = int(math.ceil(3.0 * sigma / pixel)) + 1
            r = slice(max(0, int(row) - half), max(0, min(rows, int(row) + half + 1)))
            c = slice(max(0, int(col) - half), max(0, min(cols, int(col) + half + 1)))
            distance2 = (x[r, c] - vx) ** 2 + (y[r, c] - vy) ** 2
            out[int(k), r, c] += brightness * np.exp(-distance2 / (2.0 * sigma ** 2))
        return np.minimum(out, 1.0)


def sample_body(heart_xy: tuple[float, float], heart_reach_mm: float, scene_angle: float, n_slices: int,
                height_m: float, weight_kg: float, rng: np.random.Generator) -> Body:
    """Chest anatomy for a subject; subcutaneous fat and body size follow the body-mass index."""
    bmi = weight_kg / height_m ** 2
    size = (bmi / 24.0) ** 0.3
    fat = float(np.clip(4.0 + 1.6 * (bmi - 20.0) + rng.normal(0.0, 2.0), 3.0, 35.0))
    muscle = rng.uniform(14.0, 26.0)
    n_vessels = 40 * n_slices
    ring = heart_reach_mm + rng.uniform(3.0, 80.0, n_vessels)
    angle = rng.uniform(0.0, 2.0 * math.pi, n_vessels)
    vessels = np.stack([ring * np.cos(angle), ring * np.sin(angle), rng.integers(0, n_slices, n_vessels),
                        rng.uniform(0.7, 2.5, n_vessels), rng.uniform(0.4, 1.0, n_vessels)], axis=1)
    body = Body(
        scene_angle=scene_angle, heart_xy=heart_xy, heart_reach_mm=heart_reach_mm,
        semi_axes_mm=(rng.uniform(150.0, 180.0) * size, rng.uniform(100.0, 120.0) * size),
        anterior_mm=heart_reach_mm + rng.uniform(-15.0, 0.0) + muscle + fat, fat_mm=fat, muscle_mm=muscle,
        liver=Disc(INFERIOR + math.radians(rng.uniform(-20.0, 20.0)),
                   heart_reach_mm * rng.uniform(0.7, 1.0) + 170.0, 170.0),
        liver_rise_mm=rng.uniform(1.0, 4.0),
        stomach=Disc(INFERIOR - math.radians(rng.uniform(20.0, 50.0)), heart_reach_mm + rng.uniform(30.0, 60.0),
                     rng.uniform(20.0, 40.0)),
        mediastinum=Disc(POSTERIOR + math.radians(rng.uniform(-20.0, 20.0)), heart_reach_mm + rng.uniform(0.0, 15.0),
                         rng.uniform(20.0, 35.0)),
        fat_pad=Disc(math.radians(rng.uniform(120.0, 170.0)), heart_reach_mm * rng.uniform(0.8, 0.95),
                     rng.uniform(6.0, 14.0)),
        aorta=Disc(POSTERIOR + math.radians(rng.uniform(-15.0, 15.0)), heart_reach_mm + rng.uniform(8.0, 20.0),
                   rng.uniform(10.0, 14.0)),
        spine=Disc(POSTERIOR + math.radians(rng.uniform(5.0, 25.0)), heart_reach_mm + rng.uniform(45.0, 60.0),
                   rng.uniform(15.0, 19.0)),
        vessels=vessels,
    )
    phis = np.arange(-0.75, 0.8, 0.25) + rng.uniform(-0.1, 0.1)
    ribs = tuple(replace(body.wall_point(float(phi), fat + muscle * rng.uniform(0.45, 0.6)),
                         radius_mm=float(rng.uniform(4.5, 7.5))) for phi in phis)
    return replace(body, ribs=ribs)
