"""The downstream arms: which subjects each segmenter trains on, and how its batches are drawn.

Every arm has a main pool and an extra pool. Each sample of a batch comes from the extra pool with
probability `extra_share` (the same in every arm that has one), else from the main pool, so the N
extra subjects take the same share of the batches in (b), (c) and (f); (d) draws its extra samples
from both of its N + N extra subjects. Each sample is one random labeled frame of a random subject.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from factory.store.reader import Store

# name: (letter, what the segmenter trains on); the letters are the and the report's
ARMS: dict[str, tuple[str, str]] = {
    "real": ("a", "real only"),
    "strong": ("b", "real + N strong domain-randomised copies of real subjects"),
    "synthetic": ("c", "real + N synthetic subjects"),
    "both": ("d", "real + N synthetic subjects + N strong copies"),
    "synthetic-only": ("e", "N synthetic subjects only (tested on real)"),
    "pseudo": ("f", "real + N unlabeled cohort subjects pseudo-labelled by the generator's VAE segmentation decoder"),
}
PAIRED = (("synthetic", "real"), ("synthetic", "strong"), ("both", "strong"), ("synthetic", "pseudo"))


def arm_label(arm: str) -> str:
    """`(c) synthetic`: an arm as the report names it."""
    return f"({ARMS[arm][0]}) {arm}"


@dataclass(frozen=True)
class PoolSubject:
    """One training subject: where it is, its labeled frames, whether it is a strong copy, where its pseudo-labels are.

    `pseudo_row` is the row of its frame 0 in the pseudo-label array (frame t at `pseudo_row + t`), None for
    subjects whose masks are read from their store."""

    store: str
    index: int
    frames: tuple[int, ...]
    strong: bool = False
    pseudo_row: int | None = None


@dataclass(frozen=True)
class Experiment:
    """Everything a training task needs: the pools, validation and test frames, and the training settings."""

    real: tuple[PoolSubject, ...]
    n_extra: int  # N: the synthetic, pseudo-labelled and strong-copy pools have N subjects each
    validation: tuple[tuple[int, int], ...]  # (subject, frame) of the cohort store: the held-out training vendor
    cohort_store: str
    synthetic: tuple[PoolSubject, ...]
    pseudo: tuple[PoolSubject, ...]
    test_store: str
    test_frames: tuple[tuple[int, int], ...]
    extra_share: float
    steps: int
    val_every: int
    patience: int
    batch_size: int = 4
    lr: float = 1e-3
    channels: tuple[int, ...] = (16, 32, 64)

    @property
    def strong(self) -> list[PoolSubject]:
        """N strong copies, cycling through the real training subjects."""
        return [replace(self.real[k % len(self.real)], strong=True) for k in range(self.n_extra)]

    def pools(self, arm: str) -> tuple[list[PoolSubject], list[PoolSubject]]:
        """The (main, extra) pools of `arm`."""
        real, synthetic = list(self.real), list(self.synthetic)
        return {"real": (real, []), "strong": (real, self.strong), "synthetic": (real, synthetic),
                "both": (real, synthetic + self.strong), "synthetic-only": (synthetic, []),
                "pseudo": (real, list(self.pseudo))}[arm]


def draw(main: list[PoolSubject], extra: list[PoolSubject], share: float, size: int,
         rng: np.random.Generator) -> list[tuple[PoolSubject, int]]:
    """`size` (subject, frame) samples: from `extra` with probability `share` (when it has subjects), else `main`."""
    samples = []
    for from_extra in rng.random(size) < (share if extra else 0.0):
        pool = extra if from_extra else main
        subject = pool[int(rng.integers(len(pool)))]
        samples.append((subject, int(rng.choice(subject.frames))))
    return samples


def labeled_subjects(store: Store, rows) -> list[PoolSubject]:
    """The subjects among `rows` that have labeled frames, with those frames."""
    labeled = store.group["labeled"][:]
    subjects = [PoolSubject(store.url, int(i), tuple(int(t) for t in np.flatnonzero(labeled[i]))) for i in rows]
    return [s for s in subjects if s.frames]
