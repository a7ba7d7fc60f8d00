"""The downstream segmenter: a 3D MONAI UNet, trained to convergence on one arm's pools, and scored per test frame.

Training (the same rule and budget for every arm): Dice + CE loss, Adam with nnU-Net's polynomial
learning-rate decay over the step budget, the standard augmentation on every sample (the strong one
first on strong copies). Every `val_every` steps the mean Dice over structures on the validation
frames (held-out real subjects of the training vendor) is measured; the weights of the best
validation step are kept, and training stops once `patience` validations in a row bring no
improvement, or at the budget.
"""

from __future__ import annotations

import copy

import numpy as np
import torch

from factory.evaluate.arms import Experiment, PoolSubject, draw
from factory.evaluate.augmentation import standard_augmentation, strong_augmentation
from factory.evaluate.overlap import dice, hd95
from factory.store.reader import Store, open_store


def segmenter(channels: tuple[int, ...]) -> torch.nn.Module:
    """A 3D MONAI UNet for 4 labels that downsamples in-plane only (slices are 10 mm apart)."""
    from monai.networks.nets import UNet

    return UNet(spatial_dims=3, in_channels=1, out_channels=4, channels=channels,
                strides=((1, 2, 2),) * (len(channels) - 1), num_res_units=1)


class Batches:
    """Training batches of one (arm, seed): drawn as `arms.draw` says, read in one call per store, augmented."""

    def __init__(self, experiment: Experiment, arm: str, seed: int, pseudo_masks: np.ndarray | None) -> None:
        self.experiment, self.pseudo_masks = experiment, pseudo_masks
        self.main, self.extra = experiment.pools(arm)
        self.stores = {url: open_store(url) for url in {s.store for s in self.main + self.extra}}
        self.rng = np.random.default_rng(seed)
        self.standard, self.strong = standard_augmentation(seed), strong_augmentation(seed + 1)

    def sample(self, subject: PoolSubject, image: np.ndarray, label: np.ndarray, t: int) -> tuple[np.ndarray, ...]:
        """One augmented (image, label) sample; a pseudo-labelled subject's label comes from the pseudo-label array."""
        if subject.pseudo_row is not None:
            label = self.pseudo_masks[subject.pseudo_row + t]
        sample = {"image": image.astype(np.float32), "label": label.astype(np.float32)}
        if subject.strong:
            sample = self.strong(sample)
        sample = self.standard(sample)
        return np.asarray(sample["image"]), np.asarray(sample["label"])

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 1, Z, H, W) images and labels."""
        samples = draw(self.main, self.extra, self.experiment.extra_share, self.experiment.batch_size, self.rng)
        read = {url: zip(*self.stores[url].read_frames([(s.index, t) for s, t in samples if s.store == url]))
                for url in dict.fromkeys(s.store for s, _ in samples)}  # one batched read per store, in draw order
        pairs = [self.sample(subject, *next(read[subject.store]), t) for subject, t in samples]
        images, labels = zip(*pairs)
        return (torch.from_numpy(np.stack(images))[:, None],
                torch.from_numpy(np.rint(np.stack(labels)).astype(np.int64))[:, None])


@torch.no_grad()
def predict_scores(net: torch.nn.Module, store: Store, frames: tuple[tuple[int, int], ...], batch_size: int,
                   metrics: tuple[str, ...] = ("dice", "hd95")) -> dict[str, np.ndarray]:
    """Per frame of `store`: `metrics` (Dice, HD95 in mm) of RV, MYO, LV, shape (n_frames, 3) each."""
    scores = {m: [] for m in metrics}
    for start in range(0, len(frames), batch_size):
        images, masks = store.read_frames(frames[start:start + batch_size])
        pred = net(torch.from_numpy(np.asarray(images, dtype=np.float32))[:, None]).argmax(1).numpy()
        if "dice" in scores:
            scores["dice"].append(dice(pred, masks))
        if "hd95" in scores:
            scores["hd95"].append(hd95(pred, masks, store.spacing_mm))
    return {k: np.concatenate(v) for k, v in scores.items()}


def validation_dice(net: torch.nn.Module, experiment: Experiment, store: Store) -> float:
    """Mean Dice over structures and validation frames (the early-stopping criterion)."""
    net.eval()
    scores = predict_scores(net, store, experiment.validation, experiment.batch_size, metrics=("dice",))
    net.train()
    return float(np.nanmean(scores["dice"]))


def train(experiment: Experiment, arm: str, seed: int,
          pseudo_masks: np.ndarray | None = None) -> tuple[torch.nn.Module, dict]:
    """The segmenter of one (arm, seed) with the weights of its best validation step, and its training record."""
    from monai.losses import DiceCELoss

    torch.manual_seed(seed)
    net = segmenter(experiment.channels)
    optimiser = torch.optim.Adam(net.parameters(), lr=experiment.lr)
    budget = experiment.steps
    schedule = torch.optim.lr_scheduler.LambdaLR(optimiser, lambda step: (1 - step / budget) ** 0.9)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    batches, validation_store = Batches(experiment, arm, seed, pseudo_masks), open_store(experiment.cohort_store)
    best = {"dice": -np.inf, "step": 0, "weights": copy.deepcopy(net.state_dict())}
    history, since_best = [], 0
    net.train()
    for step in range(1, budget + 1):
        image, label = batches.next()
        optimiser.zero_grad()
        loss_fn(net(image), label).backward()
        optimiser.step()
        schedule.step()
        if step % experiment.val_every and step < budget:
            continue
        value = validation_dice(net, experiment, validation_store)
        history.append({"step": step, "dice": value})
        if value > best["dice"]:
            best, since_best = {"dice": value, "step": step, "weights": copy.deepcopy(net.state_dict())}, 0
        else:
            since_best += 1
            if since_best >= experiment.patience:
                break
    net.load_state_dict(best["weights"])
    record = {"best_step": best["step"], "steps_run": step, "best_validation_dice": best["dice"],
              "validation": history}
    return net.eval(), record
