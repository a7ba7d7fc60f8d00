"""Statistics shared by the reports: Pearson r, MAE, seeded bootstrap intervals, Fréchet distance.

Pearson r and the bootstrap are scipy.stats'; these wrappers add the reports' rules for missing values
(non-finite pairs dropped, undefined statistics as NaN).
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Callable

import numpy as np
from scipy import linalg, stats


def finite_pairs(x, y) -> tuple[np.ndarray, np.ndarray]:
    """The pairs of (x, y) where both values are finite, as float arrays."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    ok = np.isfinite(x) & np.isfinite(y)
    return x[ok], y[ok]


def pearson(x, y) -> tuple[float, int]:
    """Pearson r over the pairs where both values are finite, and their number (NaN below 3 or if constant)."""
    x, y = finite_pairs(x, y)
    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return math.nan, len(x)
    return float(stats.pearsonr(x, y).statistic), len(x)


def mae(x, y) -> float:
    """Mean absolute difference over the finite pairs (NaN when there are none)."""
    x, y = finite_pairs(x, y)
    return float(np.abs(x - y).mean()) if len(x) else math.nan


def bootstrap_ci(statistic: Callable[..., float], *columns, n_boot: int = 1000, seed: int = 0,
                 level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of `statistic(*columns)` (scipy.stats.bootstrap, rows resampled together,
    seeded); replicates where the statistic is undefined (NaN) are left out, NaN when none is left."""
    columns = [np.asarray(c, float) for c in columns]
    if len(columns[0]) < 2:
        return math.nan, math.nan
    options = {"paired": True, "vectorized": False, "confidence_level": level, "method": "percentile"}
    with warnings.catch_warnings():  # scipy warns of, and returns, a NaN interval when a replicate is NaN
        warnings.simplefilter("ignore", stats.DegenerateDataWarning)
        result = stats.bootstrap(columns, statistic, n_resamples=n_boot, rng=np.random.default_rng(seed), **options)
    replicates = result.bootstrap_distribution
    finite = replicates[np.isfinite(replicates)]
    if not len(finite):
        return math.nan, math.nan
    if len(finite) < len(replicates):  # the interval of the defined replicates, without resampling again
        result = stats.bootstrap(columns, statistic, n_resamples=0, **options,
                                 bootstrap_result=dataclasses.replace(result, bootstrap_distribution=finite))
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def mean_sd(values) -> dict[str, float]:
    """Mean, sample SD (NaN below two values), min, max and count of the finite values."""
    values = np.asarray(values, float)
    values = values[np.isfinite(values)]
    if not len(values):
        return {"mean": math.nan, "sd": math.nan, "min": math.nan, "max": math.nan, "n": 0}
    return {"mean": float(values.mean()), "sd": float(values.std(ddof=1)) if len(values) > 1 else math.nan,
            "min": float(values.min()), "max": float(values.max()), "n": int(len(values))}


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (rows = samples), as in FID/FVD.

    NaN when either set has fewer than two samples (no covariance). Not MONAI's compute_frechet_distance: it
    agrees to 1e-9 but needs torch, prints on a singular product and calls sqrtm with `disp` (gone in SciPy 1.18)."""
    if len(a) < 2 or len(b) < 2:
        return math.nan
    mu_a, mu_b = a.mean(axis=0), b.mean(axis=0)
    cov_a, cov_b = np.atleast_2d(np.cov(a, rowvar=False)), np.atleast_2d(np.cov(b, rowvar=False))
    root = linalg.sqrtm(cov_a @ cov_b)
    if not np.isfinite(root).all():  # singular product: regularise both covariances slightly
        eps = 1e-6 * np.eye(len(cov_a))
        root = linalg.sqrtm((cov_a + eps) @ (cov_b + eps))
    distance = np.sum((mu_a - mu_b) ** 2) + np.trace(cov_a + cov_b - 2 * root.real)
    return float(max(distance, 0.0))
