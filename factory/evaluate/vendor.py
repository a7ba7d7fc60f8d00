"""Vendor faithfulness: does a synthetic subject look like the scanner vendor it was requested for?

A vendor classifier (SoftmaxClassifier on appearance features of the heart region) is trained on the
real cohort's frames by vendor. Its reference is its accuracy on held-out real subjects (seeded
folds by subject, stratified by vendor: every real subject is predicted once by a classifier that
never saw it); it is then fitted on every real subject with a vendor and predicts the vendor of
every synthetic subject (majority vote over the subject's frames): accuracy per requested vendor
and a requested x predicted confusion matrix. Beside it, per vendor, the realism of synthetic vs
real frames: intensity histogram distance, noise level, edge sharpness.

Definitions (the same for real and synthetic frames):
- frames: FRAMES_PER_SUBJECT frames per subject, evenly spaced over its cycle (ED included).
- heart region: the central half of the field of view in-plane (rows and columns H/4 to 3H/4,
  W/4 to 3W/4) on the slices the subject's `slice_mask` marks as real (padding slices left out).
  Preprocessing crops around the LV, so the heart is central; the region uses no mask, so real
  unlabeled frames (empty masks) are measured exactly like labeled and synthetic ones.
- histogram distance: the 1-Wasserstein distance (scipy.stats.wasserstein_distance, in image
  intensity units of the [-1, 1] scale) between the pooled heart-region intensities of the two
  sets, computed from HISTOGRAM_BINS-bin histograms; `histogram_distance_real_halves` is the same
  distance between two seeded halves of the real subjects (a floor for sampling variation).
- noise level: per frame, 1.4826 x the median absolute deviation of the high-pass residual
  image - (3 x 3 in-plane median filter of it) over the heart region; mean over frames.
- edge sharpness: per frame, the mean of the top decile of the in-plane gradient magnitude
  (in-plane Sobel / 8 per slice, intensity units per pixel) over the heart region; mean over frames.

Requested vendor: the synthetic table's `requested_vendor` column; a store written before that
column existed falls back to its `vendor` column. Values that name no vendor (NO_VENDOR, missing)
form the confusion row "(none)" and count in no accuracy. When no synthetic subject names a
vendor, the section still reports the classifier's reference, the vendors it predicts for the
synthetic subjects (the "(none)" row) and each real vendor's realism against the pooled synthetic
set, with a note saying so: that is what tells which scanner an unconditioned generator imitates.

A cohort without two vendors of at least two real subjects each cannot train and test a classifier:
the section is then {"skipped": reason}, so that an evaluation of a single-vendor cohort completes.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy import ndimage, stats

from factory.data.noise import heart_region, noise_level
from factory.evaluate.classifier import SoftmaxClassifier
from factory.models.conditioning import NO_VENDOR
from factory.store.reader import Store

FRAMES_PER_SUBJECT = 4  # evenly spaced over the cycle: the cost stays bounded on long cycles and big stores
READ_FRAMES = 64  # frames read and measured together (memory stays bounded on big stores)
FOLDS = 5  # folds of real subjects (by subject) for the reference accuracy
HISTOGRAM_BINS = 200  # over [-1, 1]: the histogram distance's resolution is 0.01
CLASSIFIER_BINS = 20  # coarser histogram (density) among the classifier's features
NONE = "(none)"  # the confusion row of synthetic subjects without a requested vendor
CLASSIFIER = ("multinomial logistic regression (L2, standardised features) on heart-region appearance features"
              " of real frames; a subject's vendor is the majority vote over its frames")
HEART_REGION = ("central half of the field of view in-plane, on the slices of the subject's slice mask (no mask"
                " used: the preprocessing crops around the LV)")
SCALARS: tuple[str, ...] = ("mean", "std", "p05", "p50", "p95", "noise", "gradient_mean", "gradient_p50",
                            "sharpness", "slice_mean_sd", "lowpass_sd", "laplacian_sd")
FEATURES: tuple[str, ...] = (*SCALARS, *(f"histogram_{k}" for k in range(CLASSIFIER_BINS)))


def named_vendor(value: object) -> str | None:
    """`value` as a vendor name, or None when it names no vendor (missing, empty, 'unknown', 'synthetic')."""
    if not isinstance(value, str) or not value.strip() or value.strip() in NO_VENDOR:
        return None
    return value.strip()


def in_plane_gradient(region: np.ndarray) -> np.ndarray:
    """In-plane gradient magnitude of a (Z, h, w) region: the Sobel operator / 8 of each slice (per pixel)."""
    def sobel(axis: int, across: int) -> np.ndarray:
        derivative = ndimage.correlate1d(region, [-0.5, 0.0, 0.5], axis=axis, mode="reflect")
        return ndimage.correlate1d(derivative, [0.25, 0.5, 0.25], axis=across, mode="reflect")

    return np.hypot(sobel(1, 2), sobel(2, 1))


def frame_measures(region: np.ndarray) -> tuple[dict[str, float], np.ndarray]:
    """The SCALARS of one heart region (Z, h, w) and its HISTOGRAM_BINS-bin intensity histogram (counts)."""
    values = region.ravel()
    gradient = in_plane_gradient(region).ravel()
    top = gradient[gradient >= np.quantile(gradient, 0.9)]
    p05, p50, p95 = np.quantile(values, (0.05, 0.5, 0.95))
    scalars = {
        "mean": values.mean(), "std": values.std(), "p05": p05, "p50": p50, "p95": p95,
        "noise": noise_level(region),
        "gradient_mean": gradient.mean(), "gradient_p50": np.median(gradient), "sharpness": top.mean(),
        "slice_mean_sd": region.mean(axis=(1, 2)).std(),
        "lowpass_sd": ndimage.gaussian_filter(region, sigma=(0, 4, 4), mode="reflect").std(),
        "laplacian_sd": ndimage.laplace(region, mode="reflect").std()}
    histogram = np.histogram(np.clip(values, -1, 1), bins=HISTOGRAM_BINS, range=(-1.0, 1.0))[0]
    return {k: float(v) for k, v in scalars.items()}, histogram.astype(np.int64)


def subject_frames(n_frames: int) -> list[int]:
    """The FRAMES_PER_SUBJECT frames measured of a subject: evenly spaced over its cycle, frame 0 (ED) first."""
    return sorted({int(round(t)) for t in np.linspace(0, n_frames - 1, min(FRAMES_PER_SUBJECT, n_frames))})


def store_measures(store: Store, subjects: list[int]) -> tuple[pd.DataFrame, np.ndarray]:
    """Per measured frame of `subjects`: subject index and FEATURES (a frame table), and the frames' histograms."""
    table, slice_mask = store.table, store.group["slice_mask"][:].astype(bool)
    pairs = [(i, t) for i in subjects for t in subject_frames(int(table.loc[i, "n_frames"]))]
    rows, histograms = [], []
    for start in range(0, len(pairs), READ_FRAMES):
        block = pairs[start:start + READ_FRAMES]
        images, = store.read_frames(np.array(block, dtype=np.int64).reshape(-1, 2), names=("image",))
        for (i, t), image in zip(block, images):
            scalars, histogram = frame_measures(heart_region(image, slice_mask[i]))
            coarse = histogram.reshape(CLASSIFIER_BINS, -1).sum(axis=1) / max(histogram.sum(), 1)
            rows.append({"subject": i, "frame": t, **scalars,
                         **{f"histogram_{k}": float(v) for k, v in enumerate(coarse)}})
            histograms.append(histogram)
    frames = pd.DataFrame(rows, columns=["subject", "frame", *FEATURES])
    return frames, np.array(histograms, dtype=np.int64).reshape(-1, HISTOGRAM_BINS)


def subject_votes(model: SoftmaxClassifier, frames: pd.DataFrame) -> pd.Series:
    """Each subject's predicted vendor: the majority over its frames (ties: the first class in sorted order)."""
    predicted = pd.Series(model.predict(frames[list(FEATURES)].to_numpy(float)), index=frames.index)
    votes = pd.crosstab(frames["subject"], predicted).reindex(columns=model.classes, fill_value=0)
    return votes.idxmax(axis=1)


def subject_folds(vendors: pd.Series, seed: int) -> pd.Series:
    """Seeded fold (0..FOLDS-1) of each real subject, stratified by vendor; -1 for a vendor's only subject."""
    rng = np.random.default_rng(seed)
    folds = pd.Series(-1, index=vendors.index, dtype=int)
    offset = 0
    for _, group in vendors.groupby(vendors, sort=True):
        if len(group) >= 2:  # a vendor's only subject always trains: held out, its class would be unknown
            order = rng.permutation(np.asarray(group.index))
            folds[order] = (offset + np.arange(len(order))) % FOLDS
            offset += len(order)
    return folds


def reference_accuracy(frames: pd.DataFrame, vendors: pd.Series, seed: int) -> dict:
    """Subject-level accuracy on held-out real subjects: seeded folds by subject, each fold predicted by a
    classifier fitted on the other folds' subjects."""
    folds = subject_folds(vendors, seed)
    predicted = []
    for k in range(FOLDS):
        held = frames["subject"].map(folds).to_numpy() == k
        if held.any():
            train = frames[~held]
            model = SoftmaxClassifier().fit(train[list(FEATURES)].to_numpy(float),
                                            vendors[train["subject"]].to_numpy())
            predicted.append(subject_votes(model, frames[held]))
    predicted = pd.concat(predicted).sort_index()
    correct = predicted == vendors[predicted.index]
    return {"accuracy": float(correct.mean()), "n_held_out": int(len(correct)), "folds": FOLDS,
            "split": f"{FOLDS} folds of real subjects, seeded (seed {seed}) and stratified by vendor; each subject's"
                     " vendor predicted by a classifier fitted on the other folds",
            "per_vendor": {v: {"n": int(len(c)), "accuracy": float(c.mean())}
                           for v, c in correct.groupby(vendors[predicted.index], sort=True)}}


def wasserstein(a: np.ndarray, b: np.ndarray) -> float:
    """1-Wasserstein distance between two intensity histograms over [-1, 1] (NaN when either is empty)."""
    if a.sum() == 0 or b.sum() == 0:
        return math.nan
    centres = np.linspace(-1, 1, HISTOGRAM_BINS + 1)[:-1] + 1.0 / HISTOGRAM_BINS
    return float(stats.wasserstein_distance(centres, centres, a, b))


def realism(real: pd.DataFrame, real_histograms: np.ndarray, synthetic: pd.DataFrame,
            synthetic_histograms: np.ndarray, seed: int) -> dict:
    """Histogram distance, noise level and edge sharpness of real vs synthetic frames (rows of `real`, `synthetic`)."""
    subjects = np.unique(real["subject"])
    half = set(np.random.default_rng(seed).permutation(subjects)[:len(subjects) // 2].tolist())
    first = real["subject"].isin(half).to_numpy()
    floor = (wasserstein(real_histograms[first].sum(axis=0), real_histograms[~first].sum(axis=0))
             if len(subjects) >= 2 else math.nan)
    out = {"n_real": int(len(subjects)), "n_synthetic": int(synthetic["subject"].nunique()),
           "histogram_distance": wasserstein(real_histograms.sum(axis=0), synthetic_histograms.sum(axis=0)),
           "histogram_distance_real_halves": floor}
    for key in ("noise", "sharpness"):
        r = float(real[key].mean()) if len(real) else math.nan
        s = float(synthetic[key].mean()) if len(synthetic) else math.nan
        out[key] = {"real": r, "synthetic": s, "difference": s - r}
    return out


def requested_vendors(table: pd.DataFrame) -> tuple[pd.Series, str]:
    """Each synthetic subject's requested vendor (NONE where it names none) and the column it was read from."""
    column = "requested_vendor" if "requested_vendor" in table else "vendor"
    values = table[column] if column in table else pd.Series(None, index=table.index, dtype=object)
    return values.map(lambda v: named_vendor(v) or NONE), column


def vendor_fidelity(synthetic: Store, cohort: Store, seed: int = 0) -> dict:
    """The `vendor` report section: does each synthetic subject look like its requested scanner vendor?"""
    real_table, synthetic_table = cohort.table, synthetic.table
    vendors = (real_table["vendor"] if "vendor" in real_table else pd.Series(None, index=real_table.index)
               ).map(named_vendor).dropna()
    vendors = vendors[real_table.loc[vendors.index, "n_frames"] > 0]
    counts = vendors.value_counts()
    if (counts >= 2).sum() < 2:
        per_vendor = {v: int(n) for v, n in sorted(counts.items())}
        return {"skipped": f"the cohort store {cohort.url} has real subjects per named vendor {per_vendor or 'none'};"
                           " a vendor classifier needs two vendors of at least two subjects each"}
    requested, column = requested_vendors(synthetic_table)
    requested = requested[synthetic_table.loc[requested.index, "n_frames"] > 0]
    if requested.empty:
        return {"skipped": f"the synthetic store {synthetic.url} has no subjects with frames"}
    real_frames, real_histograms = store_measures(cohort, [int(i) for i in vendors.index])
    synthetic_frames, synthetic_histograms = store_measures(synthetic, [int(i) for i in requested.index])
    reference = reference_accuracy(real_frames, vendors, seed)
    model = SoftmaxClassifier().fit(real_frames[list(FEATURES)].to_numpy(float),
                                    vendors[real_frames["subject"]].to_numpy())
    classes = [str(c) for c in model.classes]
    predicted = subject_votes(model, synthetic_frames).reindex(requested.index)
    named = sorted(v for v in set(requested) if v != NONE)
    rows = named + ([NONE] if (requested == NONE).any() else [])
    confusion = pd.crosstab(requested, predicted).reindex(index=rows, columns=classes, fill_value=0)
    correct = (predicted == requested)[requested != NONE]
    per_vendor = {v: {"n": int((requested == v).sum()),
                      "accuracy": float(correct[requested == v].mean()) if v in classes else math.nan}
                  for v in named}
    in_classes = correct[requested[requested != NONE].isin(classes)]
    section = {
        "classifier": CLASSIFIER, "features": list(FEATURES), "heart_region": HEART_REGION,
        "frames_per_subject": FRAMES_PER_SUBJECT, "requested_vendor_column": column, "classes": classes,
        "n_real": int(len(vendors)), "n_synthetic": int(len(requested)), "reference": reference,
        "accuracy": float(in_classes.mean()) if len(in_classes) else math.nan,
        "per_requested_vendor": per_vendor,
        "confusion": {"requested": rows, "predicted": classes, "counts": confusion.to_numpy().astype(int).tolist()},
        "histogram_distance": "1-Wasserstein distance of pooled heart-region intensities ([-1, 1] scale)",
    }
    notes = []
    if not named:
        notes.append(f"the synthetic store names no requested vendor (column {column!r}): the confusion row"
                     f" {NONE!r} shows which vendors its subjects look like, realism is per real vendor against"
                     " the pooled synthetic subjects")
    outside = [v for v in named if v not in classes]
    if outside:
        notes.append(f"requested vendors {outside} are not among the cohort's vendors {classes}: no accuracy")
    if notes:
        section["note"] = "; ".join(notes)
    real_vendor = vendors[real_frames["subject"]].to_numpy()
    synthetic_vendor = requested[synthetic_frames["subject"]].to_numpy()
    section["realism"] = {}
    for v in (named if named else classes):
        r, s = real_vendor == v, (synthetic_vendor == v) if named else np.ones(len(synthetic_frames), bool)
        if r.any() and s.any():
            section["realism"][v] = realism(real_frames[r], real_histograms[r], synthetic_frames[s],
                                            synthetic_histograms[s], seed)
    return section
