"""Held-out validation, pooled over all workers: reconstruction quality (VAE, teacher) and denoising loss (LDMs)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from monai.metrics import DiceMetric, PSNRMetric

from factory.train.data import CohortFrames
from factory.train.loop import StageRun
from factory.train.objectives import noisy_sample
from factory.vocabulary import N_LABELS, STRUCTURES

if TYPE_CHECKING:
    from diffusers import DDPMScheduler
    from diffusers.training_utils import EMAModel

CLASSES = STRUCTURES  # RV, MYO, LV


@torch.no_grad()
def reconstruction_metrics(run: StageRun, cohort: CohortFrames, pairs: np.ndarray, batch_size: int,
                           reconstruct: Callable[[dict[str, torch.Tensor]], tuple[torch.Tensor, torch.Tensor]],
                           with_ed: bool = False) -> dict[str, float]:
    """`dice_RV`, `dice_MYO`, `dice_LV` (labeled frames only) and `psnr` (dB, range [-1, 1]) of
    `reconstruct(batch) -> (image, logits)` on this worker's share `pairs`, pooled over workers."""
    dice = DiceMetric(include_background=False, reduction="none", num_classes=N_LABELS)
    psnr = PSNRMetric(max_val=2.0, reduction="none")
    # sums: dice per class, dice counts per class, psnr, frames
    totals = torch.zeros(2 * len(CLASSES) + 2, dtype=torch.float64)
    for start in range(0, len(pairs), batch_size):
        batch = run.to_device(cohort.read(pairs[start:start + batch_size], with_ed))
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


@torch.no_grad()
def heldout_denoising_loss(run: StageRun, scheduler: DDPMScheduler, module: torch.nn.Module, ema: EMAModel,
                           batches: list[dict[str, torch.Tensor]],
                           predict: Callable[[dict[str, torch.Tensor], torch.Tensor, torch.Tensor], torch.Tensor],
                           ) -> float:
    """Mean squared error of the EMA weights' `predict(batch, x_t, t)` on fixed held-out batches, noise and
    timesteps (the same at every checkpoint, so the numbers are comparable across a run)."""
    generator = torch.Generator().manual_seed(run.cfg.seed)
    params = list(module.parameters())
    ema.store(params)
    ema.copy_to(params)
    totals = torch.zeros(2, dtype=torch.float64)
    try:
        for batch in batches:
            batch = run.to_device(batch)
            x_t, t, target = noisy_sample(scheduler, batch["x0"], generator)
            with run.autocast():
                prediction = predict(batch, x_t, t)
            totals += torch.tensor([F.mse_loss(prediction.float(), target, reduction="sum").item(), target.numel()],
                                   dtype=torch.float64)
    finally:
        ema.restore(params)
    totals = run.all_sum(totals)
    return float(totals[0] / totals[1]) if totals[1] else float("nan")
