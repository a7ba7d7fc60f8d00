"""Held-out reconstruction quality: per-class Dice of decoded masks and image PSNR, over all workers."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from monai.metrics import DiceMetric, PSNRMetric

from factory.presets import LABEL_MAP
from factory.train.data import CohortFrames
from factory.train.loop import StageRun

CLASSES = [LABEL_MAP[str(k)] for k in range(1, len(LABEL_MAP))]  # RV, MYO, LV


@torch.no_grad()
def reconstruction_metrics(run: StageRun, cohort: CohortFrames, pairs: np.ndarray, batch_size: int,
                           reconstruct: Callable[[dict[str, torch.Tensor]], tuple[torch.Tensor, torch.Tensor]],
                           ) -> dict[str, float]:
    """`dice_RV`, `dice_MYO`, `dice_LV` (labeled frames only) and `psnr` (dB, range [-1, 1]) of
    `reconstruct(batch) -> (image, logits)` on this worker's share `pairs`, pooled over workers."""
    dice = DiceMetric(include_background=False, reduction="none", num_classes=len(LABEL_MAP))
    psnr = PSNRMetric(max_val=2.0, reduction="none")
    # sums: dice per class, dice counts per class, psnr, frames
    totals = torch.zeros(2 * len(CLASSES) + 2, dtype=torch.float64)
    for start in range(0, len(pairs), batch_size):
        batch = run.to_device(cohort.read(pairs[start:start + batch_size]))
        with run.autocast():
            image, logits = reconstruct(batch)
        scores = dice(y_pred=logits.argmax(1, keepdim=True), y=batch["mask"][:, None]).cpu().double()
        scores = scores[batch["labeled"].cpu()]
        valid = ~scores.isnan()
        totals[:len(CLASSES)] += scores.nan_to_num().sum(0)
        totals[len(CLASSES):2 * len(CLASSES)] += valid.sum(0)
        totals[-2] += psnr(image.float().clamp(-1, 1), batch["image"]).double().sum().cpu()
        totals[-1] += len(image)
    totals = run.all_sum(totals)
    n = len(CLASSES)
    metrics = {f"dice_{name}": float(totals[i] / totals[n + i]) if totals[n + i] else float("nan")
               for i, name in enumerate(CLASSES)}
    return metrics | {"psnr": float(totals[-2] / totals[-1]) if totals[-1] else float("nan")}
