"""The downstream cross-vendor experiment: does adding synthetic subjects help a segmenter on unseen vendors?

A small 3D MONAI UNet trains on the labeled frames of one vendor's real subjects and is tested on
labeled frames of other vendors' subjects. Arms, each trained for the same number of steps from the
same initialisation per seed: `real` only; `augmented`, real + N conventionally augmented copies of
real subjects (in-plane affine and elastic deformation, bias field, contrast, noise); `synthetic`,
real + N synthetic subjects; `both`, real + the N copies + the N synthetic subjects. Every step
draws subjects uniformly from the arm's pool and one labeled frame of each, so the extra subjects
make up the same share of the batches in the augmented and synthetic arms. Arms x seeds run as Ray
tasks of one CPU each.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd
import ray
import torch

from factory.cluster import connect
from factory.errors import InputError
from factory.evaluate.overlap import dice, hd95
from factory.reporting.stats import mean_sd
from factory.store.reader import Store, open_store
from factory.vocabulary import STRUCTURES

ARMS: dict[str, str] = {"real": "real only", "augmented": "real + N augmented copies of real subjects",
                        "synthetic": "real + N synthetic subjects", "both": "real + N augmented copies + N synthetic"}
PAIRED = (("synthetic", "real"), ("synthetic", "augmented"))
METRICS = ("dice", "hd95")


@dataclass(frozen=True)
class PoolSubject:
    """One training subject of an arm: where it is, which frames have masks, whether to augment it."""

    store: str
    index: int
    frames: tuple[int, ...]
    augment: bool = False


@dataclass(frozen=True)
class Experiment:
    """Everything a training task needs: pools of every kind, the test frames, and the training settings."""

    real: tuple[PoolSubject, ...]
    synthetic: tuple[PoolSubject, ...]
    test_store: str
    test_frames: tuple[tuple[int, int], ...]
    test_vendors: tuple[str, ...]
    steps: int = 300
    batch_size: int = 4
    lr: float = 1e-3
    channels: tuple[int, ...] = (16, 32, 64)

    def pool(self, arm: str) -> list[PoolSubject]:
        """The training subjects of `arm`; augmented copies cycle through the real subjects."""
        copies = [replace(self.real[k % len(self.real)], augment=True) for k in range(len(self.synthetic))]
        extra = {"real": [], "augmented": copies, "synthetic": list(self.synthetic),
                 "both": copies + list(self.synthetic)}
        return list(self.real) + extra[arm]


def labeled_subjects(store: Store, rows: pd.Index) -> list[PoolSubject]:
    """The subjects among `rows` that have labeled frames, with those frames."""
    labeled = store.group["labeled"][:]
    subjects = [PoolSubject(store.url, int(i), tuple(int(t) for t in np.flatnonzero(labeled[i]))) for i in rows]
    return [s for s in subjects if s.frames]


def conventional_augmentation(seed: int):
    """MONAI augmentation of {"image", "label"} (Z, H, W) frames. Slices act as channels, so in-plane deformations
    are shared by every slice; the image is mapped to [0, 1] (padding = background) and back to [-1, 1]."""
    from monai.transforms import (Compose, Rand2DElasticd, RandAdjustContrastd, RandAffined, RandBiasFieldd,
                                  RandGaussianNoised, ScaleIntensityRanged)

    keys, modes = ("image", "label"), ("bilinear", "nearest")
    transform = Compose([
        ScaleIntensityRanged("image", a_min=-1, a_max=1, b_min=0, b_max=1),
        RandAffined(keys, prob=0.8, rotate_range=np.pi / 12, scale_range=0.15, translate_range=(4, 4), mode=modes,
                    padding_mode="zeros"),
        Rand2DElasticd(keys, spacing=(16, 16), magnitude_range=(0.5, 2.0), prob=0.3, mode=modes, padding_mode="zeros"),
        RandBiasFieldd("image", coeff_range=(0.0, 0.3), prob=0.5),
        RandAdjustContrastd("image", gamma=(0.7, 1.5), prob=0.5),
        RandGaussianNoised("image", std=0.03, prob=0.5),
        ScaleIntensityRanged("image", a_min=0, a_max=1, b_min=-1, b_max=1, clip=True),
    ])
    return transform.set_random_state(seed=seed)


def segmenter(channels: tuple[int, ...]) -> torch.nn.Module:
    """A 3D MONAI UNet for 4 labels that downsamples in-plane only (slices are 10 mm apart)."""
    from monai.networks.nets import UNet

    return UNet(spatial_dims=3, in_channels=1, out_channels=4, channels=channels,
                strides=((1, 2, 2),) * (len(channels) - 1), num_res_units=1)


def training_batch(experiment: Experiment, pool: list[PoolSubject], stores: dict[str, Store],
                   rng: np.random.Generator, augment) -> tuple[torch.Tensor, torch.Tensor]:
    """`batch_size` random subjects of `pool`, one random labeled frame each: (B, 1, Z, H, W) image and label."""
    draws = [pool[k] for k in rng.integers(len(pool), size=experiment.batch_size)]
    frames = [int(rng.choice(subject.frames)) for subject in draws]
    read = {url: zip(*stores[url].read_frames([(s.index, t) for s, t in zip(draws, frames) if s.store == url]))
            for url in dict.fromkeys(s.store for s in draws)}  # one batched read per store, rows in draw order
    images, labels = [], []
    for subject in draws:
        image, label = next(read[subject.store])
        if subject.augment:
            sample = augment({"image": image, "label": label.astype(np.float32)})
            image, label = np.asarray(sample["image"]), np.asarray(sample["label"])
        images.append(image)
        labels.append(label)
    return (torch.from_numpy(np.stack(images).astype(np.float32))[:, None],
            torch.from_numpy(np.rint(np.stack(labels)).astype(np.int64))[:, None])


def train(experiment: Experiment, arm: str, seed: int) -> torch.nn.Module:
    """The segmenter of one (arm, seed): Dice + CE loss, Adam with polynomial decay (nnU-Net's schedule)."""
    from monai.losses import DiceCELoss

    torch.manual_seed(seed)
    net = segmenter(experiment.channels)
    optimiser = torch.optim.Adam(net.parameters(), lr=experiment.lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimiser, lambda step: (1 - step / experiment.steps) ** 0.9)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    pool = experiment.pool(arm)
    stores = {url: open_store(url) for url in {s.store for s in pool}}
    rng, augment = np.random.default_rng(seed), conventional_augmentation(seed)
    net.train()
    for _ in range(experiment.steps):
        image, label = training_batch(experiment, pool, stores, rng, augment)
        optimiser.zero_grad()
        loss_fn(net(image), label).backward()
        optimiser.step()
        schedule.step()
    return net.eval()


@torch.no_grad()
def score(net: torch.nn.Module, experiment: Experiment) -> dict[str, np.ndarray]:
    """Per test frame: Dice and HD95 (mm) of RV, MYO, LV, shape (n_frames, 3) each."""
    store = open_store(experiment.test_store)
    scores = {"dice": [], "hd95": []}
    size = experiment.batch_size
    for start in range(0, len(experiment.test_frames), size):
        images, masks = store.read_frames(experiment.test_frames[start:start + size])
        pred = net(torch.from_numpy(images)[:, None]).argmax(1).numpy()
        scores["dice"].append(dice(pred, masks))
        scores["hd95"].append(hd95(pred, masks, store.spacing_mm))
    return {k: np.concatenate(v) for k, v in scores.items()}


@ray.remote(num_cpus=1)
def run_arm(experiment: Experiment, arm: str, seed: int) -> dict:
    """Train and test one (arm, seed) in a Ray task of one CPU."""
    torch.set_num_threads(1)
    return {"arm": arm, "seed": seed, **score(train(experiment, arm, seed), experiment)}


def gather_with_progress(refs: list[ray.ObjectRef]) -> list[dict]:
    """ray.get in submission order, printing a line as each (arm, seed) finishes (runs take minutes each)."""
    start, pending, done = time.monotonic(), list(refs), {}
    while pending:
        ready, pending = ray.wait(pending, num_returns=1)
        done[ready[0]] = result = ray.get(ready[0])
        print(f"[downstream] arm {result['arm']} seed {result['seed']} done ({len(done)}/{len(refs)}, "
              f"{(time.monotonic() - start) / 60:.1f} min)", flush=True)
    return [done[ref] for ref in refs]


def seed_summary(result: dict, vendors: np.ndarray) -> dict:
    """One (arm, seed): each metric's mean over test frames per structure and over structures, and per vendor."""
    def means(scores: np.ndarray, rows) -> dict[str, float]:
        per_structure = np.nanmean(scores[rows], axis=0)
        return {**dict(zip(STRUCTURES, per_structure.tolist())), "mean": float(np.nanmean(per_structure))}

    per_vendor = {v: {m: means(result[m], vendors == v)["mean"] for m in METRICS} for v in sorted(set(vendors))}
    return {**{m: means(result[m], slice(None)) for m in METRICS}, "per_vendor": per_vendor}


def summarize(results: list[dict], vendors: np.ndarray) -> dict:
    """Per arm: every seed's summary and their mean +/- SD over seeds; the paired (same seed) differences."""
    per_seed: dict[str, dict[int, dict]] = {}
    for result in results:
        per_seed.setdefault(result["arm"], {})[result["seed"]] = seed_summary(result, vendors)
    keys = (*STRUCTURES, "mean")
    arms = {}
    for arm, seeds in per_seed.items():
        arms[arm] = {"description": ARMS[arm], "seeds": [{"seed": s, **v} for s, v in sorted(seeds.items())],
                     **{m: {k: mean_sd([v[m][k] for v in seeds.values()]) for k in keys} for m in METRICS},
                     "per_vendor": {vendor: {m: mean_sd([v["per_vendor"][vendor][m] for v in seeds.values()])
                                             for m in METRICS} for vendor in sorted(set(vendors))}}
    paired = {}
    for a, b in PAIRED:
        if a in per_seed and b in per_seed:
            common = sorted(set(per_seed[a]) & set(per_seed[b]))
            paired[f"{a} - {b}"] = {m: {k: mean_sd([per_seed[a][s][m][k] - per_seed[b][s][m][k] for s in common])
                                        for k in keys} for m in METRICS}
    return {"arms": arms, "paired_differences": paired}


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


def plan_experiment(cohort_url: str, synthetic_url: str, test_url: str | None, train_vendor: str, steps: int,
                    batch_size: int, n_extra: int | None, seed: int) -> tuple[Experiment, dict]:
    """The training pools and test frames of the experiment, and the protocol that describes them."""
    cohort, synthetic = open_store(cohort_url), open_store(synthetic_url)
    table = cohort.table
    real = labeled_subjects(cohort, table.index[table["vendor"].astype(str) == train_vendor])
    if not real:
        raise InputError(f"{cohort_url}: no labeled vendor-{train_vendor} subjects to train the segmenter on")
    syn_table = synthetic.table
    usable = syn_table.index[syn_table["status"] == "ok"] if "status" in syn_table else syn_table.index
    candidates = labeled_subjects(synthetic, usable)
    n = min(n_extra or len(real), len(candidates))
    chosen = np.sort(np.random.default_rng(seed).choice(len(candidates), size=n, replace=False))
    test_store, test_subjects, note = held_out_set(cohort, open_store(test_url) if test_url else None, train_vendor)
    vendors = test_store.table["vendor"].astype(str)
    frames = [(s.index, t) for s in test_subjects for t in s.frames]
    experiment = Experiment(real=tuple(real), synthetic=tuple(candidates[k] for k in chosen),
                            test_store=test_store.url, test_frames=tuple(frames),
                            test_vendors=tuple(vendors[i] for i, _ in frames), steps=steps, batch_size=batch_size)
    protocol = {
        "segmenter": f"3D MONAI UNet, channels {experiment.channels}, in-plane strides, Dice+CE loss, Adam"
                     f" lr {experiment.lr} with polynomial decay, batch {batch_size}, {steps} steps per arm",
        "train": f"{len(real)} labeled vendor-{train_vendor} subjects of the cohort store {cohort_url}"
                 f" ({sum(len(s.frames) for s in real)} labeled frames)",
        "n_extra": n,
        "extra_synthetic": f"{n} synthetic subjects (status ok) of {synthetic_url}, all their labeled frames",
        "extra_augmented": f"{n} augmented copies of the real training subjects (MONAI RandAffined, Rand2DElasticd,"
                           " RandBiasFieldd, RandAdjustContrastd, RandGaussianNoised)",
        "test": f"{note}: {len(test_subjects)} subjects, {len(frames)} labeled frames, vendors"
                f" {sorted(set(experiment.test_vendors))}",
        "metrics": "Dice (higher is better) and HD95 in mm (lower is better) per structure, MONAI; a structure"
                   " missing from the prediction scores the field-of-view diagonal as HD95"}
    return experiment, protocol


def downstream(cohort_url: str, synthetic_url: str, test_url: str | None = None, *, train_vendor: str = "A",
               arms: tuple[str, ...] = ("real", "augmented", "synthetic"), seeds: int = 3, steps: int = 300,
               batch_size: int = 4, n_extra: int | None = None, seed: int = 0) -> dict:
    """Run every arm x seed as Ray tasks and return the `downstream` report section."""
    unknown = set(arms) - set(ARMS)
    if unknown:
        raise InputError(f"unknown downstream arms {sorted(unknown)}; choose from {list(ARMS)}")
    experiment, protocol = plan_experiment(cohort_url, synthetic_url, test_url, train_vendor, steps, batch_size,
                                           n_extra, seed)
    if not experiment.synthetic and set(arms) - {"real"}:
        raise InputError(f"{synthetic_url}: no labeled synthetic subjects that passed the gate")
    connect()
    seed_list = list(range(seed, seed + seeds))
    results = gather_with_progress([run_arm.remote(experiment, arm, s) for arm in arms for s in seed_list])
    return {"protocol": {**protocol, "seeds": seed_list, "arms": {a: ARMS[a] for a in arms}},
            **summarize(results, np.array(experiment.test_vendors))}
