"""The cascade's networks: shapes, conditioning and CFG drop, schedulers, paper sizes (meta device)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from factory.errors import InputError
from factory.models.build import build_model, build_models, count_parameters
from factory.models.conditioning import (CLINICAL_SCALARS, ClinicalEncoder, ClinicalNormalizer, PhaseEmbedding,
                                         diagnosis_ids)
from factory.models.schedulers import sampling_scheduler, training_scheduler
from factory.models.summary import shape_rows
from factory.presets import get_preset
from factory.vocabulary import DIAGNOSES

TINY = get_preset("tiny")
LATENT = TINY.latent_shape
B = 2


@pytest.fixture(scope="module")
def tiny_models() -> dict[str, torch.nn.Module]:
    torch.manual_seed(0)
    models = build_models(TINY)
    # MONAI zero-initialises the UNets' output and attention projections; perturb every all-zero
    # weight so that conditioning changes the output of an untrained network.
    with torch.no_grad():
        for name in ("anatomy", "motion", "teacher"):
            for p in models[name].parameters():
                if p.ndim > 1 and not p.any():
                    p.normal_(0.0, 0.05)
    return models


def conditions(batch: int = B) -> tuple[torch.Tensor, ...]:
    slice_mask = torch.zeros(batch, LATENT[1], dtype=torch.bool)
    slice_mask[:, 2:10] = True
    return slice_mask, diagnosis_ids(["NOR", "DCM"][:batch]), torch.randn(batch, len(CLINICAL_SCALARS))


def test_vae_shapes_and_ranges() -> None:
    torch.manual_seed(0)
    vae = build_model(TINY, "vae")
    x = torch.rand(B, 1, *TINY.geometry.shape) * 2 - 1
    out = vae(x)
    assert out["mu"].shape[1:] == LATENT == (4, 12, 16, 16)
    assert out["logvar"].shape == out["z"].shape == out["mu"].shape
    assert out["image"].shape == x.shape
    assert out["logits"].shape == (B, 4, *TINY.geometry.shape)
    assert all(torch.isfinite(v).all() for v in out.values())
    assert out["image"].abs().max() <= 1.0
    vae.eval()
    with torch.no_grad():
        out = vae(x)
    assert torch.equal(out["z"], out["mu"])  # eval mode decodes the posterior mean


def test_teacher_starts_at_zero_and_learns_from_the_difference() -> None:
    teacher = build_model(TINY, "teacher")
    z_ed, z_t = torch.randn(B, *LATENT), torch.randn(B, *LATENT)
    r = teacher(z_ed, z_t)
    assert r.shape == (B, *LATENT)
    assert not r.any()  # zero output convolution: r = 0 (the identity) before training
    r.sub(z_t - z_ed).square().mean().backward()
    assert teacher.head.conv.weight.grad.abs().sum() > 0


def test_teacher_output_shape_after_training_noise(tiny_models) -> None:
    z = torch.randn(B, *LATENT)
    r = tiny_models["teacher"](z, z + 0.1 * torch.randn_like(z))
    assert r.shape == (B, *LATENT) and torch.isfinite(r).all() and r.any()


def test_anatomy_unet_drop_changes_output(tiny_models) -> None:
    unet = tiny_models["anatomy"].eval()
    slice_mask, diagnosis, scalars = conditions()
    x, t = torch.randn(B, *LATENT), torch.tensor([10, 500])
    with torch.no_grad():
        kept = unet(x, t, slice_mask, diagnosis, scalars, torch.zeros(B, dtype=torch.bool))
        dropped = unet(x, t, slice_mask, diagnosis, scalars, torch.ones(B, dtype=torch.bool))
        default = unet(x, t, slice_mask, diagnosis, scalars)
        scalar_t = unet(x, torch.tensor(10), slice_mask, diagnosis, scalars)
    assert kept.shape == (B, *LATENT) and torch.isfinite(kept).all()
    assert not torch.allclose(kept, dropped)
    assert torch.equal(kept, default)  # drop=None keeps every condition
    assert torch.allclose(scalar_t[0], kept[0], atol=1e-5)  # a 0-d timestep is broadcast


def test_motion_unet_drop_and_phase(tiny_models) -> None:
    unet = tiny_models["motion"].eval()
    slice_mask, diagnosis, scalars = conditions()
    x, z_ed, t = torch.randn(B, *LATENT), torch.randn(B, *LATENT), torch.tensor([10, 500])
    phase = torch.tensor([0.0, 100.0])
    with torch.no_grad():
        def run(drop: bool, phase: torch.Tensor) -> torch.Tensor:
            return unet(x, t, slice_mask, diagnosis, scalars, torch.full((B,), drop), z_ed=z_ed, phase=phase)
        kept, dropped, shifted = run(False, phase), run(True, phase), run(False, phase + 50)
    assert kept.shape == (B, *LATENT) and torch.isfinite(kept).all()
    assert not torch.allclose(kept, dropped)
    assert not torch.allclose(kept, shifted)


def test_slice_mask_must_match_latent(tiny_models) -> None:
    _, diagnosis, scalars = conditions()
    with pytest.raises(ValueError, match="slice mask"):
        tiny_models["anatomy"](torch.randn(B, *LATENT), torch.tensor([1, 1]),
                               torch.ones(B, LATENT[1] - 1, dtype=torch.bool), diagnosis, scalars)


def test_clinical_encoder_null_branch_ignores_the_condition() -> None:
    encoder = ClinicalEncoder(TINY.context_dim)
    diagnosis = torch.tensor([0, 3])
    scalars = torch.randn(2, len(CLINICAL_SCALARS))
    drop = torch.tensor([True, True])
    a, b = encoder(diagnosis, scalars, drop), encoder(diagnosis.flip(0), scalars * 3, drop)
    assert a.shape == (2, 4, TINY.context_dim)
    assert torch.allclose(a, b) and torch.allclose(a[0], a[1])
    kept = encoder(diagnosis, scalars, torch.tensor([False, True]))
    assert not torch.allclose(kept[0], a[0]) and torch.allclose(kept[1], a[1])


def test_phase_embedding_is_periodic() -> None:
    token = PhaseEmbedding(TINY.context_dim)(torch.tensor([0.0, 200.0, 100.0]))
    assert token.shape == (3, 1, TINY.context_dim)
    assert torch.allclose(token[0], token[1], atol=1e-4) and not torch.allclose(token[0], token[2])


def test_diagnosis_ids() -> None:
    assert diagnosis_ids(list(DIAGNOSES)).tolist() == list(range(len(DIAGNOSES)))
    with pytest.raises(InputError, match="unknown diagnosis"):
        diagnosis_ids(["XYZ"])


def test_clinical_normalizer_round_trip() -> None:
    rng = np.random.default_rng(0)
    table = pd.DataFrame({name: rng.normal(100, 20, 30) for name in CLINICAL_SCALARS})
    table.loc[3, "myo_mass_g"] = np.nan  # ignored by fit
    normalizer = ClinicalNormalizer().fit(table)
    restored = ClinicalNormalizer.from_dict(json.loads(json.dumps(normalizer.to_dict())))
    rows = table.dropna()
    values = normalizer.transform(rows)
    assert values.shape == (len(rows), len(CLINICAL_SCALARS)) and values.dtype == torch.float32
    assert torch.equal(values, restored.transform({k: rows[k].to_numpy() for k in CLINICAL_SCALARS}))
    assert values.mean(0).abs().max() < 0.5 and torch.allclose(values.std(0), torch.ones(5), atol=0.2)
    one = restored.transform({k: float(rows[k].iloc[0]) for k in CLINICAL_SCALARS})
    assert torch.allclose(one[0], values[0])
    with pytest.raises(InputError, match="NaN"):
        normalizer.transform(table)
    with pytest.raises(InputError, match="lacks columns"):
        normalizer.transform(table.drop(columns="ef_pct"))
    with pytest.raises(InputError, match="fitted for scalars"):
        ClinicalNormalizer.from_dict({**normalizer.to_dict(), "scalars": ["edv_ml"]})
    with pytest.raises(InputError, match="not fitted"):
        ClinicalNormalizer().transform(table)


@pytest.mark.parametrize("kind", ["ddim", "dpm++", "unipc"])
def test_sampler_recovers_x0_with_an_oracle(kind: str) -> None:
    """add_noise then `steps` sampler steps with the exact prediction (noise or velocity) give back x0."""
    cfg = TINY.diffusion
    torch.manual_seed(0)
    x0 = torch.randn(B, *LATENT)
    train = training_scheduler(cfg)
    t = torch.tensor([0, cfg.num_train_timesteps - 1])
    noise = torch.randn_like(x0)
    noisy = train.add_noise(x0, noise, t)
    abar = train.alphas_cumprod[t].view(-1, 1, 1, 1, 1)
    assert torch.allclose(noisy, abar.sqrt() * x0 + (1 - abar).sqrt() * noise, atol=1e-5)

    sampler = sampling_scheduler(cfg, kind, steps=8)
    assert len(sampler.timesteps) == 8 and int(sampler.timesteps[0]) == cfg.num_train_timesteps - 1
    assert torch.equal(sampler.alphas_cumprod, train.alphas_cumprod)  # one noise schedule
    x = torch.randn_like(x0) * sampler.init_noise_sigma
    for step in sampler.timesteps:
        a = sampler.alphas_cumprod[step]
        eps = (x - a.sqrt() * x0) / (1 - a).sqrt()
        oracle = a.sqrt() * eps - (1 - a).sqrt() * x0 if cfg.prediction_type == "v_prediction" else eps
        x = sampler.step(oracle, step, x).prev_sample
    assert torch.allclose(x, x0, atol=1e-4)
    with pytest.raises(ValueError, match="unknown sampler"):
        sampling_scheduler(cfg, "euler")


def test_paper_preset_sizes_on_meta_device() -> None:
    paper = get_preset("paper")
    with torch.device("meta"):
        models = build_models(paper)
    assert tuple(models["anatomy"].unet.block_out_channels) == (256, 512, 1024)
    widths = [m.out_channels for m in models["vae"].encoder.modules() if isinstance(m, torch.nn.Conv3d)]
    assert {32, 64, 128} <= set(widths)
    assert count_parameters(models["anatomy"]) > 100_000_000
    rows = {name: (params, outputs) for name, params, _, outputs in shape_rows(paper)}
    assert "latent 1x8x16x24x24" in rows["vae"][1]  # (C, Z, H/8, W/8): slices are never downsampled
    assert paper.latent_shape == (8, 16, 24, 24)


def test_models_command_prints_every_model(capsys) -> None:
    from factory.cli import main

    assert main(["models", "--preset", "tiny"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in ("vae", "teacher", "anatomy", "motion", "4x12x16x16"))
