"""Scanner noise put back into decoded images: the VAE decoder denoises, real scanners do not.

`--noise-from STORE` measures each vendor's heart-region noise level on that store's frames (any
frames: unlabeled studies of the target scanners are enough) and the sampler adds Rician noise of
the requested vendor's level to every decoded frame, seeded by the row, so the synthetic images carry
the noise a segmenter meets on those scanners. The levels travel as the sampler setting
`image_noise` ("B=0.0170,C=0.0421"), which the store records.
"""

from __future__ import annotations

import math

import numpy as np

from factory.data.noise import add_rician_noise, heart_region, noise_level
from factory.errors import InputError
from factory.vocabulary import derive_seed

NOISE_STREAM = 1_000_003  # the seed stream of a row's image noise (gate attempts use streams 0, 1, ...)
SUBJECTS_PER_VENDOR = 20  # measured subjects per vendor (the first ones), two frames each (ED and mid-cycle)


def parse_image_noise(text: str) -> dict[str, float]:
    """`B=0.017,C=0.042` -> {"B": 0.017, "C": 0.042}; "" -> {} (no noise added)."""
    levels = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        vendor, _, value = item.partition("=")
        try:
            level = float(value)
        except ValueError:
            level = math.nan
        if not vendor.strip() or not math.isfinite(level) or level < 0:
            raise InputError(f"image noise {item!r}: expected VENDOR=LEVEL with a finite level >= 0")
        levels[vendor.strip()] = level
    return levels


def format_image_noise(levels: dict[str, float]) -> str:
    """The setting string of per-vendor levels (sorted by vendor, 4 decimals)."""
    return ",".join(f"{vendor}={level:.4f}" for vendor, level in sorted(levels.items()))


def measure_vendor_noise(url: str, vendors: list[str], preset: str) -> str:
    """The median heart-region noise level of each of `vendors` over the frames of store `url`, as a setting string.

    Refuses a store of another geometry than the bundle's `preset` (the level is per pixel: another pixel
    size gives another level) and a vendor the store has no frames of (its noise cannot be measured there)."""
    from factory.store.reader import open_store

    store = open_store(url)
    if store.attrs["preset"] != preset:
        raise InputError(f"--noise-from {url}: the store is in preset {store.attrs['preset']!r} geometry, the bundle"
                         f" is {preset!r} (the noise level is per pixel); give a store ingested with --preset {preset}")
    table, slices = store.table, store.group["slice_mask"][:].astype(bool)
    levels = {}
    for vendor in vendors:
        rows = table.index[(table["vendor"].astype(str) == vendor) & (table["n_frames"] > 0)][:SUBJECTS_PER_VENDOR]
        if len(rows) == 0:
            found = sorted(set(table["vendor"].astype(str)))
            raise InputError(f"--noise-from {url}: no frames of vendor {vendor} to measure its noise on"
                             f" (the store has {found})")
        frames = [(int(i), t) for i in rows for t in sorted({0, int(table.loc[i, "n_frames"]) // 2})]
        images, = store.read_frames(np.array(frames, dtype=np.int64), names=("image",))
        levels[vendor] = float(np.median([noise_level(heart_region(image, slices[i]))
                                          for (i, _), image in zip(frames, images)]))
    return format_image_noise(levels)


def add_vendor_noise(image: np.ndarray, levels: dict[str, float], vendor: str, seed: int) -> np.ndarray:
    """`image` (T, Z, H, W) with Rician noise of `vendor`'s level, seeded by the row seed."""
    if vendor not in levels:
        raise InputError(f"image noise {format_image_noise(levels)!r} has no level for vendor {vendor or '(none)'!r}"
                         " that a plan row asks for")
    return add_rician_noise(image, levels[vendor], np.random.default_rng(derive_seed(seed, NOISE_STREAM)))
