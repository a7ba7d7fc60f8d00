"""Build every model of the cascade for a preset (wrap in `with torch.device("meta"):` to size only)."""

from __future__ import annotations

from torch import nn

from factory.models.teacher import ResidualMotionTeacher
from factory.models.unets import AnatomyUNet, MotionUNet
from factory.models.vae import DualDecoderVAE
from factory.presets import Preset
from factory.vocabulary import STAGES


def build_model(preset: Preset, name: str, n_vendors: int = 0) -> nn.Module:
    """One network of the cascade (one of STAGES: each stage trains one network), freshly initialised.

    `n_vendors`: size of the vendor vocabulary of the two LDMs (0: no vendor token).
    """
    if name == "vae":
        return DualDecoderVAE(preset.vae)
    if name == "teacher":
        return ResidualMotionTeacher(preset.vae.latent_channels, preset.teacher_channels)
    if name == "anatomy":
        return AnatomyUNet(preset, n_vendors)
    if name == "motion":
        return MotionUNet(preset, n_vendors)
    raise ValueError(f"unknown model {name!r}; choose one of {STAGES}")


def build_models(preset: Preset, n_vendors: int = 0) -> dict[str, nn.Module]:
    """The four networks of the cascade, freshly initialised, keyed by stage name."""
    return {name: build_model(preset, name, n_vendors) for name in STAGES}


def count_parameters(module: nn.Module) -> int:
    """Number of trainable parameters (works on the meta device)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)
