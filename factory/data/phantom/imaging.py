"""bSSFP cine image formation and the scanner vendors A, B, C.

Tissue fractions are mixed with the vendor's bSSFP contrast (bright blood and fat, dark myocardium
and lung), multiplied by a smooth coil-sensitivity (bias) field and tissue texture, blurred by the
vendor's point-spread function, scaled to scanner units with Rician noise and stored as int16.
Vendors differ in contrast curve, noise, bias, blur and native pixel size / matrix, roughly like
the three big MR manufacturers in multi-vendor challenges (M&Ms).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from factory.data.phantom.body import Body
from factory.data.phantom.raster import Grid, HeartRaster

# bSSFP signal of each tissue relative to blood (T2/T1 weighting at 1.5 T).
BASE_CONTRAST: dict[str, float] = {
    "air": 0.0, "lung": 0.05, "vessel": 0.7, "blood": 1.0, "myocardium": 0.22, "muscle": 0.2,
    "fat": 0.88, "liver": 0.3, "fluid": 0.75, "soft": 0.32, "bone": 0.06, "marrow": 0.5, "rib": 0.35,
}


@dataclass(frozen=True)
class Vendor:
    """Acquisition and reconstruction traits of one scanner vendor."""

    name: str
    pixel_mm: tuple[float, float]  # range of the reconstructed in-plane pixel size
    matrices: tuple[tuple[int, int], ...]  # (rows, cols) choices
    psf_mm: float  # Gaussian PSF sigma: acquired resolution and k-space filtering
    noise: float  # Rician sigma relative to the blood signal
    bias: float  # log-amplitude of the smooth coil-sensitivity field
    gamma: float  # contrast curve: tissue signal = base ** gamma
    fat: float  # fat signal relative to blood (fat suppression / off-resonance differ)
    gain: float  # scanner units of the blood signal

    def contrast(self) -> dict[str, float]:
        """Signal of every tissue relative to blood on this vendor's scanners."""
        return {tissue: value ** self.gamma for tissue, value in BASE_CONTRAST.items()} | {"fat": self.fat}

    def sample_grid(self, n_slices: int, rng: np.random.Generator) -> Grid:
        """Native matrix and pixel size of one acquisition (pixel size rounded like DICOM headers)."""
        rows, cols = self.matrices[int(rng.integers(len(self.matrices)))]
        return Grid(rows=rows, cols=cols, pixel_mm=round(float(rng.uniform(*self.pixel_mm)), 4), n_slices=n_slices)


VENDORS: dict[str, Vendor] = {
    # Siemens-like: the ACDC look; moderate noise and blur, 1.4-1.6 mm pixels, non-square matrices.
    "A": Vendor("A", (1.37, 1.6), ((216, 256), (232, 256), (256, 216)), psf_mm=0.9, noise=0.035, bias=0.2,
                gamma=1.0, fat=0.9, gain=350.0),
    # Philips-like: reconstructed to small pixels (zero-filled), so smoother; low noise, strong
    # surface-coil shading, flatter contrast.
    "B": Vendor("B", (1.17, 1.3), ((256, 256), (240, 240)), psf_mm=1.3, noise=0.02, bias=0.4,
                gamma=0.8, fat=1.0, gain=1800.0),
    # GE-like: coarse native pixels, sharp, noisier, high contrast with very bright fat.
    "C": Vendor("C", (1.7, 1.9), ((192, 192), (200, 200)), psf_mm=0.6, noise=0.05, bias=0.25,
                gamma=1.25, fat=1.1, gain=150.0),
}


def get_vendor(name: str) -> Vendor:
    try:
        return VENDORS[name]
    except KeyError:
        raise ValueError(f"unknown vendor {name!r}; choose from {sorted(VENDORS)}") from None


def paint(base: np.ndarray, layers: Iterable[tuple[str, np.ndarray]], contrast: dict[str, float]) -> np.ndarray:
    """Alpha-composite tissue layers over `base` in order (painter's algorithm), in place."""
    for tissue, alpha in layers:
        base += alpha * (np.float32(contrast[tissue]) - base)
    return base


def mix(base: np.ndarray, fractions: dict[str, np.ndarray], contrast: dict[str, float]) -> np.ndarray:
    """Replace `base` by disjoint tissue fractions (partial volume): base * (1 - sum f) + sum c f."""
    out = base * (1.0 - sum(fractions.values()))
    for tissue, fraction in fractions.items():
        out += np.float32(contrast[tissue]) * fraction
    return out


def shading(grid: Grid, strength: float, rng: np.random.Generator) -> np.ndarray:
    """(Z, rows, cols) multiplicative field: smooth coil sensitivity times tissue texture (~4 % blobs)."""
    y, x = grid.coordinates()
    z = np.arange(grid.n_slices, dtype=np.float64)[:, None, None] * 0.1
    xn, yn = x / 150.0, y / 150.0
    a = rng.normal(0.0, 1.0, 6)
    log_bias = a[0] * xn + a[1] * yn + 0.5 * (a[2] * xn * xn + a[3] * xn * yn + a[4] * yn * yn) + 0.3 * a[5] * z
    coarse = ndimage.gaussian_filter(rng.standard_normal((grid.n_slices, grid.rows // 4 + 2, grid.cols // 4 + 2)),
                                     sigma=(0.0, 1.5, 1.5))
    texture = ndimage.zoom(coarse / coarse.std(), (1, 4, 4), order=1)[:, :grid.rows, :grid.cols]
    return np.exp(strength * log_bias / 2.0 + 0.04 * texture).astype(np.float32)


def blur(image: np.ndarray, sigma_mm: float, pixel_mm: float, mode: str) -> np.ndarray:
    """In-plane Gaussian PSF over the last two axes."""
    sigma = sigma_mm / pixel_mm
    return ndimage.gaussian_filter(image, sigma=(0,) * (image.ndim - 2) + (sigma, sigma), mode=mode, truncate=3.0)


def rician(clean: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Magnitude of a signal (in units of the noise sigma) plus complex unit Gaussian noise, in place."""
    noise = rng.standard_normal(clean.shape, dtype=np.float32)
    clean += noise
    np.square(clean, out=clean)
    np.square(rng.standard_normal(dtype=np.float32, out=noise), out=noise)
    clean += noise
    return np.sqrt(clean, out=clean)


def to_scanner_units(image: np.ndarray, unit: float) -> np.ndarray:
    """Scale by `unit` and round to int16 like stored DICOM/NIfTI magnitudes (clobbers `image`)."""
    image *= np.float32(unit)
    np.clip(image, 0, np.iinfo(np.int16).max, out=image)
    return np.rint(image, out=image).astype(np.int16)


def render(raster: HeartRaster, body: Body, vendor: Vendor, rng: np.random.Generator) -> np.ndarray:
    """The cine sequence of one subject, int16 (T, Z, rows, cols) in scanner units.

    The static background is formed once; per frame only the heart crop changes, and since the
    PSF is linear the crop's change is blurred on its own and added to the blurred background.
    Intensities are handled in units of the noise sigma until the final scaling.
    """
    grid, contrast = raster.grid, vendor.contrast()
    n_frames = len(raster.motion.lv_scale)
    field = shading(grid, vendor.bias, rng) / np.float32(vendor.noise)
    background = paint(np.zeros((grid.n_slices, grid.rows, grid.cols), np.float32), body.layers(grid), contrast)
    crop = (slice(None),) + raster.crop
    under = background[crop]
    change = np.empty((n_frames,) + under.shape, dtype=np.float32)
    for t in range(n_frames):
        change[t] = mix(under, raster.tissue_fractions(t), contrast) - under
    background = blur(background, vendor.psf_mm, grid.pixel_mm, mode="nearest") * field
    change = blur(change, vendor.psf_mm, grid.pixel_mm, mode="constant") * field[crop]
    image = np.empty((n_frames,) + background.shape, dtype=np.float32)
    image[:] = background
    image[(slice(None),) + crop] += change
    return to_scanner_units(rician(image, rng), vendor.noise * vendor.gain)
