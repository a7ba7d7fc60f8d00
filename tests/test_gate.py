"""The anatomical quality gate accepts a plausible ED heart and names what is wrong with broken ones."""

from __future__ import annotations

import numpy as np
import pytest

from factory.data.gate import check_ed_mask, check_labeled_mask
from factory.record import centred_slice_mask

SPACING = (10.0, 2.5, 2.5)


def heart(z: int = 12, n_slices: int = 8) -> np.ndarray:
    """A ring-shaped LV (radius 18 mm) in a 9 mm myocardium, an RV beside it, on the central slices."""
    yy, xx = np.mgrid[:64, :64]
    r = np.hypot(yy - 32, xx - 30) * SPACING[1]
    section = np.zeros((64, 64), np.uint8)
    section[(np.hypot(yy - 32, xx - 48) * SPACING[1] < 22) & (xx > 38)] = 1
    section[r < 27] = 2
    section[r < 18] = 3
    mask = np.zeros((z, 64, 64), np.uint8)
    mask[centred_slice_mask(n_slices, z)] = section
    return mask


def test_a_plausible_heart_passes():
    result = check_ed_mask(heart(), SPACING, centred_slice_mask(8, 12))
    assert result.passed, result.reasons


def test_open_cavity_fails():
    mask = heart()
    free_wall = (mask == 2) & (np.arange(64)[None, None, :] < 30)
    mask[free_wall] = 0  # half of the myocardial ring gone: the cavity opens onto background
    result = check_ed_mask(mask, SPACING)
    assert not result.passed and any("not enclosed" in r for r in result.reasons)


def test_gap_between_slices_fails():
    mask = heart()
    mask[5] = 0
    result = check_ed_mask(mask, SPACING)
    assert any("not contiguous" in r for r in result.reasons)


def test_heart_in_padding_slices_and_missing_structures_fail():
    result = check_ed_mask(heart(n_slices=10), SPACING, centred_slice_mask(6, 12))
    assert any("padding" in r for r in result.reasons)
    empty = check_ed_mask(np.zeros((12, 64, 64), np.uint8), SPACING)
    assert not empty.passed and any(r.startswith("LV volume") for r in empty.reasons)


def test_fragmented_cavity_fails():
    mask = heart()
    mask[4:8, 30:34, 10:14] = 3  # a second LV blob outside the heart
    mask[4:8, 10:40, 50:60] = 3
    result = check_ed_mask(mask, SPACING)
    assert any("fragmented" in r for r in result.reasons)


def test_labeled_mask_gate_accepts_a_small_end_systolic_cavity():
    mask = heart()
    mask[mask == 3] = 2
    mask[2:10, 30:34, 28:32] = 3  # an 8 ml cavity in a thick wall, as at ES in a hypertrophied heart
    assert check_labeled_mask(mask, SPACING).passed
    assert any(r.startswith("LV volume") for r in check_ed_mask(mask, SPACING).reasons)


@pytest.mark.parametrize("damage, reason", [
    ("empty", "mask is empty"), ("swapped", "not enclosed"), ("gap", "not contiguous"), ("no_rv", "RV volume")])
def test_labeled_mask_gate_names_what_is_wrong(damage, reason):
    mask = heart()
    if damage == "empty":
        mask[:] = 0
    elif damage == "swapped":  # MYO and LV labels exchanged: the 'cavity' is a ring open to the outside
        mask = np.choose(mask, [0, 1, 3, 2]).astype(np.uint8)
    elif damage == "gap":
        mask[5] = 0
    else:
        mask[mask == 1] = 0
    result = check_labeled_mask(mask, SPACING)
    assert not result.passed and any(reason in r for r in result.reasons), result.reasons
