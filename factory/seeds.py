"""Seed derivation: the random choices of a plan row, a gate attempt or a phantom subject descend from
the user's seed through this one function, so each is reproducible on its own, in any order."""

from __future__ import annotations

import numpy as np


def derive_seed(*keys: int) -> int:
    """A 63-bit seed fixed by `keys` alone (e.g. plan seed and row index), independent of any other draw."""
    state = np.random.SeedSequence([int(k) for k in keys]).generate_state(2, np.uint64)[0]
    return int(state >> np.uint64(1))
