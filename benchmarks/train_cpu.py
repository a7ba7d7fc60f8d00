"""CPU training-step benchmark: where a tiny-preset training step spends its time on this machine, and what helps.

    python benchmarks/train_cpu.py [--preset tiny] [--steps 5] [--warmup 2] [--compile]

One run, the same random batches (train_gpu.py's) for every arm, fp32 as the CPU stages train:
- VAE (batch 4, as one DDP worker): torch threads 1 and 2, channels_last_3d memory format, and with
  --compile torch.compile (the first steps, which compile, are untimed);
- anatomy and motion LDMs (batch 8): without and with the recipe's volume term.
Prints one JSON object: seconds per step of every arm and its speed-up against its stage's default.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable

import torch

from factory.models.build import build_model
from factory.models.schedulers import training_scheduler
from factory.presets import get_preset, get_recipe
from factory.train import diffusion, vae
from factory.train.config import StageConfig
from factory.train.objectives import dice_ce
from train_gpu import frame_batch, latent_batch


def seconds_per_step(model: torch.nn.Module, objective: Callable[[], torch.Tensor], steps: int, warmup: int,
                     threads: int) -> float:
    """Mean wall time of an AdamW step (forward, backward, update) over `steps` after `warmup` untimed ones."""
    torch.set_num_threads(threads)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)

    def step() -> None:
        loss = objective()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for _ in range(warmup):
        step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return round((time.perf_counter() - start) / steps, 3)


def vae_arms(preset, steps: int, warmup: int, compile_too: bool) -> dict[str, float]:
    """VAE step time per arm (threads, memory format, compile)."""
    weights, seg = get_recipe(preset.name)["vae"].loss, dice_ce()
    arms = {"1 thread": (1, False, False), "2 threads": (2, False, False), "1 thread, channels_last_3d": (1, True, False)}
    if compile_too:
        arms["1 thread, torch.compile"] = (1, False, True)
    results = {}
    for name, (threads, channels_last, compiled) in arms.items():
        torch.manual_seed(0)
        model = build_model(preset, "vae").train()
        batch = frame_batch(preset, 4, "cpu")
        if channels_last:
            model = model.to(memory_format=torch.channels_last_3d)
            batch["image"] = batch["image"].contiguous(memory_format=torch.channels_last_3d)
        run = torch.compile(model) if compiled else model
        results[name] = seconds_per_step(
            model, lambda: vae.losses(run, batch, seg, weights, weights.kl)["loss"], steps, warmup + 2 * compiled,
            threads)
    return results


def ldm_arms(preset, stage: str, steps: int, warmup: int) -> dict[str, float]:
    """LDM step time without and with the recipe's volume term (1 thread, as one DDP worker)."""
    weights = get_recipe(preset.name)[stage].loss
    frozen = build_model(preset, "vae").eval().requires_grad_(False)
    scheduler = training_scheduler(preset.diffusion)
    results = {}
    for name, term in {"MSE only": None,
                       f"with volume term ({weights.volume_samples} samples)":
                           diffusion.VolumeTerm(frozen, {"latent_scale": 1.0, "residual_scale": 1.0},
                                                preset.geometry.voxel_ml, weights)}.items():
        torch.manual_seed(0)
        model = build_model(preset, stage).train()
        batch = latent_batch(preset, get_recipe(preset.name)[stage].batch_size, "cpu")
        results[name] = seconds_per_step(
            model, lambda: diffusion.losses(diffusion.DENOISERS[stage], model, scheduler, batch,
                                            StageConfig.cond_drop, term)["loss"], steps, warmup, 1)
    return results


def with_ratios(arms: dict[str, float]) -> dict:
    """Seconds per step and the speed-up of each arm against the first."""
    first = next(iter(arms.values()))
    return {name: {"s_per_step": s, "speedup": round(first / s, 2)} for name, s in arms.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--compile", action="store_true", help="also time torch.compile (compiles for minutes)")
    args = parser.parse_args()
    preset = get_preset(args.preset)
    report = {"preset": preset.name, "torch": torch.__version__, "steps": args.steps,
              "vae": with_ratios(vae_arms(preset, args.steps, args.warmup, args.compile)),
              **{stage: with_ratios(ldm_arms(preset, stage, args.steps, args.warmup)) for stage in ("anatomy", "motion")}}
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
