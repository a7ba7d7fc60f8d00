"""Training data from a cohort store: subject split, per-rank frame sampling, ED-anatomy augmentation (MONAI).

Every rank reads only its own share of the training subjects straight from the store's per-frame
chunks, and draws batch `step` from a generator seeded by (seed, rank, step), so a resumed run
draws exactly the batches an uninterrupted one would have. The ED augmentation (the latent store's
augmented copies) draws from a generator seeded by (seed, subject), so it does not depend on which
encoder actor, in which order or in which attempt of a resumed job encodes a subject.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from monai.transforms import RandAffined

from factory.data.clinical import measure
from factory.store.reader import Store


def split_subjects(n: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic (train, held-out) subject indices; at least one held out when there are two or more."""
    order = np.random.default_rng(seed).permutation(n)
    n_val = min(max(1, round(n * val_fraction)), n - 1) if n > 1 else 0
    return np.sort(order[n_val:]), np.sort(order[:n_val])


def shard(indices: np.ndarray, rank: int, world: int) -> np.ndarray:
    """This rank's share of `indices` (round robin; every rank gets at least one when possible)."""
    part = indices[rank::world]
    return part if len(part) else indices[rank % len(indices):][:1]


def step_rng(seed: int, rank: int, step: int) -> np.random.Generator:
    """The generator of one (rank, step): batches do not depend on where a run was resumed."""
    return np.random.default_rng([seed, rank, step])


class CohortFrames:
    """Frame-level access to a cohort store, with its small per-subject arrays read once."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.n_subjects = store.n_subjects
        self.n_frames = store.table["n_frames"].to_numpy()
        self.es_frame = store.table["es_frame"].to_numpy(dtype=float, na_value=np.nan)
        self.labeled = store.group["labeled"][:]

    def frames(self, subjects: np.ndarray) -> np.ndarray:
        """Every (subject, frame) pair of `subjects`."""
        return np.array([(i, t) for i in subjects for t in range(self.n_frames[i])], dtype=np.int64).reshape(-1, 2)

    def labeled_frames(self, subjects: np.ndarray, per_subject: int) -> np.ndarray:
        """Up to `per_subject` labeled frames of each subject, ED and ES first, as (subject, frame) pairs."""
        pairs = []
        for i in subjects:
            first = [int(t) for t in (0, self.es_frame[i]) if not math.isnan(t) and self.labeled[i, int(t)]]
            rest = [int(t) for t in np.flatnonzero(self.labeled[i]) if t not in first]
            pairs += [(i, t) for t in (first + rest)[:per_subject]]
        return np.array(pairs, dtype=np.int64).reshape(-1, 2)

    def read(self, pairs: np.ndarray, with_ed: bool = False) -> dict[str, torch.Tensor]:
        """image (B, 1, Z, H, W), mask (B, Z, H, W) int64, labeled (B,) bool [, ed_image like image], in one store read."""
        pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
        images, masks = self.store.read_frames(pairs)
        batch = {"image": torch.from_numpy(images)[:, None],
                 "mask": torch.from_numpy(masks.astype(np.int64)),
                 "labeled": torch.from_numpy(self.labeled[pairs[:, 0], pairs[:, 1]])}
        if with_ed:
            ed_pairs = np.stack([pairs[:, 0], np.zeros(len(pairs), dtype=np.int64)], axis=1)
            batch["ed_image"] = torch.from_numpy(self.store.read_frames(ed_pairs, names=("image",))[0])[:, None]
        return batch


class FrameSampler:
    """Random frames of some subjects, `labeled_share` of each batch drawn from frames that carry masks."""

    def __init__(self, cohort: CohortFrames, subjects: np.ndarray, labeled_share: float = 0.5) -> None:
        self.cohort = cohort
        self.frames = cohort.frames(subjects)
        self.labeled = self.frames[cohort.labeled[self.frames[:, 0], self.frames[:, 1]]]
        self.labeled_share = labeled_share if len(self.labeled) else 0.0

    def batch(self, rng: np.random.Generator, size: int, with_ed: bool = False) -> dict[str, torch.Tensor]:
        """A batch of `size` random frames (see `CohortFrames.read`)."""
        n_labeled = round(size * self.labeled_share)
        pairs = np.concatenate([self.labeled[rng.integers(len(self.labeled), size=n_labeled)],
                                self.frames[rng.integers(len(self.frames), size=size - n_labeled)]])
        return self.cohort.read(pairs, with_ed)


def ed_augmentation(shape_hw: tuple[int, int]) -> RandAffined:
    """MONAI's random in-plane affine of an ED image and its two masks (keys image, mask_ed, mask_es).

    Slices are channels, so one draw moves every slice alike: rotation up to 15 degrees, scale 0.9-1.1 per
    in-plane axis (drawn independently), shift up to 5 % of the field of view; bilinear image, nearest masks,
    zeros outside. It acts in pixel coordinates: every preset's in-plane pixels are square.
    """
    h, w = shape_hw
    return RandAffined(("image", "mask_ed", "mask_es"), prob=1.0, rotate_range=math.radians(15.0),
                       scale_range=(0.1, 0.1), translate_range=(0.05 * h, 0.05 * w),
                       mode=("bilinear", "nearest", "nearest"), padding_mode="zeros")


def augment_ed(image_ed: np.ndarray, mask_ed: np.ndarray, mask_es: np.ndarray, rng: np.random.Generator,
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One random in-plane affine (`ed_augmentation`, seeded from `rng`) applied to the ED image (background -1
    outside) and both ED and ES masks."""
    transform = ed_augmentation(image_ed.shape[1:]).set_random_state(seed=int(rng.integers(2**32)))
    out = transform({"image": image_ed + 1.0, "mask_ed": mask_ed, "mask_es": mask_es})
    masks = [out[key].numpy().astype(np.uint8) for key in ("mask_ed", "mask_es")]
    return out["image"].numpy() - 1.0, masks[0], masks[1]


def clinical_values(mask_ed: np.ndarray, mask_es: np.ndarray, spacing_mm: tuple[float, float, float],
                    slice_mask: np.ndarray) -> dict[str, float]:
    """EDV, ESV, EF, myocardial mass, RV volumes (from the two masks) and the slice count."""
    return {**measure(np.stack([mask_ed, mask_es]), spacing_mm, es_frame=1),
            "n_slices": float(np.count_nonzero(slice_mask))}
