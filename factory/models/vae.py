"""Dual-decoder VAE: one anisotropic 3D encoder, an image decoder and a segmentation decoder.

A frame (1, Z, H, W) maps to a latent (C, Z, H/f, W/f): only H and W are downsampled because the
slices are 10 mm apart. Every level uses in-plane (1, 3, 3) kernels except one middle block at the
latent resolution (in-plane spacing now close to the slice spacing) in the encoder and in each
decoder, whose 3 x 3 x 3 kernels let the latent of a slice see its neighbours.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from factory.models.blocks import PLANAR_KERNEL, conv, down, res_block, up
from factory.presets import VAEConfig

LOGVAR_RANGE = (-30.0, 20.0)


def level_widths(cfg: VAEConfig) -> list[int]:
    """Channel width of every resolution level, full resolution first (extra levels stay widest)."""
    n_down = int(math.log2(cfg.downsample))
    if 2 ** n_down != cfg.downsample or n_down < len(cfg.channels) - 1:
        raise ValueError(f"VAE downsample {cfg.downsample} must be a power of two >= "
                         f"2 ** (len(channels) - 1) = {2 ** (len(cfg.channels) - 1)}")
    return [cfg.channels[min(level, len(cfg.channels) - 1)] for level in range(n_down + 1)]


class Encoder(nn.Module):
    """Frame (B, 1, Z, H, W) -> (mu, logvar), each (B, C, Z, H/f, W/f)."""

    def __init__(self, cfg: VAEConfig, in_channels: int = 1) -> None:
        super().__init__()
        widths = level_widths(cfg)
        layers: list[nn.Module] = [conv(in_channels, widths[0], PLANAR_KERNEL)]
        for level, width in enumerate(widths):
            layers += [res_block(width, width, PLANAR_KERNEL) for _ in range(cfg.num_res_blocks)]
            if level < len(widths) - 1:
                layers.append(down(width, widths[level + 1]))
        layers += [res_block(widths[-1], widths[-1]), conv(widths[-1], 2 * cfg.latent_channels, 1)]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, logvar = self.net(x).chunk(2, dim=1)
        return mu, logvar.clamp(*LOGVAR_RANGE)


class Decoder(nn.Module):
    """Latent (B, C, Z, h, w) -> (B, out_channels, Z, h*f, w*f), mirror of the encoder."""

    def __init__(self, cfg: VAEConfig, out_channels: int) -> None:
        super().__init__()
        widths = level_widths(cfg)
        layers: list[nn.Module] = [conv(cfg.latent_channels, widths[-1]), res_block(widths[-1], widths[-1])]
        for level in reversed(range(len(widths))):
            layers += [res_block(widths[level], widths[level], PLANAR_KERNEL)
                       for _ in range(cfg.num_res_blocks)]
            if level > 0:
                layers.append(up(widths[level], widths[level - 1]))
        layers.append(conv(widths[0], out_channels, PLANAR_KERNEL))
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


class DualDecoderVAE(nn.Module):
    """Semi-supervised VAE of one frame: shared latent, image decoder ([-1, 1]) and mask decoder (logits)."""

    def __init__(self, cfg: VAEConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.image_decoder = Decoder(cfg, 1)
        self.mask_decoder = Decoder(cfg, cfg.num_classes)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Frame (B, 1, Z, H, W) in [-1, 1] -> posterior mean and log-variance."""
        return self.encoder(x)

    def decode_image(self, z: torch.Tensor) -> torch.Tensor:
        """Latent -> image (B, 1, Z, H, W) in [-1, 1] (tanh keeps gradients where a clamp would not)."""
        return torch.tanh(self.image_decoder(z))

    def decode_mask_logits(self, z: torch.Tensor) -> torch.Tensor:
        """Latent -> segmentation logits (B, num_classes, Z, H, W)."""
        return self.mask_decoder(z)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Encode, sample z (the mean in eval mode), decode both heads."""
        mu, logvar = self.encode(x)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar) if self.training else mu
        return {"mu": mu, "logvar": logvar, "z": z,
                "image": self.decode_image(z), "logits": self.decode_mask_logits(z)}
