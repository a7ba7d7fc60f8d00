"""Stage 1, the dual-decoder VAE: one Ray Train worker's loop, read top to bottom.

Loss = L1(image) + seg * Dice+CE(mask, labeled frames only) + annealed tiny KL (weights: the preset's
recipe, `presets.VAELoss`). Unlabeled frames (ACDC's non-ED/ES frames) shape the latent through the
image decoder only. No perceptual loss (its pretrained weights are not available offline) and no
adversarial loss. At every checkpoint: per-class Dice and PSNR on held-out subjects; at the end: the
latent scale factor.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from monai.losses import DiceCELoss

from factory.models.vae import DualDecoderVAE
from factory.presets import VAELoss
from factory.train.frames import FrameStage
from factory.train.loop import StageRun
from factory.train.objectives import kl_divergence, segmentation_loss


def kl_weight(step: int, steps: int, weights: VAELoss) -> float:
    """Linear warm-up of the KL weight over the first `kl_warmup` of the run."""
    return weights.kl * min(1.0, step / max(1.0, weights.kl_warmup * steps))


def losses(model: torch.nn.Module, batch: dict[str, torch.Tensor], seg_loss: DiceCELoss, weights: VAELoss,
           kl_w: float) -> dict[str, torch.Tensor]:
    """The VAE objective of one batch at KL weight `kl_w`: `loss` and its terms."""
    out = model(batch["image"])
    l1 = F.l1_loss(out["image"].float(), batch["image"])
    labeled = batch["labeled"]
    seg = segmentation_loss(seg_loss, out["logits"][labeled], batch["mask"][labeled])
    kl = kl_divergence(out["mu"], out["logvar"])
    return {"loss": l1 + weights.seg * seg + kl_w * kl, "l1": l1, "seg": seg, "kl": kl}


def train_loop(config: dict) -> None:
    """Train the VAE; the final checkpoint carries `latent_scale` = 1 / std of training latents."""
    run = StageRun(config)
    cfg = run.cfg
    weights = VAELoss(**cfg.loss)
    vae = DualDecoderVAE(run.preset.vae).to(run.device)
    model, optimizer, _ = run.setup(vae)
    frames = FrameStage.open(run)

    def latent(batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return vae.encode(batch["image"])[0]  # the posterior mean

    def reconstruct(batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        mu = latent(batch)
        return vae.decode_image(mu), vae.decode_mask_logits(mu)

    for step in run.steps():
        batch = frames.batch(step)
        with run.autocast():
            terms = losses(model, batch, frames.seg_loss, weights, kl_weight(step, cfg.steps, weights))
        run.optimize(step, terms["loss"], optimizer)
        run.record(step, **terms)

        if run.at_checkpoint(step):
            frames.checkpoint(step, vae, reconstruct, "latent_scale", latent)
