"""Residual motion teacher: (z_ED, z_t) -> r_t with decode(z_ED + r_t) ~ frame t.

A small deterministic 3D UNet over latents (in-plane down/upsampling only, Z kept). It sees the
difference z_t - z_ED beside z_ED, so the identity r(z, z) = 0 only needs the difference channels
to be read as "no motion"; the output convolution starts at zero, so r = 0 before training.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from factory.models.blocks import conv, down, res_block, up


class ResidualMotionTeacher(nn.Module):
    """Deterministic residual-motion network; widths `channels`, one level per width."""

    def __init__(self, latent_channels: int, channels: Sequence[int]) -> None:
        super().__init__()
        self.stem = conv(2 * latent_channels, channels[0])
        self.encoders = nn.ModuleList(res_block(width, width) for width in channels)
        self.downs = nn.ModuleList(down(a, b) for a, b in zip(channels[:-1], channels[1:]))
        self.ups = nn.ModuleList(up(b, a) for a, b in zip(channels[:-1], channels[1:]))
        self.decoders = nn.ModuleList(res_block(2 * width, width) for width in channels[:-1])
        self.head = conv(channels[0], latent_channels)
        nn.init.zeros_(self.head.conv.weight)
        nn.init.zeros_(self.head.conv.bias)

    def forward(self, z_ed: torch.Tensor, z_t: torch.Tensor) -> torch.Tensor:
        """(B, C, Z, h, w) ED latent and frame-t latent -> residual r_t of the same shape."""
        h = self.stem(torch.cat([z_t - z_ed, z_ed], dim=1))
        skips = []
        for level, block in enumerate(self.encoders):
            h = block(h)
            if level < len(self.downs):
                skips.append(h)
                h = self.downs[level](h)
        for level in reversed(range(len(self.ups))):
            h = self.decoders[level](torch.cat([self.ups[level](h), skips[level]], dim=1))
        return self.head(h)
