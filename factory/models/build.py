"""Build every model of the cascade for a preset (wrap in `with torch.device("meta"):` to size only)."""

from __future__ import annotations

from torch import nn

from factory.models.teacher import ResidualMotionTeacher
from factory.models.unets import AnatomyUNet, MotionUNet
from factory.models.vae import DualDecoderVAE
from factory.presets import Preset

MODEL_NAMES: tuple[str, ...] = ("vae", "teacher", "anatomy", "motion")


def build_models(preset: Preset) -> dict[str, nn.Module]:
    """The four networks of the cascade, freshly initialised, keyed by MODEL_NAMES."""
    return {
        "vae": DualDecoderVAE(preset.vae),
        "teacher": ResidualMotionTeacher(preset.vae.latent_channels, preset.teacher_channels),
        "anatomy": AnatomyUNet(preset),
        "motion": MotionUNet(preset),
    }


def count_parameters(module: nn.Module) -> int:
    """Number of trainable parameters (works on the meta device)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)
