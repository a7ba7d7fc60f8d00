"""Downstream statistics: per arm, per structure and per test vendor Dice / HD95 over seeds, and paired differences.

The unit is the test subject: a subject's score is the mean over its labeled test frames, a seed's
score the mean over test subjects (all of them, or one vendor's). Paired differences (same seed,
same test subjects) get two 95 % intervals, for the two sources of variation:
- `ci95_test_subjects`: percentile bootstrap over test subjects of each subject's difference
  averaged over seeds (would another test set of these vendors give the same answer?);
- `ci95_seeds`: the paired t interval over seeds of the per-seed mean difference (would another
  training run give the same answer?); undefined below two seeds.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import stats

from factory.evaluate.arms import ARMS, PAIRED
from factory.reporting.stats import bootstrap_ci, mean_sd
from factory.vocabulary import STRUCTURES

METRICS = ("dice", "hd95")
KEYS = (*STRUCTURES, "mean")
ALL = "all"  # the group of every test subject, beside one group per vendor


def subject_scores(frame_scores: np.ndarray, frame_subject: np.ndarray, n_subjects: int) -> np.ndarray:
    """(n_subjects, 4): each subject's mean over its frames per structure, then the mean over structures."""
    per_structure = np.stack([np.nanmean(frame_scores[frame_subject == s], axis=0) for s in range(n_subjects)])
    return np.column_stack([per_structure, np.nanmean(per_structure, axis=1)])


def groups(subject_vendor: np.ndarray) -> dict[str, np.ndarray]:
    """Boolean subject selections: every test subject, and each vendor's."""
    return {ALL: np.ones(len(subject_vendor), bool), **{v: subject_vendor == v for v in sorted(set(subject_vendor))}}


def group_means(scores: np.ndarray, selections: dict[str, np.ndarray]) -> dict[str, dict[str, float]]:
    """{group: {structure or "mean": mean over the group's subjects}}."""
    return {g: dict(zip(KEYS, np.nanmean(scores[chosen], axis=0).tolist())) for g, chosen in selections.items()}


def t_interval(values, level: float = 0.95) -> tuple[float, float]:
    """The t interval of the mean of the finite `values` (NaN below two; the point itself when they are all equal)."""
    values = np.asarray(values, float)
    values = values[np.isfinite(values)]
    if len(values) < 2:
        return math.nan, math.nan
    if np.ptp(values) == 0:
        return float(values[0]), float(values[0])
    interval = stats.ttest_1samp(values, 0.0).confidence_interval(level)
    return float(interval.low), float(interval.high)


def summarize(results: list[dict], frame_subject: np.ndarray, subject_vendor: np.ndarray, n_boot: int,
              seed: int) -> dict:
    """The `arms` and `paired_differences` of the downstream section from every (arm, seed) result."""
    selections = groups(subject_vendor)
    scores: dict[str, dict[int, dict[str, np.ndarray]]] = {}  # arm -> seed -> metric -> (subjects, 4)
    arms = {}
    for result in results:
        scores.setdefault(result["arm"], {})[result["seed"]] = {
            m: subject_scores(result[m], frame_subject, len(subject_vendor)) for m in METRICS}
    for result in results:
        entry = arms.setdefault(result["arm"], {"letter": ARMS[result["arm"]][0],
                                                "description": ARMS[result["arm"]][1], "seeds": []})
        per_seed = scores[result["arm"]][result["seed"]]
        entry["seeds"].append({"seed": result["seed"], "training": result["training"],
                               **{m: group_means(per_seed[m], selections) for m in METRICS}})
    for arm, entry in arms.items():
        seeds = entry["seeds"]
        for m in METRICS:
            entry[m] = {g: {k: mean_sd([s[m][g][k] for s in seeds]) for k in KEYS} for g in selections}
        entry["steps"] = {key: mean_sd([s["training"][key] for s in seeds]) for key in ("best_step", "steps_run")}
    paired = {}
    for a, b in PAIRED:
        common = sorted(set(scores.get(a, {})) & set(scores.get(b, {})))
        if common:
            paired[f"{a} - {b}"] = {m: paired_difference([scores[a][s][m] - scores[b][s][m] for s in common],
                                                         selections, n_boot, seed) for m in METRICS}
    return {"arms": arms, "paired_differences": paired}


def paired_difference(differences: list[np.ndarray], selections: dict[str, np.ndarray], n_boot: int,
                      seed: int) -> dict:
    """{group: {key: mean, both intervals, per-seed values}} of per-seed (subjects, 4) score differences."""
    stacked = np.stack(differences)  # (seeds, subjects, 4)
    out = {}
    for g, chosen in selections.items():
        per_seed = np.nanmean(stacked[:, chosen], axis=1)  # (seeds, 4)
        per_subject = np.nanmean(stacked[:, chosen], axis=0)  # (subjects, 4): averaged over seeds
        out[g] = {}
        for k, key in enumerate(KEYS):
            column = per_subject[:, k][np.isfinite(per_subject[:, k])]
            out[g][key] = {"mean": float(np.nanmean(per_seed[:, k])), "n_seeds": len(per_seed),
                           "n_subjects": int(len(column)), "per_seed": per_seed[:, k].tolist(),
                           "ci95_test_subjects": list(bootstrap_ci(np.mean, column, n_boot=n_boot, seed=seed)),
                           "ci95_seeds": list(t_interval(per_seed[:, k]))}
    return out
