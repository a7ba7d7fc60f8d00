"""Loss terms shared by several stage loops (each loop writes out its own weighted sum; the weights are the
preset's recipe, `presets.VAELoss` / `TeacherLoss`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from monai.losses import DiceCELoss

from factory.vocabulary import LV, MYO

if TYPE_CHECKING:
    from diffusers import DDPMScheduler


def dice_ce() -> DiceCELoss:
    """Dice + cross-entropy of 4-class logits against an integer mask (ACDC labels)."""
    return DiceCELoss(to_onehot_y=True, softmax=True)


def segmentation_loss(loss_fn: DiceCELoss, logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Dice+CE of the labeled frames' logits (B, K, ...) against their masks (B, ...); a graph-connected
    zero when a batch has no labeled frame (keeps every DDP rank's graph identical)."""
    if len(logits) == 0:
        return logits.sum() * 0.0
    return loss_fn(logits.float(), mask[:, None])


def kl_divergence(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(q(z|x) || N(0, 1)), mean per latent element."""
    return 0.5 * (mu.float().pow(2) + logvar.float().exp() - 1.0 - logvar.float()).mean()


def noisy_sample(scheduler: DDPMScheduler, x0: torch.Tensor, generator: torch.Generator | None = None,
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Forward diffusion of x0 at random timesteps: (x_t, t, target), target = noise (or velocity for v)."""
    if generator is None:
        noise = torch.randn_like(x0)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (x0.shape[0],), device=x0.device)
    else:  # reproducible draws (validation): a CPU generator, moved to x0's device
        noise = torch.randn(x0.shape, generator=generator).to(x0.device)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (x0.shape[0],), generator=generator).to(x0.device)
    x_t = scheduler.add_noise(x0, noise, t)
    if scheduler.config.prediction_type == "v_prediction":
        return x_t, t, scheduler.get_velocity(x0, noise, t)
    return x_t, t, noise


def condition_drop(missing: torch.Tensor, probability: float) -> torch.Tensor:
    """Samples trained unconditionally: a random `probability` of them (for classifier-free guidance)
    and those whose clinical values are unknown."""
    return (torch.rand(missing.shape, device=missing.device) < probability) | missing


def predicted_x0(scheduler: DDPMScheduler, x_t: torch.Tensor, t: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
    """The clean sample a denoiser's output (v or epsilon) implies at (x_t, t)."""
    alpha_bar = scheduler.alphas_cumprod.to(x_t.device)[t].float().view(-1, *([1] * (x_t.ndim - 1)))
    if scheduler.config.prediction_type == "v_prediction":
        return alpha_bar.sqrt() * x_t - (1 - alpha_bar).sqrt() * output
    return (x_t - (1 - alpha_bar).sqrt() * output) / alpha_bar.sqrt()


def soft_volumes_ml(logits: torch.Tensor, slice_mask: torch.Tensor, voxel_ml: float) -> torch.Tensor:
    """Differentiable (B, 2) LV and myocardial volumes (ml) of mask logits (B, K, Z, H, W): softmax probabilities
    summed over the real slices. On hard masks it is the voxel count, as `data.clinical.label_volumes_ml`."""
    probs = logits.float().softmax(1)[:, [LV, MYO]] * slice_mask[:, None, :, None, None].to(torch.float32)
    return probs.sum(dim=(2, 3, 4)) * voxel_ml
