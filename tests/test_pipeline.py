"""The sampler's classifier-free guidance: one UNet branch at guidance 1, two otherwise, per stage."""

from __future__ import annotations

import pytest
import torch

from factory.bundle import load_bundle
from factory.presets import get_preset
from factory.sample.job import DEMO_BUNDLE
from factory.sample.pipeline import CinePipeline, SamplerSettings
from factory.sample.plan import make_plan


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
    x = pipeline.denoise(counted(pipeline.anatomy, batches), noise, cond, guidance)
    assert batches == [branches * 3] * 2 and x.shape == noise.shape
    if guidance == 1.0:  # the same result as both branches combined at a scale of (almost exactly) 1
        both = pipeline.denoise(pipeline.anatomy, noise, cond, 1.0 + 1e-7)
        torch.testing.assert_close(x, both, rtol=1e-4, atol=1e-4)


def test_anatomy_and_motion_guidance_are_separate(pipeline, monkeypatch):
    rows = make_plan(1, get_preset("tiny"), seed=1, frames=3)
    seen: list[float] = []
    original = CinePipeline.denoise
    monkeypatch.setattr(CinePipeline, "denoise",
                        lambda self, model, noise, cond, guidance, **extra:
                        seen.append(guidance) or original(self, model, noise, cond, guidance, **extra))
    monkeypatch.setattr(pipeline, "settings", SamplerSettings(steps=1, guidance=2.0, motion_guidance=1.0,
                                                              max_gate_attempts=1))
    pipeline(rows)
    assert seen == [2.0, 1.0]
