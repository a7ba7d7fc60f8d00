"""The downstream segmenter's augmentations: MONAI dict transforms on {"image", "label"} frames of (Z, H, W).

Slices act as channels: the slices of a short-axis stack lie 10 mm apart, so every spatial and
resolution transform works in-plane and is shared by all slices of a frame. Images are stored in
[-1, 1]; both pipelines map them to [0, 1] (padding = background), transform, and map them back.

- `standard_augmentation`, applied to every training sample of every arm: nnU-Net's default
  recipe, in-plane (rotation and scaling, Gaussian noise and blur, brightness, gamma, simulated low
  resolution). No mirroring: left and right ventricles are not mirror images.
- `strong_augmentation`, applied first to the strong copies of arms (b) and (d): the domain
  randomisation that won the M&Ms challenge (wide gamma, bias field, noise, blur, resolution
  changes, histogram shifts), each with a high probability.
"""

from __future__ import annotations

import numpy as np
from monai.transforms import (Compose, RandAdjustContrastd, RandAffined, RandBiasFieldd, RandGaussianNoised,
                              RandGaussianSmoothd, RandHistogramShiftd, RandScaleIntensityd,
                              RandSimulateLowResolutiond, ScaleIntensityRanged)

KEYS, MODES = ("image", "label"), ("bilinear", "nearest")


def to_unit_range() -> ScaleIntensityRanged:
    """[-1, 1] -> [0, 1], where intensity transforms expect their input."""
    return ScaleIntensityRanged("image", a_min=-1, a_max=1, b_min=0, b_max=1)


def to_store_range() -> ScaleIntensityRanged:
    """[0, 1] -> [-1, 1], clipped: the range every store image has."""
    return ScaleIntensityRanged("image", a_min=0, a_max=1, b_min=-1, b_max=1, clip=True)


def standard_augmentation(seed: int) -> Compose:
    """nnU-Net's default spatial + intensity augmentation, in-plane, seeded (every arm, every sample)."""
    return Compose([
        to_unit_range(),
        RandAffined(KEYS, prob=0.3, rotate_range=np.pi / 12, scale_range=0.25, mode=MODES, padding_mode="zeros"),
        RandGaussianNoised("image", prob=0.1, std=0.03),
        RandGaussianSmoothd("image", prob=0.2, sigma_x=(0.5, 1.0), sigma_y=(0.5, 1.0)),
        RandScaleIntensityd("image", prob=0.15, factors=0.25),
        RandAdjustContrastd("image", prob=0.3, gamma=(0.7, 1.5)),
        RandSimulateLowResolutiond("image", prob=0.25, zoom_range=(0.5, 1.0), upsample_mode="bilinear"),
        to_store_range(),
    ]).set_random_state(seed=seed)


def strong_augmentation(seed: int) -> Compose:
    """Strong domain randomisation of a real frame's appearance (arms b and d), seeded; the mask is untouched."""
    return Compose([
        to_unit_range(),
        RandAdjustContrastd("image", prob=0.8, gamma=(0.4, 2.5)),
        RandBiasFieldd("image", prob=0.8, coeff_range=(0.2, 0.6)),
        RandHistogramShiftd("image", prob=0.8, num_control_points=(5, 15)),
        RandGaussianSmoothd("image", prob=0.5, sigma_x=(0.5, 2.0), sigma_y=(0.5, 2.0)),
        RandSimulateLowResolutiond("image", prob=0.5, zoom_range=(0.25, 1.0), upsample_mode="bilinear"),
        RandGaussianNoised("image", prob=0.5, std=0.08),
        to_store_range(),
    ]).set_random_state(seed=seed)
