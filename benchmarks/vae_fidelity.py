"""How faithful is a bundle's VAE, and how far could it go? Prints JSON.

    python benchmarks/vae_fidelity.py --bundle factory/bundles/demo [--subjects 10] [--real ../shared/data/real_frames]

- `noise_floor`: PSNR of a phantom frame against its own noise-free rendering, after the same
  preprocessing (preset geometry, [-1, 1]); a VAE that removes the noise cannot score above it
  against the noisy frame, since the difference is noise it should not reproduce.
- `phantom`: VAE reconstruction PSNR and segmentation-decoder Dice on freshly drawn phantom subjects
  (a seed never used for training), per vendor.
- `real_frames`: reconstruction PSNR of every NIfTI in the real reference folder (unlabeled).
PSNR is over the whole (Z, H, W) volume in the [-1, 1] range (peak-to-peak 2), as in training.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from unittest import mock

import numpy as np
import torch
from monai.metrics import DiceMetric, PSNRMetric

from factory.bundle import load_bundle
from factory.data import preprocess as prep
from factory.data.phantom import subject as phantom
from factory.data.readers import read_nifti_subject
from factory.record import Subject
from factory.vocabulary import N_LABELS

SEED = 90_210  # far from the training cohorts' seeds


def psnr(a: np.ndarray, b: np.ndarray) -> list[float]:
    """Per-frame PSNR of (T, Z, H, W) arrays in [-1, 1]."""
    metric = PSNRMetric(max_val=2.0, reduction="none")
    return metric(torch.as_tensor(a)[:, None].float(), torch.as_tensor(b)[:, None].float()).flatten().tolist()


def noisy_and_clean(index: int, vendor: str, preset) -> tuple[Subject, np.ndarray]:
    """A preprocessed phantom subject and its noise-free image, scaled and resampled identically."""
    noisy = phantom.generate_subject(index, SEED + index, "NOR", vendor)
    with mock.patch("factory.data.phantom.imaging.rician", lambda clean, rng: clean):
        clean = phantom.generate_subject(index, SEED + index, "NOR", vendor)
    t = noisy.n_frames
    record = noisy.to_record()
    # One subject holding both sequences back to back: the percentile scaling is shared.
    both = Subject(record.subject_id, np.concatenate([record.image, clean.image]),
                   np.concatenate([record.mask, record.mask]), np.concatenate([record.labeled, record.labeled]),
                   record.spacing_mm, record.es_frame, meta=record.meta)
    done = prep.preprocess(both, preset)
    out = Subject(done.subject_id, done.image[:t], done.mask[:t], done.labeled[:t], done.spacing_mm,
                  done.es_frame, done.slice_mask, meta=done.meta)
    return out, done.image[t:]


@torch.no_grad()
def reconstruct(vae: torch.nn.Module, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Image and mask of every frame through the VAE's posterior mean."""
    mu = vae.encode(torch.as_tensor(image)[:, None].float())[0]
    return (vae.decode_image(mu)[:, 0].clamp(-1, 1).numpy(), vae.decode_mask_logits(mu).argmax(1).numpy())


def dice(pred: np.ndarray, mask: np.ndarray) -> list[float]:
    """Mean Dice of RV, MYO, LV over frames."""
    metric = DiceMetric(include_background=False, num_classes=N_LABELS)
    return metric(torch.as_tensor(pred)[:, None], torch.as_tensor(mask)[:, None].long()).nanmean(0).tolist()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", default="factory/bundles/demo")
    parser.add_argument("--subjects", type=int, default=6, help="phantom subjects per vendor")
    parser.add_argument("--real", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "real_frames"))
    args = parser.parse_args()
    torch.set_num_threads(2)
    bundle = load_bundle(args.bundle, stages=("vae",))
    preset, vae = bundle.preset, bundle.vae
    report: dict = {"bundle": args.bundle, "subjects_per_vendor": args.subjects, "noise_floor": {}, "phantom": {}}
    for vendor in ("A", "B", "C"):
        floor, scores, dices = [], [], []
        for i in range(args.subjects):
            subject, clean = noisy_and_clean(i, vendor, preset)
            floor += psnr(subject.image, clean)
            image, pred = reconstruct(vae, subject.image)
            scores += psnr(image, subject.image)
            labeled = subject.labeled
            dices.append(dice(pred[labeled], subject.mask[labeled]))
        report["noise_floor"][vendor] = round(float(np.mean(floor)), 2)
        rv, myo, lv = np.mean(dices, axis=0)
        report["phantom"][vendor] = {"psnr": round(float(np.mean(scores)), 2), "dice_RV": round(float(rv), 3),
                                     "dice_MYO": round(float(myo), 3), "dice_LV": round(float(lv), 3)}
    real = sorted(Path(args.real).glob("*.nii*")) if Path(args.real).is_dir() else []
    report["real_frames"] = {}
    for path in real:
        subject = prep.preprocess(read_nifti_subject(path, source="real"), preset)
        report["real_frames"][path.name] = round(float(np.mean(psnr(reconstruct(vae, subject.image)[0],
                                                                    subject.image))), 2)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
