"""Shared fixtures: small in-memory subjects and the location of the read-only reference data."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture
def shared_data() -> Path:
    """../shared/data, or skip the test when this checkout has no shared folder beside it."""
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is not present beside this checkout")
    return SHARED_DATA


def make_subject(subject_id: str = "s0", n_frames: int = 6, shape=(12, 64, 64), es_frame: int = 2,
                 labeled_frames=(0, 2), seed: int = 0):
    """A canonical-geometry subject with a blocky LV/MYO/RV mask and a matching image."""
    from factory.record import Subject

    rng = np.random.default_rng(seed)
    z, h, w = shape
    mask = np.zeros((n_frames, z, h, w), np.uint8)
    for t in range(n_frames):
        r = 10 - t % 3
        mask[t, 2:9, 20 - r // 2:40 + r // 2, 30 - r:30 + r] = 2
        mask[t, 2:9, 24:36, 26:34] = 3
        mask[t, 2:9, 24:36, 40:46] = 1
    image = np.clip(mask.astype(np.float32) / 3 * 2 - 1 + rng.normal(0, 0.05, mask.shape), -1, 1)
    labeled = np.zeros(n_frames, bool)
    labeled[list(labeled_frames)] = True
    return Subject(subject_id, image.astype(np.float32), mask, labeled, (10.0, 2.5, 2.5), es_frame,
                   meta={"source": "test", "vendor": "A", "diagnosis": "NOR"})
