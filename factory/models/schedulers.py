"""Noise schedulers (diffusers) built from a preset's DiffusionConfig.

Training uses DDPM's forward process; sampling uses DDIM, DPM-Solver++ or UniPC with the same betas
and prediction type, with "trailing" timestep spacing so the first sampling step starts from pure noise.
"""

from __future__ import annotations

from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler, UniPCMultistepScheduler
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from factory.presets import DiffusionConfig

SAMPLERS: tuple[str, ...] = ("ddim", "dpm++", "unipc")


def _schedule(cfg: DiffusionConfig) -> dict:
    """Arguments shared by every scheduler: one noise schedule for training and sampling."""
    return {"num_train_timesteps": cfg.num_train_timesteps, "beta_start": cfg.beta_start,
            "beta_end": cfg.beta_end, "beta_schedule": cfg.beta_schedule,
            "prediction_type": cfg.prediction_type}


def training_scheduler(cfg: DiffusionConfig) -> DDPMScheduler:
    """DDPM scheduler for `add_noise` during training (latents are not clipped)."""
    return DDPMScheduler(**_schedule(cfg), clip_sample=False)


def sampling_scheduler(cfg: DiffusionConfig, kind: str = "ddim", steps: int | None = None) -> SchedulerMixin:
    """A DDIM, DPM-Solver++ (2nd order) or UniPC (bh2, 2nd order) scheduler with `steps` (default
    cfg.sample_steps) timesteps set; a sampler calls `set_timesteps` again before every reverse diffusion."""
    if kind == "ddim":
        scheduler = DDIMScheduler(**_schedule(cfg), clip_sample=False, set_alpha_to_one=True,
                                  timestep_spacing="trailing")
    elif kind == "dpm++":
        scheduler = DPMSolverMultistepScheduler(**_schedule(cfg), algorithm_type="dpmsolver++",
                                                solver_order=2, timestep_spacing="trailing")
    elif kind == "unipc":  # 2nd order is the UniPC paper's choice for guided sampling
        scheduler = UniPCMultistepScheduler(**_schedule(cfg), solver_order=2, solver_type="bh2",
                                            timestep_spacing="trailing")
    else:
        raise ValueError(f"unknown sampler {kind!r}; choose one of {SAMPLERS}")
    scheduler.set_timesteps(steps or cfg.sample_steps)
    return scheduler
