"""Arm (f)'s pool: unlabeled cohort subjects segmented by the generator bundle's VAE (encoder + segmentation decoder).

This is the non-generative use of the generator's unlabeled studies: the same model that turns them
into pseudo clinical values for the LDMs labels every one of their frames.
"""

from __future__ import annotations

import numpy as np
import ray
import torch

from factory.bundle import load_bundle
from factory.store.reader import open_store

BATCH = 8  # frames per VAE call


@torch.no_grad()
def pseudo_labels(bundle: str, cohort_url: str, subjects: list[int]) -> np.ndarray:
    """(sum of their frames, Z, H, W) uint8: every frame of each subject in turn, labelled by the VAE's segmentation
    decoder (argmax of its logits at the posterior mean), zero on the subject's padding slices."""
    vae = load_bundle(bundle, stages=("vae",)).vae
    store = open_store(cohort_url)
    masks = []
    for i in subjects:
        subject = store.subject(i)
        frames = torch.from_numpy(np.asarray(subject.image, dtype=np.float32))[:, None]
        for chunk in frames.split(BATCH):
            labels = vae.decode_mask_logits(vae.encode(chunk)[0]).argmax(1).to(torch.uint8).numpy()
            masks.append(labels * subject.slice_mask[None, :, None, None])
    return np.concatenate(masks)


@ray.remote(num_cpus=1)
def pseudo_label_task(bundle: str, cohort_url: str, subjects: list[int]) -> np.ndarray:
    """`pseudo_labels` in a Ray task of one CPU; its result stays in the object store for the arm (f) tasks."""
    torch.set_num_threads(1)
    return pseudo_labels(bundle, cohort_url, subjects)
