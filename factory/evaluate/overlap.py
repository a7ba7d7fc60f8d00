"""Per-structure Dice and HD95 of label volumes (MONAI metrics), for the vocabulary's STRUCTURES (labels 1, 2, 3)."""

from __future__ import annotations

import warnings

import numpy as np
import torch
from monai.metrics import compute_dice, compute_hausdorff_distance
from monai.networks.utils import one_hot

from factory.vocabulary import N_LABELS


def _one_hot(mask) -> torch.Tensor:
    """(B, Z, H, W) labels -> (B, N_LABELS, Z, H, W) uint8 one-hot (MONAI's metrics run 3x faster on it)."""
    return one_hot(torch.as_tensor(np.asarray(mask), dtype=torch.int64)[:, None], num_classes=N_LABELS,
                   dtype=torch.uint8)


def dice(pred, truth) -> np.ndarray:
    """(B, 3) Dice of RV, MYO, LV between (B, Z, H, W) label volumes; NaN where the structure is absent in `truth`."""
    return compute_dice(_one_hot(pred), _one_hot(truth), include_background=False).numpy()


def hd95(pred, truth, spacing_mm: tuple[float, float, float]) -> np.ndarray:
    """(B, 3) 95th-percentile Hausdorff distance in mm of RV, MYO, LV.

    A structure present in `truth` but missing from `pred` scores the field-of-view diagonal (the
    worst possible distance) instead of MONAI's NaN; NaN remains where `truth` lacks it.
    """
    pred_1h, truth_1h = _one_hot(pred), _one_hot(truth)
    with warnings.catch_warnings():  # MONAI warns about every empty structure, handled below
        warnings.simplefilter("ignore")
        distance = compute_hausdorff_distance(pred_1h, truth_1h, include_background=False, percentile=95,
                                              spacing=tuple(float(s) for s in spacing_mm)).numpy()
    diagonal = float(np.linalg.norm(np.array(truth_1h.shape[2:]) * np.array(spacing_mm)))
    missed = (truth_1h[:, 1:].flatten(2).any(2) & ~pred_1h[:, 1:].flatten(2).any(2)).numpy()
    return np.where(missed, diagonal, distance)
