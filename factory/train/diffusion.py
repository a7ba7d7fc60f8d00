"""Stages 3 and 4, the two latent diffusion models: one Ray Train worker's loop, read top to bottom.

anatomy: the static anatomy LDM, on scaled ED latents of the latent store, augmented copies included
(in-plane affine, clinical values recomputed), with a slice-mask input channel.
motion: the residual motion LDM, on the teacher's residuals r_t (scaled) of every frame, with the
scaled ED latent and the slice mask as extra input channels and the frame's cardiac-phase token
beside the clinical tokens. Frames are independent given the phase, so a batch mixes frames of
different subjects; one noise for all frames of a subject is a sampling rule, not a training one.

Both: v (or epsilon) prediction, cross-attention on diagnosis + normalised clinical scalars dropped
for `cond_drop` of the samples and, for bundles with a vendor vocabulary, a vendor token dropped
independently for another `cond_drop` (classifier-free guidance). EMA weights are what the bundle ships;
the held-out denoising loss is measured with them. `DENOISERS` says what differs between the two.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from factory.bundle import read_config
from factory.models.schedulers import training_scheduler
from factory.models.unets import AnatomyUNet, MotionUNet
from factory.train.latents import LatentSampler, latent_samplers
from factory.train.loop import StageRun
from factory.train.objectives import condition_drop, noisy_sample
from factory.train.validation import heldout_denoising_loss

if TYPE_CHECKING:
    from diffusers import DDPMScheduler

VAL_BATCHES = 4

Batch = dict[str, torch.Tensor]


@dataclass(frozen=True)
class Denoiser:
    """What one LDM's training differs in: its UNet, the latent store's batch it draws, the extra UNet inputs."""

    unet: type[nn.Module]
    batch: Callable[[LatentSampler, np.random.Generator, int], Batch]
    extra_inputs: tuple[str, ...] = ()  # batch entries passed to the UNet as keyword arguments

    def predict(self, model: nn.Module, batch: Batch, x_t: torch.Tensor, t: torch.Tensor,
                drop: torch.Tensor, drop_vendor: torch.Tensor | None = None) -> torch.Tensor:
        """The model's prediction at (x_t, t) under the batch's conditions; samples in `drop` without clinical
        tokens, those in `drop_vendor` without their vendor."""
        extra = {name: batch[name] for name in self.extra_inputs}
        return model(x_t, t, batch["slice_mask"], batch["diagnosis"], batch["scalars"], drop,
                     vendor=batch["vendor"], drop_vendor=drop_vendor, **extra)


DENOISERS: dict[str, Denoiser] = {
    "anatomy": Denoiser(AnatomyUNet, LatentSampler.anatomy_batch),
    "motion": Denoiser(MotionUNet, LatentSampler.motion_batch, extra_inputs=("z_ed", "phase")),
}


def losses(denoiser: Denoiser, model: nn.Module, scheduler: DDPMScheduler, batch: Batch,
           cond_drop: float) -> dict[str, torch.Tensor]:
    """The denoising objective of one batch of latents."""
    x_t, t, target = noisy_sample(scheduler, batch["x0"])
    drop = condition_drop(batch["missing"], cond_drop)
    drop_vendor = condition_drop(torch.zeros_like(batch["missing"]), cond_drop)  # independent of the clinical drop
    return {"loss": F.mse_loss(denoiser.predict(model, batch, x_t, t, drop, drop_vendor).float(), target)}


def train_loop(config: dict) -> None:
    """Train the stage's denoiser on the latent store; the checkpoints carry its EMA weights."""
    run = StageRun(config)
    cfg = run.cfg
    denoiser = DENOISERS[cfg.stage]
    unet = denoiser.unet(run.preset, len(read_config(cfg.bundle).get("vendors") or [])).to(run.device)
    model, optimizer, ema = run.setup(unet, ema=True)
    scheduler = training_scheduler(run.preset.diffusion)

    sampler, held_out = latent_samplers(cfg, run.rank, run.world)
    rng = run.rng(0)  # step 0 is never trained: its generator draws the fixed held-out batches
    val_batches = [denoiser.batch(held_out, rng, cfg.batch_size) for _ in range(VAL_BATCHES)]

    def predict(batch: Batch, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return denoiser.predict(unet, batch, x_t, t, batch["missing"])

    for step in run.steps():
        batch = run.to_device(denoiser.batch(sampler, run.rng(step), cfg.batch_size))
        with run.autocast():
            terms = losses(denoiser, model, scheduler, batch, cfg.cond_drop)
        run.optimize(step, terms["loss"], optimizer, ema)
        run.record(step, **terms)

        if run.at_checkpoint(step):
            metrics = {"val_loss": heldout_denoising_loss(run, scheduler, unet, ema, val_batches, predict)}
            run.checkpoint(step, metrics)
