"""Training data from a cohort store: subject split, per-rank frame sampling, ED-anatomy augmentation.

Every rank reads only its own share of the training subjects straight from the store's per-frame
chunks, and draws batch `step` from a generator seeded by (seed, rank, step), so a resumed run
draws exactly the batches an uninterrupted one would have.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

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
        """image (B, 1, Z, H, W), mask (B, Z, H, W) int64, labeled (B,) bool [, ed_image like image]."""
        images, masks = zip(*(self.store.frame(int(i), int(t)) for i, t in pairs))
        batch = {"image": torch.from_numpy(np.stack(images))[:, None],
                 "mask": torch.from_numpy(np.stack(masks).astype(np.int64)),
                 "labeled": torch.from_numpy(self.labeled[pairs[:, 0], pairs[:, 1]])}
        if with_ed:
            ed_frames = [self.store.frame(int(i), 0)[0] for i in pairs[:, 0]]
            batch["ed_image"] = torch.from_numpy(np.stack(ed_frames))[:, None]
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


def random_affine(rng: np.random.Generator, shape: tuple[int, int], spacing: tuple[float, float],
                  max_rotation_deg: float = 15.0, scale_range: tuple[float, float] = (0.9, 1.1),
                  max_shift: float = 0.05) -> torch.Tensor:
    """A random in-plane similarity transform (2, 3) in `F.affine_grid`'s normalised coordinates.

    Rotation and scaling act in millimetres, so non-square pixels or grids are not sheared.
    """
    angle = math.radians(rng.uniform(-max_rotation_deg, max_rotation_deg))
    scale = rng.uniform(*scale_range)
    rot = torch.tensor([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]]) / scale
    h, w = shape
    half_extent = torch.diag(torch.tensor([w * spacing[1], h * spacing[0]]) / 2.0)  # normalised -> mm (x, y)
    linear = torch.linalg.inv(half_extent) @ rot @ half_extent
    shift = torch.from_numpy(rng.uniform(-max_shift, max_shift, size=(2, 1)) * 2.0).float()
    return torch.cat([linear.float(), shift], dim=1)


def warp(volume: torch.Tensor, theta: torch.Tensor, mode: str) -> torch.Tensor:
    """Apply one in-plane transform to every slice of a (Z, H, W) volume (bilinear or nearest)."""
    z, h, w = volume.shape
    grid = F.affine_grid(theta.expand(z, 2, 3), [z, 1, h, w], align_corners=False)
    out = F.grid_sample(volume[:, None].float(), grid, mode=mode, padding_mode="zeros", align_corners=False)
    return out[:, 0]


def augment_ed(image_ed: np.ndarray, mask_ed: np.ndarray, mask_es: np.ndarray, rng: np.random.Generator,
               spacing_mm: tuple[float, float, float]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One random in-plane affine applied to the ED image (background -1 outside) and both ED and ES masks."""
    theta = random_affine(rng, image_ed.shape[1:], spacing_mm[1:])
    image = warp(torch.from_numpy(image_ed) + 1.0, theta, "bilinear") - 1.0
    masks = [warp(torch.from_numpy(m), theta, "nearest").to(torch.uint8).numpy() for m in (mask_ed, mask_es)]
    return image.numpy(), masks[0], masks[1]


def clinical_values(mask_ed: np.ndarray, mask_es: np.ndarray, spacing_mm: tuple[float, float, float],
                    slice_mask: np.ndarray) -> dict[str, float]:
    """EDV, ESV, EF, myocardial mass, RV volumes (from the two masks) and the slice count."""
    return {**measure(np.stack([mask_ed, mask_es]), spacing_mm, es_frame=1),
            "n_slices": float(np.count_nonzero(slice_mask))}
