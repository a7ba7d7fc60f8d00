"""`factory models`: build a preset's cascade and print parameter counts and tensor shapes.

Models are built on the meta device (no memory, no compute), and one forward pass per model on
meta tensors checks that the shapes chain: frame -> latent -> residual -> noise predictions.
"""

from __future__ import annotations

import argparse

import torch

from factory.models.build import build_models, count_parameters
from factory.models.conditioning import CLINICAL_SCALARS
from factory.presets import PRESETS, Preset, get_preset


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", default="tiny", choices=sorted(PRESETS), help="model-size preset")
    parser.add_argument("--batch", type=int, default=1, help="batch size of the shape check")


def shape_rows(preset: Preset, batch: int = 1) -> list[tuple[str, int, str, str]]:
    """(model, parameters, input shapes, output shape) per model, from meta-device forward passes."""
    with torch.device("meta"):
        models = build_models(preset)
        frame = torch.empty(batch, 1, *preset.geometry.shape)
        out = models["vae"](frame)
        latent = out["mu"]
        z = latent.shape[2]
        slice_mask = torch.ones(batch, z, dtype=torch.bool)
        diagnosis = torch.zeros(batch, dtype=torch.long)
        scalars = torch.empty(batch, len(CLINICAL_SCALARS))
        drop = torch.zeros(batch, dtype=torch.bool)
        timesteps = torch.zeros(batch, dtype=torch.long)
        residual = models["teacher"](latent, latent)
        eps_anatomy = models["anatomy"](latent, timesteps, slice_mask, diagnosis, scalars, drop)
        eps_motion = models["motion"](residual, timesteps, slice_mask, diagnosis, scalars, drop,
                                      z_ed=latent, phase=torch.empty(batch))
    if latent.shape[1:] != preset.latent_shape:
        raise RuntimeError(f"VAE latent {tuple(latent.shape[1:])} != preset latent {preset.latent_shape}")

    def fmt(*tensors: torch.Tensor) -> str:
        return " + ".join("x".join(map(str, t.shape)) for t in tensors)

    clin = f"clinical {batch}x{len(CLINICAL_SCALARS)}"
    return [
        ("vae", count_parameters(models["vae"]), fmt(frame),
         f"latent {fmt(latent)}; image {fmt(out['image'])}; logits {fmt(out['logits'])}"),
        ("teacher", count_parameters(models["teacher"]), fmt(latent, latent), fmt(residual)),
        ("anatomy", count_parameters(models["anatomy"]), f"{fmt(latent)} + slice mask {fmt(slice_mask)}; {clin}",
         fmt(eps_anatomy)),
        ("motion", count_parameters(models["motion"]),
         f"{fmt(residual, latent)} + slice mask {fmt(slice_mask)}; {clin} + phase {batch}", fmt(eps_motion)),
    ]


def run(args: argparse.Namespace) -> int:
    preset = get_preset(args.preset)
    rows = shape_rows(preset, args.batch)
    print(f"preset {preset.name}: frame (Z, H, W) = {preset.geometry.shape}, "
          f"latent (C, Z, h, w) = {preset.latent_shape}, context tokens of width {preset.context_dim}")
    print(f"{'model':<8} {'parameters':>13} {'fp32 MB':>8}  input -> output")
    for name, params, inputs, outputs in rows:
        print(f"{name:<8} {params:>13,} {params * 4 / 2**20:>8.1f}  {inputs} -> {outputs}")
    total = sum(row[1] for row in rows)
    print(f"{'total':<8} {total:>13,} {total * 4 / 2**20:>8.1f}")
    return 0
