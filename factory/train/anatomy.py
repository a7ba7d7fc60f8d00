"""Stage 3, the static anatomy LDM: one Ray Train worker's loop, read top to bottom.

Epsilon (or v) prediction on scaled ED latents from the latent store, augmented copies included
(in-plane affine, clinical values recomputed), with a slice-mask input channel and cross-attention
on diagnosis + normalised clinical scalars, dropped for 10 % of samples (classifier-free guidance).
EMA weights are what the bundle ships; the held-out denoising loss is measured with them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler

from factory.models.schedulers import training_scheduler
from factory.models.unets import AnatomyUNet
from factory.train.latents import latent_samplers
from factory.train.loop import StageRun
from factory.train.objectives import condition_drop, noisy_sample
from factory.train.validation import heldout_denoising_loss

VAL_BATCHES = 4


def losses(model: torch.nn.Module, scheduler: DDPMScheduler, batch: dict[str, torch.Tensor],
           cond_drop: float) -> dict[str, torch.Tensor]:
    """The denoising objective of one batch of ED latents."""
    x_t, t, target = noisy_sample(scheduler, batch["x0"])
    drop = condition_drop(batch["missing"], cond_drop)
    prediction = model(x_t, t, batch["slice_mask"], batch["diagnosis"], batch["scalars"], drop)
    return {"loss": F.mse_loss(prediction.float(), target)}


def train_loop(config: dict) -> None:
    """Train the anatomy denoiser on the latent store; the checkpoints carry its EMA weights."""
    run = StageRun(config)
    cfg = run.cfg
    unet = AnatomyUNet(run.preset).to(run.device)
    optimizer = torch.optim.AdamW(unet.parameters(), lr=cfg.lr)
    ema = run.ema(unet)
    run.resume(modules={"anatomy": unet}, optimizers={"anatomy": optimizer}, emas={"anatomy": ema})
    model = run.prepare(unet)
    scheduler = training_scheduler(run.preset.diffusion)

    sampler, held_out = latent_samplers(cfg, run.rank, run.world)
    rng = run.rng(0)  # step 0 is never trained: its generator draws the fixed held-out batches
    val_batches = [held_out.anatomy_batch(rng, cfg.batch_size) for _ in range(VAL_BATCHES)]

    def predict(batch: dict[str, torch.Tensor], x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return unet(x_t, t, batch["slice_mask"], batch["diagnosis"], batch["scalars"], batch["missing"])

    for step in run.steps():
        batch = run.to_device(sampler.anatomy_batch(run.rng(step), cfg.batch_size))
        with run.autocast():
            terms = losses(model, scheduler, batch, cfg.cond_drop)
        run.optimize(step, terms["loss"], optimizer, ema)
        run.record(step, **terms)

        if run.at_checkpoint(step):
            metrics = {"val_loss": heldout_denoising_loss(run, scheduler, unet, ema, val_batches, predict)}
            run.checkpoint(step, metrics)
