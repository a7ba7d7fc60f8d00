"""Classifier two-sample test of realism: can a small CNN tell real frames from synthetic ones? (per vendor)

Per vendor v: the real subjects of v (from the held-out --test store when it has at least
MIN_SUBJECTS of them, else the cohort's, which the generator saw: the section says which) and the
synthetic subjects requested for v (`vendor.requested_vendors`; a store that names no vendor is
compared as one pool with every real vendor). Both sides get the same number of subjects (seeded
choice), FRAMES_PER_SUBJECT frames each (evenly spaced over the cycle), and are split by subject
into a training and a held-out half. A small 2D CNN (MONAI Classifier, slices as channels, batch
normalisation so that global contrast and brightness stay visible) is trained to tell them apart;
its ROC AUC on the held-out half is the score: 0.5 = indistinguishable, 1.0 = always told apart.
The 95 % interval is a percentile bootstrap over held-out subjects (their frames resampled together).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from factory.evaluate.vendor import NONE, named_vendor, requested_vendors, subject_frames
from factory.reporting.stats import bootstrap_ci
from factory.store.reader import Store

MIN_SUBJECTS = 4  # per side: two to train on, two held out
BATCH = 16  # frames per training step, half real and half synthetic
CLASSIFIER = ("MONAI Classifier (2D, slices as channels, channels (8, 16, 32), strides 2, batch norm), Adam 1e-3,"
              f" batches of {BATCH} frames (half real, half synthetic), binary cross-entropy")


def classifier(shape: tuple[int, int, int]) -> torch.nn.Module:
    """A small CNN from (B, Z, H, W) frames to one logit (synthetic vs real)."""
    from monai.networks.nets import Classifier

    return Classifier(in_shape=shape, classes=1, channels=(8, 16, 32), strides=(2, 2, 2), num_res_units=1,
                      norm="BATCH")


def read_frames(store: Store, subjects: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """(frames, Z, H, W) images of `subjects` (subject_frames of each) and the position of each frame's subject."""
    n_frames = store.table["n_frames"]
    pairs = [(i, t) for i in subjects for t in subject_frames(int(n_frames[i]))]
    images, = store.read_frames(pairs, names=("image",))
    owner = {i: k for k, i in enumerate(subjects)}
    return np.asarray(images, dtype=np.float32), np.array([owner[i] for i, _ in pairs])


def roc_auc(score: np.ndarray, label: np.ndarray) -> float:
    """ROC AUC (MONAI) of scores against 0/1 labels; NaN when one class is missing."""
    from monai.metrics import compute_roc_auc

    if label.min() == label.max():
        return float("nan")
    return float(compute_roc_auc(torch.as_tensor(score), torch.as_tensor(label)))


def train_classifier(real: np.ndarray, synthetic: np.ndarray, steps: int, seed: int) -> torch.nn.Module:
    """The CNN trained for `steps` Adam steps on real (label 0) and synthetic (label 1) frames."""
    torch.manual_seed(seed)
    net = classifier(real.shape[1:])
    optimiser = torch.optim.Adam(net.parameters(), lr=1e-3)
    rng = np.random.default_rng(seed)
    target = torch.cat([torch.zeros(BATCH // 2), torch.ones(BATCH // 2)])[:, None]
    net.train()
    for _ in range(steps):
        batch = np.concatenate([real[rng.integers(len(real), size=BATCH // 2)],
                                synthetic[rng.integers(len(synthetic), size=BATCH // 2)]])
        optimiser.zero_grad()
        F.binary_cross_entropy_with_logits(net(torch.from_numpy(batch)), target).backward()
        optimiser.step()
    return net.eval()


def vendor_test(real: Store, real_subjects: list[int], synthetic: Store, synthetic_subjects: list[int], steps: int,
                seed: int, n_boot: int) -> dict:
    """The two-sample test of one vendor: AUC of the held-out half, its bootstrap interval, the sample sizes."""
    rng = np.random.default_rng(seed)
    n = min(len(real_subjects), len(synthetic_subjects))
    sides = [sorted(rng.choice(real_subjects, n, replace=False).tolist()),
             sorted(rng.choice(synthetic_subjects, n, replace=False).tolist())]
    held_out = rng.permutation(n) < n // 2  # the same positions on both sides: equal halves
    frames = [read_frames(store, subjects) for store, subjects in zip((real, synthetic), sides)]
    train = [images[~held_out[owner]] for images, owner in frames]
    net = train_classifier(*train, steps, seed)
    test = [(images[held_out[owner]], owner[held_out[owner]]) for images, owner in frames]
    images = np.concatenate([test[0][0], test[1][0]])
    label = np.concatenate([np.zeros(len(test[0][0])), np.ones(len(test[1][0]))])
    subject = np.concatenate([test[0][1], test[1][1] + n])  # synthetic subjects numbered after the real ones
    with torch.no_grad():
        score = torch.cat([net(torch.from_numpy(images[k:k + BATCH])) for k in range(0, len(images), BATCH)])
    score = score[:, 0].numpy()
    rows = {s: np.flatnonzero(subject == s) for s in np.unique(subject)}

    def resampled_auc(subjects: np.ndarray) -> float:
        picked = np.concatenate([rows[int(s)] for s in subjects])
        return roc_auc(score[picked], label[picked])

    return {"auc": roc_auc(score, label),
            "auc_ci95": list(bootstrap_ci(resampled_auc, np.array(sorted(rows), float), n_boot=n_boot, seed=seed)),
            "n_subjects_per_side": n, "n_held_out_subjects_per_side": int(held_out.sum()),
            "n_held_out_frames": int(len(label))}


def real_reference(vendor: str, test: Store | None, cohort: Store) -> tuple[Store, list[int], str]:
    """Real subjects of `vendor` with frames: the test store's when it has MIN_SUBJECTS of them, else the cohort's."""
    def subjects_of(store: Store) -> list[int]:
        table = store.table
        return [int(i) for i in table.index[(table["vendor"].map(named_vendor) == vendor) & (table["n_frames"] > 0)]]

    if test is not None and len(subjects_of(test)) >= MIN_SUBJECTS:
        return test, subjects_of(test), f"held-out test store {test.url}"
    return cohort, subjects_of(cohort), f"cohort store {cohort.url} (the generator's training data)"


def classifier_two_sample_test(synthetic: Store, cohort: Store, test: Store | None, steps: int, seed: int,
                               n_boot: int) -> dict:
    """The `c2st` report section: per vendor, the held-out AUC of a CNN telling real from synthetic frames."""
    requested, column = requested_vendors(synthetic.table)
    requested = requested[synthetic.table["n_frames"] > 0]
    real_vendors = sorted({v for store in (cohort, test) if store is not None
                           for v in store.table["vendor"].map(named_vendor).dropna()})
    named = sorted(set(requested) - {NONE})
    section = {"classifier": CLASSIFIER, "steps": steps, "frames_per_subject": "up to 4, evenly spaced over the cycle",
               "requested_vendor_column": column, "per_vendor": {}}
    if not named:
        section["note"] = (f"the synthetic store names no requested vendor (column {column!r}): every real vendor is"
                           " compared with the pooled synthetic subjects")
    for vendor in named or real_vendors:
        store, real_subjects, source = real_reference(vendor, test, cohort)
        synthetic_subjects = [int(i) for i in (requested.index[requested == vendor] if named else requested.index)]
        if min(len(real_subjects), len(synthetic_subjects)) < MIN_SUBJECTS:
            section["per_vendor"][vendor] = {
                "skipped": f"{len(real_subjects)} real and {len(synthetic_subjects)} synthetic subjects; the test"
                           f" needs {MIN_SUBJECTS} on each side", "real": source}
            continue
        result = vendor_test(store, real_subjects, synthetic, synthetic_subjects, steps, seed, n_boot)
        section["per_vendor"][vendor] = {**result, "real": source}
    return section
