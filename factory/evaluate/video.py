"""Fréchet video distance on mid-ventricular cine clips, with a cohort-trained or a given TorchScript extractor.

A clip is the mid-ventricular slice of a subject over one cardiac cycle, resampled cyclically to
CLIP_FRAMES frames. Without `--i3d` the extractor is a small 3D CNN trained here to classify the
diagnosis of a third of the real subjects that have one; the distances then use only the other
real subjects, so no compared clip was seen by the extractor. A given TorchScript file (e.g. I3D) is
loaded with `torch.jit.load` (nothing is unpickled) and gets clips as (B, 3, CLIP_FRAMES, 224, 224)
in [-1, 1]; its output, flattened, is the feature vector.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from factory.errors import InputError
from factory.reporting.stats import frechet_distance
from factory.store.reader import Store

CLIP_FRAMES = 16
I3D_SIZE = 224


def video_subjects(store: Store) -> np.ndarray:
    """Subjects with at least three frames (single frames and pairs are no video)."""
    return np.flatnonzero(store.table["n_frames"].to_numpy() >= 3)


def mid_slice_clip(store: Store, index: int, frames: int = CLIP_FRAMES) -> np.ndarray:
    """(frames, H, W) mid-ventricular slice of subject `index`, its cycle resampled linearly and cyclically."""
    t = int(store.table.loc[index, "n_frames"])
    real_slices = np.flatnonzero(store.read("slice_mask", index))
    z = int(real_slices[len(real_slices) // 2]) if len(real_slices) else store.group["image"].shape[2] // 2
    cycle = store.read_frames([(index, f) for f in range(t)], ("image",))[0][:, z]
    position = np.arange(frames) * t / frames
    before = np.floor(position).astype(int)
    weight = (position - before).astype(np.float32)[:, None, None]
    return (1 - weight) * cycle[before] + weight * cycle[(before + 1) % t]


class ClipEncoder(nn.Module):
    """A small 3D CNN over (B, 1, T, H, W) clips: `features` (B, width * 4) and diagnosis logits.

    Batch (not instance) normalisation: in eval mode it keeps each clip's contrast and brightness in
    its features, which a realism distance must see."""

    def __init__(self, n_classes: int, width: int = 8) -> None:
        super().__init__()
        layers, channels = [], 1
        for k, stride in enumerate(((1, 2, 2), (2, 2, 2), (2, 2, 2))):
            layers += [nn.Conv3d(channels, width * 2 ** k, 3, stride=stride, padding=1),
                       nn.BatchNorm3d(width * 2 ** k), nn.LeakyReLU(0.1)]
            channels = width * 2 ** k
        self.body = nn.Sequential(*layers, nn.AdaptiveAvgPool3d(1), nn.Flatten())
        self.head = nn.Linear(channels, n_classes)

    def features(self, clips: torch.Tensor) -> torch.Tensor:
        """The pooled penultimate activations, the vectors the Fréchet distance compares."""
        return self.body(clips)

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(clips))


def train_extractor(clips: np.ndarray, labels: np.ndarray, steps: int, seed: int, batch_size: int = 8) -> ClipEncoder:
    """A ClipEncoder trained for `steps` Adam steps to classify `labels` from (N, T, H, W) clips."""
    torch.manual_seed(seed)
    classes, y = np.unique(labels, return_inverse=True)
    model = ClipEncoder(len(classes))
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-3)
    rng = np.random.default_rng(seed)
    data, target = torch.from_numpy(clips[:, None]), torch.from_numpy(y)
    for _ in range(steps):
        rows = torch.from_numpy(rng.integers(0, len(clips), size=batch_size))
        optimiser.zero_grad()
        F.cross_entropy(model(data[rows]), target[rows]).backward()
        optimiser.step()
    model.classes = classes
    return model.eval()


@torch.no_grad()
def encode(extract, clips: np.ndarray, batch_size: int = 8) -> np.ndarray:
    """(N, D) features of (N, T, H, W) clips under `extract` ((B, 1, T, H, W) tensor -> (B, ...))."""
    return torch.cat([extract(torch.from_numpy(clips[s:s + batch_size, None])).flatten(1)
                      for s in range(0, len(clips), batch_size)]).double().numpy()


def torchscript_extractor(path: str):
    """A TorchScript feature extractor (e.g. I3D) fed 3-channel clips resized to I3D_SIZE in-plane."""
    module = torch.jit.load(path, map_location="cpu").eval()

    def extract(clips: torch.Tensor) -> torch.Tensor:
        resized = F.interpolate(clips, size=(clips.shape[2], I3D_SIZE, I3D_SIZE), mode="trilinear")
        return module(resized.expand(-1, 3, -1, -1, -1).contiguous())

    return extract


def cohort_extractor(clips: np.ndarray, diagnosis: np.ndarray, steps: int, seed: int):
    """Train a ClipEncoder on a random third of the clips with a diagnosis: (features fn, held-out rows, info)."""
    rng = np.random.default_rng([seed, 1])
    with_diagnosis = np.flatnonzero(pd.notna(diagnosis))
    trained_on = rng.choice(with_diagnosis, size=math.ceil(len(with_diagnosis) / 3), replace=False)
    labels = diagnosis.astype(str)
    if len(set(labels[trained_on])) < 2:
        raise InputError("the cohort-trained video extractor needs real clips of two or more diagnoses; give --i3d")
    model = train_extractor(clips[trained_on], labels[trained_on], steps, seed)
    held_out = np.setdiff1d(np.arange(len(clips)), trained_on)
    scored = np.intersect1d(held_out, with_diagnosis)
    logits = encode(model, clips[scored])
    accuracy = float(np.mean(model.classes[logits.argmax(1)] == labels[scored])) if len(scored) else None
    info = {"metric": "FVD (cohort-trained extractor)",
            "extractor": f"3D CNN diagnosis classifier trained {steps} steps on {len(trained_on)} real clips"
                         " (excluded from the distances)", "extractor_held_out_accuracy": accuracy}
    return model.features, held_out, info


def fvd(cohort: Store, synthetic: Store, i3d: str | None = None, extractor_steps: int = 300, seed: int = 0) -> dict:
    """Real-vs-real (floor) and real-vs-synthetic Fréchet distances on clip features, at equal sample sizes."""
    real = video_subjects(cohort)
    real_clips = np.stack([mid_slice_clip(cohort, int(i)) for i in real])
    if i3d:
        extract, held_out = torchscript_extractor(i3d), np.arange(len(real))
        info = {"metric": "FVD (TorchScript extractor)", "extractor": f"TorchScript file {i3d}"}
    else:
        diagnosis = cohort.table["diagnosis"].to_numpy()[real]
        extract, held_out, info = cohort_extractor(real_clips, diagnosis, extractor_steps, seed)
    rng = np.random.default_rng(seed)
    halves = np.array_split(rng.permutation(held_out), 2)
    syn = video_subjects(synthetic)
    n = min(len(halves[1]), len(syn))
    syn_clips = np.stack([mid_slice_clip(synthetic, int(i)) for i in rng.choice(syn, size=n, replace=False)])
    reference = encode(extract, real_clips[halves[0]])
    return {**info, "clip": f"mid-ventricular slice, {CLIP_FRAMES} frames over one cycle",
            "n_reference": len(halves[0]), "n_compared": n,
            "real_vs_real": frechet_distance(reference, encode(extract, real_clips[halves[1][:n]])),
            "real_vs_synthetic": frechet_distance(reference, encode(extract, syn_clips))}
