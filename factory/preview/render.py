"""Per-subject pictures: the mid-ventricular slice over the cycle (GIF) and a slices x frames montage (PNG)."""

from __future__ import annotations

from pathlib import Path

import imageio.v3 as iio
import numpy as np

from factory.record import Subject
from factory.vocabulary import LV, MYO, N_LABELS, RV

# label id -> RGB, row by row; background (black here) keeps the grey image.
COLOURS = {RV: (40, 120, 255), MYO: (40, 200, 90), LV: (255, 70, 60)}
LABEL_COLOURS = np.array([COLOURS.get(label, (0, 0, 0)) for label in range(N_LABELS)], np.float32)
ALPHA = 0.45
MIN_GIF_SIZE = 192  # pixels; small frames are enlarged by whole factors (nearest neighbour)


def overlay(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """RGB uint8 of an image in [-1, 1] with its label map blended on top; any leading axes are kept."""
    grey = np.clip((image.astype(np.float32) + 1.0) * 127.5, 0, 255)[..., None].repeat(3, axis=-1)
    labelled = (mask > 0)[..., None]
    blended = np.where(labelled, (1 - ALPHA) * grey + ALPHA * LABEL_COLOURS[np.minimum(mask, N_LABELS - 1)], grey)
    return blended.round().astype(np.uint8)


def mid_slice(subject: Subject) -> int:
    """The middle one of the real slices (mid-ventricular in a base-to-apex short-axis stack)."""
    real = np.flatnonzero(subject.slice_mask)
    return int(real[len(real) // 2]) if len(real) else subject.image.shape[1] // 2


def write_cycle_gif(subject: Subject, path: Path, cycle_s: float = 1.0) -> Path:
    """Looping GIF of the mid-ventricular slice over all frames (one cycle in about `cycle_s`), labels overlaid."""
    z = mid_slice(subject)
    frames = overlay(subject.image[:, z], subject.mask[:, z])
    scale = max(1, MIN_GIF_SIZE // max(frames.shape[1:3]))
    frames = frames.repeat(scale, axis=1).repeat(scale, axis=2)
    iio.imwrite(path, frames, extension=".gif", duration=max(20, round(1000 * cycle_s / len(frames))), loop=0)
    return path


def write_montage(subject: Subject, path: Path) -> Path:
    """PNG grid: one row per real slice (base to apex), one column per frame, labels overlaid."""
    real = np.flatnonzero(subject.slice_mask)
    tiles = overlay(subject.image[:, real], subject.mask[:, real])  # (T, Z, H, W, 3)
    tiles = np.pad(tiles, ((0, 0), (0, 0), (0, 1), (0, 1), (0, 0)), constant_values=255)  # white grid lines
    t, z, h, w, _ = tiles.shape
    iio.imwrite(path, tiles.transpose(1, 2, 0, 3, 4).reshape(z * h, t * w, 3))
    return path
