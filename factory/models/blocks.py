"""Shared MONAI building blocks of the VAE and the teacher: anisotropic (in-plane only) resampling."""

from __future__ import annotations

from collections.abc import Sequence

from monai.networks.blocks import Convolution, ResidualUnit, UpSample
from torch import nn

# Slices are 10 mm apart: every resampling acts on (H, W) only, never on Z, and full- and
# intermediate-resolution kernels are in-plane (1, 3, 3) (as nnU-Net does while the in-plane spacing
# is under half the slice spacing; CPU conv3d backward is also several times slower for 3 x 3 x 3).
IN_PLANE: tuple[int, int, int] = (1, 2, 2)
PLANAR_KERNEL: tuple[int, int, int] = (1, 3, 3)
NORM_GROUPS = 8
ACT = (nn.SiLU, {})


def norm(channels: int) -> tuple[str, dict]:
    """GroupNorm spec (batch-size independent, unlike BatchNorm) for a MONAI block."""
    if channels % NORM_GROUPS:
        raise ValueError(f"channel width {channels} is not a multiple of {NORM_GROUPS} (GroupNorm groups)")
    return ("group", {"num_groups": NORM_GROUPS})


def res_block(in_ch: int, out_ch: int, kernel: Sequence[int] | int = 3) -> ResidualUnit:
    """Two conv-GroupNorm-SiLU units with a residual connection (1x1 conv when widths differ)."""
    return ResidualUnit(3, in_ch, out_ch, kernel_size=kernel, subunits=2, act=ACT, norm=norm(out_ch))


def conv(in_ch: int, out_ch: int, kernel: Sequence[int] | int = 3) -> Convolution:
    """A plain 'same' convolution (no norm, no activation)."""
    return Convolution(3, in_ch, out_ch, kernel_size=kernel, conv_only=True)


def down(in_ch: int, out_ch: int) -> Convolution:
    """Halve H and W with a strided conv; Z untouched."""
    return Convolution(3, in_ch, out_ch, strides=IN_PLANE, kernel_size=PLANAR_KERNEL, conv_only=True)


def up(in_ch: int, out_ch: int) -> nn.Sequential:
    """Double H and W (nearest neighbour, no checkerboard) then a conv; Z untouched."""
    upsample = UpSample(3, scale_factor=IN_PLANE, mode="nontrainable", interp_mode="nearest", align_corners=None)
    return nn.Sequential(upsample, conv(in_ch, out_ch, PLANAR_KERNEL))
