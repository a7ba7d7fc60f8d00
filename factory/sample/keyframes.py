"""Motion keyframes: denoise the residual latents of a few frames of a cycle and interpolate the rest.

The motion LDM denoises every frame from one shared noise, conditioned on the frame's cycle phase, so the
residual is a smooth function of the phase; sampling K frames of it (ES and the last frame always among
them) and interpolating linearly in phase between them cuts the motion stage's UNet evaluations by
about (T - 1) / K. ED (phase 0) is the residual 0 by construction.
"""

from __future__ import annotations

import numpy as np
import torch

from factory.vocabulary import PHASE_ES


def keyframes(phase: np.ndarray, es_frame: int, k: int) -> list[int]:
    """The frames (1..T-1, ascending) whose residual is denoised: all of them when `k` is 0 or covers them,
    else at most `k` frames spread evenly in phase, always including ES and the last frame."""
    frames = len(phase)
    if k == 0 or k >= frames - 1:
        return list(range(1, frames))
    if k < 2:
        raise ValueError(f"motion keyframes must be 0 (every frame) or at least 2 (ES and the last frame), not {k}")
    targets = np.linspace(0.0, float(phase[-1]), k + 1)[1:]  # the last one is the last frame's phase
    targets[np.argmin(np.abs(targets[:-1] - PHASE_ES))] = phase[es_frame]
    return sorted({int(np.argmin(np.abs(phase[1:] - target))) + 1 for target in targets})


def interpolate(residual: torch.Tensor, phase: np.ndarray, keys: list[int]) -> torch.Tensor:
    """`residual` (T, ...) with every frame outside `keys` (and ED) replaced by the linear interpolation in
    phase between its neighbouring keyframes (ED's residual, 0, is the first); itself when none is missing."""
    missing = [t for t in range(1, len(phase)) if t not in keys]
    if not missing:
        return residual
    known, out = [0, *keys], residual.clone()
    for t in missing:
        right = next(j for j in known if j > t)
        left = max(j for j in known if j < t)
        w = float((phase[t] - phase[left]) / (phase[right] - phase[left]))
        out[t] = (1.0 - w) * residual[left] + w * residual[right]
    return out
