"""Stages 3 and 4, the two latent diffusion models: one Ray Train worker's loop, read top to bottom.

anatomy: the static anatomy LDM, on scaled ED latents of the latent store, augmented copies included
(in-plane affine, clinical values recomputed), with a slice-mask input channel.
motion: the residual motion LDM, on the teacher's residuals r_t (scaled) of every frame, with the
scaled ED latent and the slice mask as extra input channels and the frame's cardiac-phase token
beside the clinical tokens. Frames are independent given the phase, so a batch mixes frames of
different subjects; one noise for all frames of a subject is a sampling rule, not a training one.

Both: v (or epsilon) prediction plus, with a `DiffusionLoss.volume` weight, a volume term: the frozen
VAE's segmentation decoder reads the LV and myocardial volumes off the clean latent the output implies
(z_ED + r_t for motion), compared with those of the training latent and weighted by the signal fraction;
 cross-attention on diagnosis + normalised clinical scalars dropped
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

from factory.bundle import load_bundle, read_config
from factory.models.schedulers import training_scheduler
from factory.models.unets import AnatomyUNet, MotionUNet
from factory.train.latents import LatentSampler, latent_samplers
from factory.train.loop import StageRun
from factory.presets import DiffusionLoss
from factory.train.objectives import condition_drop, noisy_sample, predicted_x0, soft_volumes_ml
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
    x0_scale: str  # bundle.json's scale factor of the denoised target
    extra_inputs: tuple[str, ...] = ()  # batch entries passed to the UNet as keyword arguments
    offset: str | None = None  # scaled batch latent the target is a residual of (the frame's latent = offset + x0)

    def latent(self, batch: Batch, x0: torch.Tensor, scales: dict[str, float]) -> torch.Tensor:
        """The unscaled VAE latent of a (predicted) clean target x0: what the VAE decodes."""
        z = x0 / scales[self.x0_scale]
        return z if self.offset is None else z + batch[self.offset] / scales["latent_scale"]

    def predict(self, model: nn.Module, batch: Batch, x_t: torch.Tensor, t: torch.Tensor,
                drop: torch.Tensor, drop_vendor: torch.Tensor | None = None) -> torch.Tensor:
        """The model's prediction at (x_t, t) under the batch's conditions; samples in `drop` without clinical
        tokens, those in `drop_vendor` without their vendor."""
        extra = {name: batch[name] for name in self.extra_inputs}
        return model(x_t, t, batch["slice_mask"], batch["diagnosis"], batch["scalars"], drop,
                     vendor=batch["vendor"], drop_vendor=drop_vendor, **extra)


DENOISERS: dict[str, Denoiser] = {
    "anatomy": Denoiser(AnatomyUNet, LatentSampler.anatomy_batch, "latent_scale"),
    "motion": Denoiser(MotionUNet, LatentSampler.motion_batch, "residual_scale", extra_inputs=("z_ed", "phase"),
                       offset="z_ed"),
}
VOLUME_UNIT_ML = 100.0  # the volume term's errors in units of 100 ml


@dataclass
class VolumeTerm:
    """What the volume term needs: the frozen VAE, the bundle's scale factors, the voxel volume, its weights."""

    vae: nn.Module
    scales: dict[str, float]
    voxel_ml: float
    weights: DiffusionLoss

    def __call__(self, denoiser: Denoiser, scheduler: DDPMScheduler, batch: Batch, x_t: torch.Tensor,
                 t: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
        """alpha_bar-weighted |LV and myocardial volume of the implied clean latent - the training latent's| / 100 ml,
        on the `volume_samples` least noisy samples of the batch (decoding the rest would cost more than it says)."""
        alpha_bar = scheduler.alphas_cumprod.to(x_t.device)[t].float()
        chosen = alpha_bar.topk(min(self.weights.volume_samples, len(t))).indices
        part = {key: value[chosen] for key, value in batch.items()}
        z = denoiser.latent(part, predicted_x0(scheduler, x_t[chosen], t[chosen], output[chosen]), self.scales)
        volumes = soft_volumes_ml(self.vae.decode_mask_logits(z), part["slice_mask"], self.voxel_ml)
        return (alpha_bar[chosen, None] * (volumes - part["volumes"]).abs()).sum(1).mean() / VOLUME_UNIT_ML


def losses(denoiser: Denoiser, model: nn.Module, scheduler: DDPMScheduler, batch: Batch, cond_drop: float,
           volume: VolumeTerm | None = None) -> dict[str, torch.Tensor]:
    """The denoising objective of one batch of latents (`loss`), and its terms."""
    x_t, t, target = noisy_sample(scheduler, batch["x0"])
    drop = condition_drop(batch["missing"], cond_drop)
    drop_vendor = condition_drop(torch.zeros_like(batch["missing"]), cond_drop)  # independent of the clinical drop
    output = denoiser.predict(model, batch, x_t, t, drop, drop_vendor).float()
    terms = {"mse": F.mse_loss(output, target)}
    if volume is not None:
        terms["volume"] = volume(denoiser, scheduler, batch, x_t, t, output)
    return {"loss": terms["mse"] + (volume.weights.volume * terms["volume"] if volume is not None else 0.0), **terms}


def train_loop(config: dict) -> None:
    """Train the stage's denoiser on the latent store; the checkpoints carry its EMA weights."""
    run = StageRun(config)
    cfg = run.cfg
    denoiser = DENOISERS[cfg.stage]
    bundle = read_config(cfg.bundle)
    unet = denoiser.unet(run.preset, len(bundle.get("vendors") or [])).to(run.device)
    model, optimizer, ema = run.setup(unet, ema=True)
    scheduler = training_scheduler(run.preset.diffusion)
    weights = DiffusionLoss(**cfg.loss)
    volume = None
    if weights.volume:
        vae = load_bundle(cfg.bundle, device=run.device, stages=("vae",)).vae.requires_grad_(False)
        volume = VolumeTerm(vae, {name: bundle[name] for name in ("latent_scale", "residual_scale")},
                            run.preset.geometry.voxel_ml, weights)

    sampler, held_out = latent_samplers(cfg, run.rank, run.world)
    rng = run.rng(0)  # step 0 is never trained: its generator draws the fixed held-out batches
    val_batches = [denoiser.batch(held_out, rng, cfg.batch_size) for _ in range(VAL_BATCHES)]

    def predict(batch: Batch, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return denoiser.predict(unet, batch, x_t, t, batch["missing"])

    for step in run.steps():
        batch = run.to_device(denoiser.batch(sampler, run.rng(step), cfg.batch_size))
        with run.autocast():
            terms = losses(denoiser, model, scheduler, batch, cfg.cond_drop, volume)
        run.optimize(step, terms["loss"], optimizer, ema)
        run.record(step, **terms)

        if run.at_checkpoint(step):
            metrics = {"val_loss": heldout_denoising_loss(run, scheduler, unet, ema, val_batches, predict)}
            run.checkpoint(step, metrics)
