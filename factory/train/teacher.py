"""Stage 2, the residual motion teacher: one Ray Train worker's loop, read top to bottom.

With the VAE frozen, the teacher maps (z_ED, z_t) to r_t such that decoding z_ED + r_t gives frame
t back. Loss = L1(decoded image, frame t) + seg * Dice+CE(decoded mask, labeled frames) + latent L1
|z_ED + r_t - z_t| + identity |r(z_ED, z_ED)| + a small magnitude penalty on r_t (weights: the
preset's recipe, `presets.TeacherLoss`). At every checkpoint: Dice and PSNR of the decoded frames of
held-out subjects; at the end: the residual scale factor (1 / std of residuals), which the motion
LDM's targets are multiplied by.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from monai.losses import DiceCELoss

from factory.bundle import load_bundle
from factory.models.teacher import ResidualMotionTeacher
from factory.models.vae import DualDecoderVAE
from factory.presets import TeacherLoss
from factory.train.frames import FrameStage
from factory.train.loop import StageRun
from factory.train.objectives import segmentation_loss


def encode_pair(vae: DualDecoderVAE, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior means (z_ED, z_t) of a batch's ED frames and frames t under the frozen VAE."""
    with torch.no_grad():
        return vae.encode(torch.cat([batch["ed_image"], batch["image"]]))[0].chunk(2)


def losses(model: torch.nn.Module, vae: DualDecoderVAE, batch: dict[str, torch.Tensor], seg_loss: DiceCELoss,
           weights: TeacherLoss) -> dict[str, torch.Tensor]:
    """The teacher objective of one batch: `loss` and its terms (one pass computes r_t and r(z_ED, z_ED))."""
    z_ed, z_t = encode_pair(vae, batch)
    r_t, r_identity = model(torch.cat([z_ed, z_ed]), torch.cat([z_t, z_ed])).float().chunk(2)
    z = z_ed + r_t
    image = F.l1_loss(vae.decode_image(z).float(), batch["image"])
    labeled = batch["labeled"]  # masks are decoded for labeled frames only: the frozen VAE allows the subset
    seg = segmentation_loss(seg_loss, vae.decode_mask_logits(z[labeled]), batch["mask"][labeled])
    latent = F.l1_loss(z, z_t.float())
    identity = r_identity.abs().mean()
    magnitude = r_t.pow(2).mean()
    loss = (image + weights.seg * seg + weights.latent * latent + weights.identity * identity
            + weights.magnitude * magnitude)
    return {"loss": loss, "image": image, "seg": seg, "latent": latent, "identity": identity, "magnitude": magnitude}


def train_loop(config: dict) -> None:
    """Train the teacher against the frozen VAE of the bundle; the final checkpoint carries `residual_scale`."""
    run = StageRun(config)
    cfg = run.cfg
    weights = TeacherLoss(**cfg.loss)
    vae = load_bundle(cfg.bundle, device=run.device, stages=("vae",)).vae.requires_grad_(False)
    teacher = ResidualMotionTeacher(run.preset.vae.latent_channels, run.preset.teacher_channels).to(run.device)
    model, optimizer, _ = run.setup(teacher)
    frames = FrameStage.open(run, with_ed=True)

    def reconstruct(batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        z_ed, z_t = encode_pair(vae, batch)
        z = z_ed + teacher(z_ed, z_t)
        return vae.decode_image(z), vae.decode_mask_logits(z)

    def residual(batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return teacher(*encode_pair(vae, batch))

    for step in run.steps():
        batch = frames.batch(step)
        with run.autocast():
            terms = losses(model, vae, batch, frames.seg_loss, weights)
        run.optimize(step, terms["loss"], optimizer)
        run.record(step, **terms)

        if run.at_checkpoint(step):
            frames.checkpoint(step, teacher, reconstruct, "residual_scale", residual)
