"""The downstream cross-vendor experiment: does adding synthetic subjects help a segmenter on unseen vendors?

Protocol (README "Evaluation"):
- cohort split: the labeled subjects of the training vendor in --cohort are split (seeded, once for
  every arm and seed) into training and validation subjects (VAL_FRACTION); the test subjects are
  the labeled subjects of the other vendors in --test (never seen by the generator or the
  segmenter; without --test, the cohort's own, which the report flags);
- arms (`arms.ARMS`): (a) real, (b) real + N strong copies, (c) real + N synthetic, (d) real + N
  synthetic + N strong copies, (e) N synthetic only, (f) real + N unlabeled cohort subjects
  pseudo-labelled by the generator's VAE; N and the extra pools' share of the batches are the same
  in (b), (c) and (f); every sample of every arm gets the standard augmentation;
- training (`segmenter.train`): the same step budget and early-stopping rule on validation Dice for
  every arm, the best validation checkpoint kept; the steps used are reported;
- regime (`generator.REGIMES`): the scarce regime accepts only a generator that saw at most 20
  labeled subjects (the cohort's, counted on its training cohort, which --cohort must then be);
- statistics (`statistics`): per structure and test vendor, over seeds; paired differences with
  95 % intervals. Arms x seeds run as Ray tasks of one CPU each; each finished one is saved at once
  (`finished_runs`), so an interrupted evaluation resumes with `--resume`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import ray
import torch

from factory.cluster import connect
from factory.errors import InputError
from factory.evaluate.arms import ARMS, Experiment, PoolSubject, arm_label, labeled_subjects
from factory.evaluate.finished_runs import FinishedRuns, run_key
from factory.evaluate.generator import REGIMES
from factory.evaluate.pseudo_labels import pseudo_label_task
from factory.evaluate.segmenter import predict_scores, train
from factory.evaluate.statistics import summarize
from factory.store.reader import Store, open_store
from factory.train.data import split_subjects

VAL_FRACTION = 0.2  # of the training vendor's labeled subjects, held out to choose the steps
NEEDS_SYNTHETIC = ("synthetic", "both", "synthetic-only")
MIN_SEEDS = 3  # the protocol's minimum; fewer (quick checks) are run, and the report says so


@dataclass(frozen=True)
class DownstreamSpec:
    """The settings of the downstream experiment (all recorded in the report)."""

    regime: str = "full"
    train_vendor: str = "A"
    arms: tuple[str, ...] = tuple(ARMS)
    seeds: int = 3
    steps: int = 3000  # the step budget of every (arm, seed)
    val_every: int = 100
    patience: int = 5  # validations without improvement before stopping
    batch_size: int = 4
    n_extra: int | None = None  # N (default: as many as real training subjects, at most what every pool has)
    extra_share: float | None = None  # share of the samples from the extra pool (default N / (real + N))


@dataclass(frozen=True)
class Plan:
    """A planned experiment: what the tasks train and test on, and what the report says about it."""

    spec: DownstreamSpec
    experiment: Experiment
    bundle: str | None
    pseudo_subjects: tuple[int, ...]
    frame_subject: np.ndarray  # per test frame: the position of its subject among the test subjects
    subject_vendor: np.ndarray  # per test subject: its vendor
    protocol: dict
    cohort_split: dict


def held_out_set(cohort: Store, test: Store | None, train_vendor: str) -> tuple[Store, list[PoolSubject], str]:
    """Labeled subjects of other vendors than `train_vendor`: from `test` when given, else from the cohort."""
    store = test or cohort
    table = store.table
    subjects = labeled_subjects(store, table.index[table["vendor"].astype(str) != train_vendor])
    if test is not None:
        note = f"labeled non-{train_vendor} subjects of the held-out test store {test.url}"
    else:
        note = (f"no --test store was given: labeled non-{train_vendor} subjects of the cohort store itself. If the"
                " generator was trained on this cohort these subjects may have been part of its training data")
    if not subjects:
        raise InputError(f"{store.url}: no labeled subjects of a vendor other than {train_vendor} to test on"
                         + ("" if test else "; give a held-out labeled store with --test"))
    return store, subjects, note


def split_training_vendor(cohort: Store, train_vendor: str, seed: int) -> tuple[list[PoolSubject], list[PoolSubject]]:
    """The training vendor's labeled cohort subjects, split (seeded) into training and validation subjects."""
    table = cohort.table
    subjects = labeled_subjects(cohort, table.index[table["vendor"].astype(str) == train_vendor])
    if len(subjects) < 2:
        raise InputError(f"{cohort.url}: {len(subjects)} labeled vendor-{train_vendor} subjects; the segmenter needs"
                         " at least two (training and validation)")
    train_ids, val_ids = split_subjects(len(subjects), VAL_FRACTION, seed)
    return [subjects[k] for k in train_ids], [subjects[k] for k in val_ids]


def unlabeled_pool(cohort: Store) -> list[int]:
    """Cohort subjects without any labeled frame (the generator's unlabeled pool)."""
    labeled = cohort.group["labeled"][:].any(axis=1)
    frames = cohort.table["n_frames"].to_numpy()
    return [int(i) for i in np.flatnonzero(~labeled & (frames > 0))]


def extra_count(spec: DownstreamSpec, n_real: int, n_synthetic: int, n_unlabeled: int) -> int:
    """N: the requested number (default: the real training subjects), at most what every pool the arms use holds."""
    pools = {}
    if set(spec.arms) & set(NEEDS_SYNTHETIC):
        pools["synthetic subjects that passed the gate"] = n_synthetic
    if "pseudo" in spec.arms:
        pools["unlabeled cohort subjects"] = n_unlabeled
    for pool, n in pools.items():
        if n == 0:
            raise InputError(f"arms {list(spec.arms)} need {pool}, and there are none")
    return min([spec.n_extra or n_real, *pools.values()])


def pseudo_pool(cohort: Store, unlabeled: list[int], n: int, seed: int) -> list[PoolSubject]:
    """N seeded unlabeled subjects, every frame of each, with the pseudo-label row of each one's first frame."""
    chosen = sorted(np.random.default_rng([seed, 1]).choice(unlabeled, size=n, replace=False).tolist())
    n_frames = cohort.table["n_frames"].to_numpy()[chosen]
    rows = np.concatenate([[0], np.cumsum(n_frames)[:-1]])
    return [PoolSubject(cohort.url, i, tuple(range(int(t))), pseudo_row=int(r))
            for i, t, r in zip(chosen, n_frames, rows)]


def ids(store: Store, subjects: list[PoolSubject]) -> list[str]:
    """The subject ids of `subjects` in their store's table."""
    column = store.table["subject_id"]
    return [str(column[s.index]) for s in subjects]


def plan_downstream(cohort_url: str, synthetic_url: str, test_url: str | None, spec: DownstreamSpec,
                    generator: dict, seed: int) -> Plan:
    """Check the inputs and plan every pool, split and test frame (before any work starts)."""
    unknown = set(spec.arms) - set(ARMS)
    if unknown:
        raise InputError(f"unknown downstream arms {sorted(unknown)}; choose from {list(ARMS)}")
    cohort, synthetic = open_store(cohort_url), open_store(synthetic_url)
    bundle = generator.get("bundle")
    if "pseudo" in spec.arms and generator.get("preset") is None:
        raise InputError(f"arm pseudo needs the generator's bundle to pseudo-label with: {generator['note']}")
    if "pseudo" in spec.arms and generator["preset"] != cohort.attrs["preset"]:
        raise InputError(f"arm pseudo: bundle {bundle} is for preset {generator['preset']!r}, the cohort store is in"
                         f" preset {cohort.attrs['preset']!r} geometry")
    real, validation = split_training_vendor(cohort, spec.train_vendor, seed)
    table = synthetic.table
    usable = table.index[table["status"] == "ok"] if "status" in table else table.index
    candidates = labeled_subjects(synthetic, usable)
    unlabeled = unlabeled_pool(cohort)
    n = extra_count(spec, len(real), len(candidates), len(unlabeled))
    chosen = np.sort(np.random.default_rng(seed).choice(len(candidates), size=min(n, len(candidates)), replace=False))
    pseudo = pseudo_pool(cohort, unlabeled, n, seed) if "pseudo" in spec.arms else []
    share = spec.extra_share if spec.extra_share is not None else n / (len(real) + n)
    test_store, test_subjects, note = held_out_set(cohort, open_store(test_url) if test_url else None,
                                                   spec.train_vendor)
    frames = [(s.index, t) for s in test_subjects for t in s.frames]
    vendors = test_store.table["vendor"].astype(str)
    experiment = Experiment(
        real=tuple(real), n_extra=n, validation=tuple((s.index, t) for s in validation for t in s.frames),
        cohort_store=cohort.url, synthetic=tuple(candidates[k] for k in chosen), pseudo=tuple(pseudo),
        test_store=test_store.url, test_frames=tuple(frames), extra_share=share, steps=spec.steps,
        val_every=spec.val_every, patience=spec.patience, batch_size=spec.batch_size)
    subject_vendor = np.array([str(vendors[s.index]) for s in test_subjects])
    split = {
        "regime": spec.regime, "label_limit": REGIMES[spec.regime], "train_vendor": spec.train_vendor,
        "train_subjects": ids(cohort, real), "validation_subjects": ids(cohort, validation),
        "validation_frames": len(experiment.validation), "unlabeled_pool": len(unlabeled),
        "pseudo_subjects": ids(cohort, pseudo), "synthetic_subjects": ids(synthetic, list(experiment.synthetic)),
        "test": {"store": test_store.url, "note": note, "frames": len(frames),
                 "subjects_per_vendor": {str(v): int(np.sum(subject_vendor == v)) for v in sorted(set(subject_vendor))}}}
    protocol = {
        "regime": f"{spec.regime}: " + (f"the generator saw at most {REGIMES[spec.regime]} labeled subjects"
                                        if REGIMES[spec.regime] else "no limit on the labels the generator saw"),
        "segmenter": f"3D MONAI UNet, channels {experiment.channels}, in-plane strides, Dice+CE loss, Adam"
                     f" lr {experiment.lr} with polynomial decay over the budget, batch {spec.batch_size}",
        "training": f"budget {spec.steps} steps per arm and seed; validation Dice every {spec.val_every} steps on"
                    f" {len(validation)} held-out vendor-{spec.train_vendor} subjects; best checkpoint kept; stop after"
                    f" {spec.patience} validations without improvement; the same for every arm",
        "augmentation": "every sample of every arm: nnU-Net-like in-plane spatial + intensity (MONAI RandAffined,"
                        " RandGaussianNoised, RandGaussianSmoothd, RandScaleIntensityd, RandAdjustContrastd,"
                        " RandSimulateLowResolutiond); strong copies first get domain randomisation (wide gamma,"
                        " RandBiasFieldd, RandHistogramShiftd, blur, low resolution, noise)",
        "train": f"{len(real)} labeled vendor-{spec.train_vendor} subjects of the cohort store {cohort_url}"
                 f" ({sum(len(s.frames) for s in real)} labeled frames)",
        "n_extra": n, "extra_share": share,
        "extra": f"N = {n}: synthetic subjects (status ok, all their labeled frames) of {synthetic_url}; strong copies"
                 f" of the real training subjects; unlabeled cohort subjects, every frame pseudo-labelled by the VAE"
                 f" of bundle {bundle}; each sample comes from the extra pool with probability {share:.3f}",
        "test": f"{note}: {len(test_subjects)} subjects, {len(frames)} labeled frames, vendors"
                f" {sorted(set(subject_vendor.tolist()))}",
        "metrics": "Dice (higher is better) and HD95 in mm (lower is better) per structure, MONAI; a structure"
                   " missing from the prediction scores the field-of-view diagonal as HD95; a subject's score is the"
                   " mean over its frames, an arm's the mean over test subjects",
        "arms": {arm_label(a): ARMS[a][1] for a in spec.arms}}
    return Plan(spec=spec, experiment=experiment, bundle=bundle, pseudo_subjects=tuple(s.index for s in pseudo),
                frame_subject=np.repeat(np.arange(len(test_subjects)), [len(s.frames) for s in test_subjects]),
                subject_vendor=subject_vendor, protocol=protocol, cohort_split=split)


@ray.remote(num_cpus=1)
def run_arm(experiment: Experiment, arm: str, seed: int, pseudo_masks: np.ndarray | None) -> dict:
    """Train and test one (arm, seed) in a Ray task of one CPU."""
    torch.set_num_threads(1)
    net, record = train(experiment, arm, seed, pseudo_masks)
    scores = predict_scores(net, open_store(experiment.test_store), experiment.test_frames, experiment.batch_size)
    return {"arm": arm, "seed": seed, "training": record, **scores}


def gather_with_progress(refs: dict[ray.ObjectRef, str], finished: FinishedRuns) -> list[dict]:
    """Wait for every (arm, seed) task, saving each result under its key and printing a line as it finishes."""
    start, pending, results = time.monotonic(), list(refs), []
    while pending:
        ready, pending = ray.wait(pending, num_returns=1)
        result = ray.get(ready[0])
        finished.save(result, refs[ready[0]])
        results.append(result)
        print(f"[downstream] arm {result['arm']} seed {result['seed']} done: best step"
              f" {result['training']['best_step']} of {result['training']['steps_run']} run ({len(results)}/{len(refs)},"
              f" {(time.monotonic() - start) / 60:.1f} min)", flush=True)
    return results


def downstream(plan: Plan, n_boot: int, seed: int, finished: FinishedRuns) -> dict:
    """Run every arm x seed of `plan` as Ray tasks and return the `downstream` report section.

    Each finished (arm, seed) is saved in `finished`; those already saved there under the same key (an
    interrupted evaluation's, kept by --resume) are reused instead of trained again."""
    seed_list = list(range(seed, seed + plan.spec.seeds))
    runs = [(arm, s, run_key(plan.experiment, arm, s, plan.bundle)) for arm in plan.spec.arms for s in seed_list]
    reused = {(arm, s): result for arm, s, key in runs if (result := finished.load(arm, s, key)) is not None}
    todo = [(arm, s, key) for arm, s, key in runs if (arm, s) not in reused]
    if reused:
        print(f"[downstream] {len(reused)} of {len(runs)} runs reused from {finished.folder}", flush=True)
    results = []
    if todo:
        connect()
        pseudo = (pseudo_label_task.remote(plan.bundle, plan.experiment.cohort_store, list(plan.pseudo_subjects))
                  if any(arm == "pseudo" for arm, _, _ in todo) else None)
        refs = {run_arm.remote(plan.experiment, arm, s, pseudo if arm == "pseudo" else None): key
                for arm, s, key in todo}
        results = gather_with_progress(refs, finished)
    done = {(r["arm"], r["seed"]): r for r in results} | reused
    protocol = {**plan.protocol, "seeds": seed_list}
    if len(seed_list) < MIN_SEEDS:
        protocol["note"] = f"{len(seed_list)} seed(s): the protocol asks for at least {MIN_SEEDS}"
    if reused:
        protocol["resumed"] = f"{len(reused)} of {len(runs)} (arm, seed) runs reused from an interrupted evaluation"
    return {"protocol": protocol, "cohort_split": plan.cohort_split,
            **summarize([done[(arm, s)] for arm, s, _ in runs], plan.frame_subject, plan.subject_vendor, n_boot, seed)}
