"""Build every model of the cascade for a preset (wrap in `with torch.device("meta"):` to size only)."""

from __future__ import annotations

from torch import nn

from factory.models.teacher import ResidualMotionTeacher
from factory.models.unets import AnatomyUNet, MotionUNet
from factory.models.vae import DualDecoderVAE
from factory.presets import Preset
from factory.vocabulary import STAGES


def build_model(preset: Preset, name: str) -> nn.Module:
    """One network of the cascade (one of STAGES: each stage trains one network), freshly initialised."""
    if name == "vae":
        return DualDecoderVAE(preset.vae)
    if name == "teacher":
        return ResidualMotionTeacher(preset.vae.latent_channels, preset.teacher_channels)
    if name == "anatomy":
        return AnatomyUNet(preset)
    if name == "motion":
        return MotionUNet(preset)
    raise ValueError(f"unknown model {name!r}; choose one of {STAGES}")


def build_models(preset: Preset) -> dict[str, nn.Module]:
    """The four networks of the cascade, freshly initialised, keyed by stage name."""
    return {name: build_model(preset, name) for name in STAGES}


def count_parameters(module: nn.Module) -> int:
    """Number of trainable parameters (works on the meta device)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)
