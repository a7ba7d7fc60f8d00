"""The sampler: classifier-free guidance per stage (one UNet branch at guidance 1), and measured-value tolerances."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from factory.bundle import load_bundle
from factory.data.clinical import label_volumes_ml
from factory.errors import InputError
from factory.models.conditioning import CLINICAL_SCALARS
from factory.models.schedulers import sampling_scheduler
from factory.presets import get_preset
from factory.record import cycle_phase
from factory.sample.job import DEMO_BUNDLE
from factory.sample.keyframes import interpolate, keyframes
from factory.sample.pipeline import CinePipeline, SamplerSettings
from factory.sample.plan import make_plan
from factory.sample.tolerance import Bound, parse_tolerance


@pytest.fixture(scope="module")
def pipeline() -> CinePipeline:
    return CinePipeline.from_bundle(load_bundle(DEMO_BUNDLE, stages=("vae", "anatomy", "motion")),
                                    SamplerSettings(steps=2))


def counted(model: torch.nn.Module, batches: list[int]):
    """`model` that records the batch size of every call."""
    def call(x, *args, **kwargs):
        batches.append(x.shape[0])
        return model(x, *args, **kwargs)
    return call


@pytest.mark.parametrize("guidance, branches", [(1.0, 1), (3.0, 2), (0.0, 2)])
def test_guidance_one_runs_the_conditional_branch_only(pipeline, guidance, branches):
    rows = make_plan(3, get_preset("tiny"), seed=0, frames=4)
    cond = pipeline.conditions(rows)
    batches: list[int] = []
    noise = pipeline.noise(list(rows["seed"]), 0)
    x = pipeline.denoise(counted(pipeline.anatomy, batches), noise, cond, guidance, 2)
    assert batches == [branches * 3] * 2 and x.shape == noise.shape
    if guidance == 1.0:  # the same result as both branches combined at a scale of (almost exactly) 1
        both = pipeline.denoise(pipeline.anatomy, noise, cond, 1.0 + 1e-7, 2)
        torch.testing.assert_close(x, both, rtol=1e-4, atol=1e-4)


def test_anatomy_and_motion_guidance_and_steps_are_separate(pipeline, monkeypatch):
    rows = make_plan(1, get_preset("tiny"), seed=1, frames=3)
    seen: list[tuple[float, int]] = []
    original = CinePipeline.denoise
    monkeypatch.setattr(CinePipeline, "denoise",
                        lambda self, model, noise, cond, guidance, steps, **extra:
                        seen.append((guidance, steps)) or original(self, model, noise, cond, guidance, steps, **extra))
    monkeypatch.setattr(pipeline, "settings", SamplerSettings(steps=1, guidance=2.0, motion_guidance=1.0,
                                                              max_gate_attempts=1))
    pipeline(rows)
    assert seen == [(2.0, 1), (1.0, 1)], "motion steps default to the anatomy's"
    seen.clear()
    monkeypatch.setattr(pipeline, "settings", SamplerSettings(steps=2, motion_steps=1, max_gate_attempts=1))
    pipeline(rows)
    assert seen == [(3.0, 2), (3.0, 1)]


@pytest.mark.parametrize("text, expected", [
    ("", {}),
    ("ef=5", {"ef": Bound(5.0, False)}),
    ("ef=5, edv=10%,esv=7.5", {"ef": Bound(5.0, False), "edv": Bound(10.0, True), "esv": Bound(7.5, False)}),
])
def test_tolerance_strings(text, expected):
    assert parse_tolerance(text) == expected


@pytest.mark.parametrize("text, message", [
    ("ef", "expected NAME=LIMIT"), ("mass=3", "expected NAME=LIMIT"), ("ef=abc", "not a number"),
    ("ef=-1", "finite number > 0"), ("ef=0", "finite number > 0"), ("ef=inf", "finite number > 0"),
    ("ef=5,ef=3", "given twice"),
])
def test_bad_tolerance_strings_are_refused(text, message):
    with pytest.raises(InputError, match=message):
        parse_tolerance(text)


def test_bound_is_absolute_or_relative():
    assert Bound(5, False).allows(60, 64.9) and not Bound(5, False).allows(60, 65.1)
    assert Bound(10, True).allows(200, 219) and not Bound(10, True).allows(200, 221)
    assert not Bound(10, True).allows(200, float("nan"))


def generated(pipeline, monkeypatch, tolerance: str, attempts: int = 3):
    monkeypatch.setattr(pipeline, "settings", SamplerSettings(steps=1, max_gate_attempts=2, tolerance=tolerance,
                                                              max_motion_attempts=attempts))
    out = pipeline(make_plan(2, get_preset("tiny"), seed=4, frames=3))
    return pd.DataFrame([g.row for g in out]), [g.subject for g in out]


def test_tolerance_resampling_is_bounded_deterministic_and_flagged(pipeline, monkeypatch):
    table, subjects = generated(pipeline, monkeypatch, "ef=0.001,esv=0.001")  # never reachable
    assert (table["motion_attempts"] == 3).all() and not table["within_tolerance"].any()
    assert len(table) == 2, "rows that miss the tolerance are kept"
    again, subjects_again = generated(pipeline, monkeypatch, "ef=0.001,esv=0.001")
    pd.testing.assert_frame_equal(table, again)
    for a, b in zip(subjects, subjects_again):
        np.testing.assert_array_equal(a.image, b.image)
    loose, _ = generated(pipeline, monkeypatch, "ef=100,edv=1000%")
    assert (loose["motion_attempts"] == 1).all() and loose["within_tolerance"].all()
    plain, _ = generated(pipeline, monkeypatch, "")
    assert "within_tolerance" not in plain and "motion_attempts" not in plain
    first = table.drop(columns=["motion_attempts", "within_tolerance"])
    assert not first.equals(plain), "the resampled motion differs from the first attempt"


def test_motion_attempts_use_their_own_noise(pipeline):
    rows = make_plan(1, get_preset("tiny"), seed=2, frames=3)
    cond = pipeline.conditions(rows)
    z_ed = pipeline.noise(list(rows["seed"]), 0)
    first, second = (pipeline.sample_motion(rows, cond, z_ed, attempt)[0] for attempt in (0, 1))
    assert not torch.equal(first, second)
    torch.testing.assert_close(first, pipeline.sample_motion(rows, cond, z_ed, 0)[0], rtol=0, atol=0)


@pytest.mark.parametrize("kind", ["ddim", "dpm++", "unipc"])
def test_one_scheduler_instance_serves_every_call(kind):
    """The scheduler goes in as an instance and its timesteps are set per call: a reused multistep solver
    (its history from an earlier call reset) gives exactly what a fresh one gives, in the steps asked for."""
    bundle = load_bundle(DEMO_BUNDLE, stages=("vae", "anatomy", "motion"))
    scheduler = sampling_scheduler(bundle.preset.diffusion, kind, steps=9)
    pipeline = CinePipeline.from_bundle(bundle, SamplerSettings(scheduler=kind), scheduler=scheduler)
    assert pipeline.scheduler is scheduler
    rows = make_plan(2, get_preset("tiny"), seed=6, frames=3)
    cond, noise = pipeline.conditions(rows), pipeline.noise(list(rows["seed"]), 0)
    first, again = (pipeline.denoise(pipeline.anatomy, noise, cond, 3.0, 3) for _ in range(2))
    assert len(scheduler.timesteps) == 3
    fresh = CinePipeline.from_bundle(bundle, SamplerSettings(scheduler=kind))
    torch.testing.assert_close(first, again, rtol=0, atol=0)
    torch.testing.assert_close(first, fresh.denoise(fresh.anatomy, noise, cond, 3.0, 3), rtol=0, atol=0)


@pytest.mark.parametrize("frames, es, k", [(25, 9, 6), (25, 9, 2), (30, 12, 8), (10, 8, 3), (4, 2, 2)])
def test_keyframes_hold_es_and_the_last_frame_and_at_most_k(frames, es, k):
    keys = keyframes(cycle_phase(frames, es), es, k)
    assert es in keys and frames - 1 in keys and len(keys) <= k and keys == sorted(set(keys)) and keys[0] >= 1


@pytest.mark.parametrize("k", [0, 24, 40])
def test_keyframes_zero_or_covering_the_cycle_are_every_frame(k):
    assert keyframes(cycle_phase(25, 9), 9, k) == list(range(1, 25))


def test_one_keyframe_is_refused():
    with pytest.raises(InputError, match="at least 2"):
        SamplerSettings(motion_keyframes=1)


def test_interpolation_is_linear_in_phase_and_keeps_the_keyframes():
    phase = cycle_phase(12, 4)
    keys = keyframes(phase, 4, 4)
    truth = torch.from_numpy(np.where(phase <= 100, phase, 200 - phase)).float()[:, None] * torch.ones(1, 3)
    sampled = torch.where(torch.isin(torch.arange(12), torch.tensor(keys))[:, None], truth, torch.nan)
    sampled[0] = 0.0
    out = interpolate(sampled, phase, keys)
    torch.testing.assert_close(out[keys], truth[keys])
    assert torch.isfinite(out).all()
    # piecewise linear truth with a kink at ES, which is a keyframe: reproduced exactly between keyframes
    torch.testing.assert_close(out, truth)


def test_motion_keyframes_denoise_k_frames_and_keep_the_es_residual(pipeline, monkeypatch):
    rows = make_plan(2, get_preset("tiny"), seed=3, frames=8)
    cond = pipeline.conditions(rows)
    z_ed = pipeline.noise(list(rows["seed"]), 0)
    every = pipeline.sample_motion(rows, cond, z_ed)
    batches: list[int] = []
    monkeypatch.setattr(pipeline, "settings", SamplerSettings(steps=2, motion_keyframes=3))
    monkeypatch.setattr(pipeline, "motion", counted(pipeline.motion, batches))
    keyed = pipeline.sample_motion(rows, cond, z_ed)
    assert batches == [2 * 3 * 2] * 2, "2 subjects x 3 keyframes x 2 guidance branches, per step"
    for row, full, fewer in zip(rows.itertuples(), every, keyed):
        keys = keyframes(cycle_phase(8, int(row.es_frame)), int(row.es_frame), 3)
        torch.testing.assert_close(fewer[keys], full[keys], rtol=1e-3, atol=1e-3)
        assert not torch.allclose(fewer, full), "the frames between keyframes are interpolated, not denoised"


def test_added_rician_noise_reads_back_as_its_level():
    from factory.data.noise import add_rician_noise, noise_level

    flat = np.full((6, 12, 48, 48), 0.2, np.float32)  # a bright, flat image: the added noise is all the estimate sees
    for level in (0.017, 0.042):
        noisy = add_rician_noise(flat, level, np.random.default_rng(1))
        assert noise_level(noisy[0]) == pytest.approx(level, rel=0.1)
        assert noisy.min() >= -1 and noisy.max() <= 1
    np.testing.assert_array_equal(add_rician_noise(flat, 0.03, np.random.default_rng(1)),
                                  add_rician_noise(flat, 0.03, np.random.default_rng(1)))
    background = add_rician_noise(np.full((1, 4, 32, 32), -1.0, np.float32), 0.03, np.random.default_rng(1))
    assert background.mean() > -1, "no signal: Rician noise is positive (as a magnitude image's is)"


@pytest.mark.parametrize("text, message", [("B", "expected VENDOR=LEVEL"), ("B=x", "expected VENDOR=LEVEL"),
                                           ("B=-0.1", "expected VENDOR=LEVEL"), ("=0.1", "expected VENDOR=LEVEL")])
def test_bad_image_noise_settings_are_refused(text, message):
    with pytest.raises(InputError, match=message):
        SamplerSettings(image_noise=text)


def test_image_noise_levels_are_measured_per_vendor_and_refused_for_an_absent_one_or_another_geometry(tmp_path):
    from factory.sample.image_noise import format_image_noise, measure_vendor_noise, parse_image_noise
    from store_builders import write_store

    store = write_store(tmp_path / "cohort.zarr", n=4)  # vendors B, A, B, A
    levels = parse_image_noise(measure_vendor_noise(store, ["A", "B"], "tiny"))
    assert set(levels) == {"A", "B"} and all(v >= 0 for v in levels.values())
    assert parse_image_noise(format_image_noise(levels)) == pytest.approx(levels, abs=1e-4)
    with pytest.raises(InputError, match="no frames of vendor C"):
        measure_vendor_noise(store, ["C"], "tiny")
    with pytest.raises(InputError, match="preset 'tiny' geometry, the bundle is 'paper'"):
        measure_vendor_noise(store, ["A"], "paper")


def test_image_noise_is_seeded_per_row_and_leaves_the_masks(pipeline, monkeypatch):
    rows = make_plan(2, get_preset("tiny"), seed=4, frames=3).assign(vendor="B")

    def subjects(noise: str):
        monkeypatch.setattr(pipeline, "settings", SamplerSettings(steps=1, image_noise=noise))
        return [g.subject for g in pipeline(rows)]

    plain, noisy, again = subjects(""), subjects("B=0.04"), subjects("B=0.04")
    for p, n, a in zip(plain, noisy, again):
        np.testing.assert_array_equal(p.mask, n.mask)
        np.testing.assert_array_equal(n.image, a.image)
        real = n.slice_mask
        assert 0.02 < np.std(n.image[:, real] - p.image[:, real]) < 0.1
        assert (n.image[:, ~real] == -1).all(), "padding slices stay as preprocessing pads them"
    with pytest.raises(InputError, match="no level for vendor 'B'"):
        subjects("C=0.04")


def test_motion_conditioned_on_the_anatomy_gets_its_measured_edv_and_the_requested_ef(pipeline, monkeypatch):
    rows = make_plan(2, get_preset("tiny"), seed=5, frames=3)
    names, norm = list(CLINICAL_SCALARS), pipeline.normalizer

    def volumes(scalars: torch.Tensor) -> np.ndarray:
        return scalars.numpy() * norm.std + norm.mean

    edv = np.array([80.0, 150.0])
    given, requested = volumes(pipeline.conditions(rows, edv)["scalars"]), volumes(pipeline.conditions(rows)["scalars"])
    np.testing.assert_allclose(given[:, names.index("edv_ml")], edv, rtol=1e-4)
    np.testing.assert_allclose(given[:, names.index("esv_ml")], edv * (1 - rows["ef_pct"] / 100), rtol=1e-4)
    for kept in ("ef_pct", "myo_mass_g", "n_slices"):  # the mass stays the requested heart's
        np.testing.assert_allclose(given[:, names.index(kept)], requested[:, names.index(kept)], rtol=1e-4)

    seen: list[np.ndarray] = []
    original = CinePipeline.sample_motion_within
    monkeypatch.setattr(CinePipeline, "sample_motion_within", lambda self, rows, cond, z_ed, edv:
                        seen.append(volumes(cond["scalars"])) or original(self, rows, cond, z_ed, edv))

    def generate(setting: str):
        monkeypatch.setattr(pipeline, "settings", SamplerSettings(steps=1, max_gate_attempts=1,
                                                                  motion_volumes=setting))
        return [g.subject for g in pipeline(rows)]

    plain, anatomy = generate("requested"), generate("anatomy")
    np.testing.assert_allclose(seen[0], requested, rtol=1e-4)
    measured = [label_volumes_ml(s.mask[0] * s.slice_mask[:, None, None], pipeline.spacing)["lv"] for s in anatomy]
    np.testing.assert_allclose(seen[1][:, names.index("edv_ml")], measured, rtol=1e-3)
    for p, a in zip(plain, anatomy):
        np.testing.assert_array_equal(p.image[0], a.image[0])  # the same anatomy
        assert not np.array_equal(p.image[1:], a.image[1:]), "another motion"
    with pytest.raises(InputError, match="motion volumes 'measured'"):
        SamplerSettings(motion_volumes="measured")
