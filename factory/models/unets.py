"""The two latent diffusion UNets (MONAI DiffusionModelUNet, 3D, cross-attention conditioning).

Anatomy: noisy ED latent + slice-mask channel -> noise, context = clinical tokens (+ a vendor token).
Motion: noisy residual r_t + z_ED + slice-mask channel -> noise, context = clinical tokens (+ a vendor
token) + a phase token. `n_vendors` is the size of the bundle's vendor vocabulary (0: no vendor
token, as bundles trained before it). Each wrapper owns its encoders, so a bundle's weights of one
stage are one state dict.
"""

from __future__ import annotations

import torch
from monai.networks.nets import DiffusionModelUNet
from torch import nn

from factory.models.conditioning import ClinicalEncoder, PhaseEmbedding
from factory.presets import Preset, UNetConfig


def diffusion_unet(cfg: UNetConfig, in_channels: int, out_channels: int, context_dim: int) -> DiffusionModelUNet:
    """A 3D MONAI DiffusionModelUNet with cross-attention at cfg.attention_levels."""
    return DiffusionModelUNet(
        spatial_dims=3, in_channels=in_channels, out_channels=out_channels, channels=cfg.channels,
        attention_levels=cfg.attention_levels, num_res_blocks=cfg.num_res_blocks,
        num_head_channels=cfg.num_head_channels, norm_num_groups=cfg.norm_num_groups,
        with_conditioning=True, cross_attention_dim=context_dim)


def slice_mask_channel(slice_mask: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(B, Z) bool slice mask -> (B, 1, Z, h, w) channel matching latent `like` (B, C, Z, h, w)."""
    batch, _, z, h, w = like.shape
    if slice_mask.shape != (batch, z):
        raise ValueError(f"slice mask {tuple(slice_mask.shape)} does not match latent batch/Z {(batch, z)}")
    return slice_mask.to(like.dtype)[:, None, :, None, None].expand(batch, 1, z, h, w)


def _timesteps(t: torch.Tensor | int, like: torch.Tensor) -> torch.Tensor:
    """Scalar or (B,) timesteps -> (B,) tensor on `like`'s device (schedulers yield 0-d tensors)."""
    return torch.as_tensor(t, device=like.device).reshape(-1).expand(like.shape[0])


class AnatomyUNet(nn.Module):
    """Static anatomy LDM denoiser over ED latents, conditioned on diagnosis and clinical scalars."""

    def __init__(self, preset: Preset, n_vendors: int = 0) -> None:
        super().__init__()
        channels = preset.vae.latent_channels
        self.clinical = ClinicalEncoder(preset.context_dim, n_vendors=n_vendors)
        self.unet = diffusion_unet(preset.anatomy_unet, channels + 1, channels, preset.context_dim)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor | int, slice_mask: torch.Tensor,
                diagnosis: torch.Tensor, scalars: torch.Tensor, drop: torch.Tensor | None = None, *,
                vendor: torch.Tensor | None = None, drop_vendor: torch.Tensor | None = None) -> torch.Tensor:
        """Noise prediction for noisy ED latents x_t (B, C, Z, h, w) at timesteps t."""
        context = self.clinical(diagnosis, scalars, drop, vendor, drop_vendor)
        x = torch.cat([x_t, slice_mask_channel(slice_mask, x_t)], dim=1)
        return self.unet(x, _timesteps(t, x_t), context=context)


class MotionUNet(nn.Module):
    """Residual motion LDM denoiser over r_t, conditioned on z_ED, clinical values and phase.

    `drop` / `drop_vendor` remove the clinical / vendor tokens (classifier-free guidance); the ED latent
    and the phase are always given.
    """

    def __init__(self, preset: Preset, n_vendors: int = 0) -> None:
        super().__init__()
        channels = preset.vae.latent_channels
        self.clinical = ClinicalEncoder(preset.context_dim, n_vendors=n_vendors)
        self.phase = PhaseEmbedding(preset.context_dim)
        self.unet = diffusion_unet(preset.motion_unet, 2 * channels + 1, channels, preset.context_dim)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor | int, slice_mask: torch.Tensor,
                diagnosis: torch.Tensor, scalars: torch.Tensor, drop: torch.Tensor | None = None, *,
                z_ed: torch.Tensor, phase: torch.Tensor, vendor: torch.Tensor | None = None,
                drop_vendor: torch.Tensor | None = None) -> torch.Tensor:
        """Noise prediction for noisy residuals x_t (B, C, Z, h, w) of frames at `phase` (B,)."""
        context = torch.cat([self.clinical(diagnosis, scalars, drop, vendor, drop_vendor), self.phase(phase)], dim=1)
        x = torch.cat([x_t, z_ed, slice_mask_channel(slice_mask, x_t)], dim=1)
        return self.unet(x, _timesteps(t, x_t), context=context)
