"""Stage 1, the dual-decoder VAE: one Ray Train worker's loop, read top to bottom.

Loss = L1(image) + SEG_WEIGHT * Dice+CE(mask, labeled frames only) + annealed tiny KL. Unlabeled
frames (ACDC's non-ED/ES frames) shape the latent through the image decoder only. No perceptual
loss (its pretrained weights are not available offline) and no adversarial loss. At every
checkpoint: per-class Dice and PSNR on held-out subjects; at the end: the latent scale factor.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from monai.losses import DiceCELoss

from factory.models.vae import DualDecoderVAE
from factory.store.reader import open_store
from factory.train.data import CohortFrames, FrameSampler, shard, split_subjects
from factory.train.loop import StageRun
from factory.train.objectives import SEG_WEIGHT, dice_ce, kl_divergence, segmentation_loss
from factory.train.validation import reconstruction_metrics

KL_WEIGHT = 1e-6  # tiny: the latent stays close to deterministic, the scale factor normalises it
KL_WARMUP = 0.5  # fraction of the run over which the KL weight ramps up from 0
VAL_FRAMES_PER_SUBJECT = 4  # ED, ES and two more labeled frames of each held-out subject
SCALE_BATCHES = 8  # batches of training frames per worker that measure the latent scale


def kl_weight(step: int, steps: int) -> float:
    """Linear warm-up of the KL weight over the first KL_WARMUP of the run."""
    return KL_WEIGHT * min(1.0, step / max(1.0, KL_WARMUP * steps))


def losses(model: torch.nn.Module, batch: dict[str, torch.Tensor], seg_loss: DiceCELoss,
           kl_w: float) -> dict[str, torch.Tensor]:
    """The VAE objective of one batch: `loss` and its terms."""
    out = model(batch["image"])
    l1 = F.l1_loss(out["image"].float(), batch["image"])
    labeled = batch["labeled"]
    seg = segmentation_loss(seg_loss, out["logits"][labeled], batch["mask"][labeled])
    kl = kl_divergence(out["mu"], out["logvar"])
    return {"loss": l1 + SEG_WEIGHT * seg + kl_w * kl, "l1": l1, "seg": seg, "kl": kl}


def train_loop(config: dict) -> None:
    """Train the VAE; the final checkpoint carries `latent_scale` = 1 / std of training latents."""
    run = StageRun(config)
    cfg = run.cfg
    vae = DualDecoderVAE(run.preset.vae).to(run.device)
    optimizer = torch.optim.AdamW(vae.parameters(), lr=cfg.lr)
    run.resume(modules={"vae": vae}, optimizers={"vae": optimizer})
    model = run.prepare(vae)

    cohort = CohortFrames(open_store(cfg.cohort))
    train_ids, val_ids = split_subjects(cohort.n_subjects, cfg.val_fraction, cfg.seed)
    sampler = FrameSampler(cohort, shard(train_ids, run.rank, run.world))
    val_pairs = shard(cohort.labeled_frames(val_ids, VAL_FRAMES_PER_SUBJECT), run.rank, run.world)
    seg_loss = dice_ce()

    def reconstruct(batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        mu = vae.encode(batch["image"])[0]
        return vae.decode_image(mu), vae.decode_mask_logits(mu)

    for step in run.steps():
        batch = run.to_device(sampler.batch(run.rng(step), cfg.batch_size))
        with run.autocast():
            terms = losses(model, batch, seg_loss, kl_weight(step, cfg.steps))
        run.optimize(step, terms["loss"], optimizer)
        run.record(step, **terms)

        if run.at_checkpoint(step):
            vae.eval()
            metrics = reconstruction_metrics(run, cohort, val_pairs, cfg.batch_size, reconstruct)
            extra = {}
            if step == cfg.steps:
                batches = (sampler.batch(run.rng(cfg.steps + k), cfg.batch_size) for k in range(1, SCALE_BATCHES + 1))
                with torch.no_grad(), run.autocast():
                    latents = (vae.encode(run.to_device(batch)["image"])[0] for batch in batches)
                    extra["latent_scale"] = 1.0 / run.global_std(latents)
            vae.train()
            run.checkpoint(step, metrics, extra)
