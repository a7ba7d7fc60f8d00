"""Image noise: how noisy a preprocessed frame's heart region is, and Rician noise of a given level to add to one.

The level is the robust noise estimate the vendor-fidelity report uses: 1.4826 x the median absolute
deviation of the residual to a 3 x 3 in-plane median filter, over the heart region (the real slices,
the central half in-plane) of a frame in preprocessed units ([-1, 1], -1 = no signal). Adding noise of
a measured level therefore means: Rician noise whose sigma makes this same estimate read that level.
"""

from __future__ import annotations

import functools

import numpy as np
from scipy import ndimage

NO_SIGNAL = -1.0  # preprocessing maps the 1st intensity percentile (background) here: Rician noise is about it


def heart_region(image: np.ndarray, slices: np.ndarray) -> np.ndarray:
    """The heart region of one (Z, H, W) frame: its real slices, central half in-plane."""
    _, h, w = image.shape
    region = image[:, h // 4:h - h // 4, w // 4:w - w // 4]
    return region[slices] if slices.any() else region


def noise_level(region: np.ndarray) -> float:
    """1.4826 x the median absolute deviation of the residual to a 3 x 3 in-plane median filter of `region`."""
    residual = region - ndimage.median_filter(region, size=(1, 3, 3), mode="reflect")
    return float(1.4826 * np.median(np.abs(residual - np.median(residual))))


@functools.cache
def _unit_level() -> float:
    """`noise_level` of unit white Gaussian noise (the median residual removes part of it)."""
    return noise_level(np.random.default_rng(0).standard_normal((8, 64, 64)))


def add_rician_noise(image: np.ndarray, level: float, rng: np.random.Generator) -> np.ndarray:
    """`image` (preprocessed units) as a magnitude image with complex Gaussian noise whose `noise_level` is `level`,
    clipped to [-1, 1] as preprocessing clips."""
    sigma = level / _unit_level()
    signal = image.astype(np.float32) - NO_SIGNAL
    real = signal + sigma * rng.standard_normal(image.shape, dtype=np.float32)
    imaginary = sigma * rng.standard_normal(image.shape, dtype=np.float32)
    return np.clip(np.hypot(real, imaginary) + NO_SIGNAL, -1.0, 1.0).astype(np.float32)
