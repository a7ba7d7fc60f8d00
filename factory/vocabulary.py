"""The project's vocabulary: label ids, diagnoses, the cardiac phase convention, stage names, seed derivation.

Every module that names a label, a diagnosis, a phase or a stage reads it from here, so a store, a
bundle and the code that reads them agree by construction.
"""

from __future__ import annotations

import numpy as np

# ACDC label convention used everywhere in the project (masks, stores, exports, metrics).
BACKGROUND, RV, MYO, LV = 0, 1, 2, 3
STRUCTURES: tuple[str, ...] = ("RV", "MYO", "LV")  # the names of the foreground labels 1, 2, 3
LABEL_MAP: dict[str, str] = {str(BACKGROUND): "background",  # id -> name, as stores and exports record it
                             **{str(label): name for label, name in zip((RV, MYO, LV), STRUCTURES)}}
N_LABELS = len(LABEL_MAP)  # segmentation classes, background included

# ACDC diagnostic groups; their order fixes the models' diagnosis ids.
DIAGNOSES: tuple[str, ...] = ("NOR", "MINF", "DCM", "HCM", "RV")

# Cardiac phase convention of the motion model: 0 = ED, 100 = ES, 200 = the next ED.
PHASE_ES = 100.0
PHASE_CYCLE = 200.0

# The cascade's training stages (and networks), in training order.
STAGES: tuple[str, ...] = ("vae", "teacher", "anatomy", "motion")


def derive_seed(*keys: int) -> int:
    """A 63-bit seed fixed by `keys` alone (e.g. plan seed and row index), independent of any other draw.

    The random choices of a plan row, a gate attempt or a phantom subject descend from the user's
    seed through this one function, so each is reproducible on its own, in any order.
    """
    state = np.random.SeedSequence([int(k) for k in keys]).generate_state(2, np.uint64)[0]
    return int(state >> np.uint64(1))
