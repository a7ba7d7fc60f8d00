"""GPU training benchmark: a few hundred bf16 steps of every stage of the cascade on one GPU.

    python benchmarks/train_gpu.py [--preset paper] [--steps 200] [--warmup 10] [--budget-s 120]

Each stage runs its loss function from `factory.train.vae`, `.teacher` or `.diffusion` (its recipe's volume term
included) with AdamW,
gradient clipping and (for the diffusion models) EMA, under bf16 autocast, on random tensors of the right shapes
(data loading is not measured). Prints one JSON object: per stage, steps/s, samples/s, peak GPU
memory and the parameter count. Exits with a message (status 2) when no CUDA GPU is present.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from functools import partial

import torch

from factory.models.build import build_model, count_parameters
from factory.models.conditioning import CLINICAL_SCALARS
from factory.models.schedulers import training_scheduler
from factory.presets import Preset, get_preset, get_recipe
from factory.train import diffusion, teacher, vae
from factory.train.config import StageConfig
from factory.train.objectives import dice_ce
from factory.vocabulary import DIAGNOSES


def frame_batch(preset: Preset, size: int, device: str) -> dict[str, torch.Tensor]:
    """Random frames in [-1, 1], random masks, half of the frames labeled, and ED frames."""
    shape = (size, 1, *preset.geometry.shape)
    return {"image": torch.rand(shape, device=device) * 2 - 1, "ed_image": torch.rand(shape, device=device) * 2 - 1,
            "mask": torch.randint(0, preset.vae.num_classes, (size, *preset.geometry.shape), device=device),
            "labeled": torch.arange(size, device=device) % 2 == 0}


def latent_batch(preset: Preset, size: int, device: str) -> dict[str, torch.Tensor]:
    """Random scaled latents / residuals with their conditions."""
    latent = (size, *preset.latent_shape)
    return {"x0": torch.randn(latent, device=device), "z_ed": torch.randn(latent, device=device),
            "slice_mask": torch.ones(size, preset.geometry.n_slices, dtype=torch.bool, device=device),
            "diagnosis": torch.randint(0, len(DIAGNOSES), (size,), device=device),
            "scalars": torch.randn(size, len(CLINICAL_SCALARS), device=device),
            "missing": torch.zeros(size, dtype=torch.bool, device=device),
            "vendor": torch.zeros(size, dtype=torch.long, device=device),  # no vendor token: its null id
            "volumes": torch.rand(size, 2, device=device) * 200,  # LV and myocardial volume targets (ml)
            "phase": torch.rand(size, device=device) * 200}


def benchmark(model: torch.nn.Module, objective: Callable[[], dict[str, torch.Tensor]], steps: int, warmup: int,
              lr: float, ema: bool, budget_s: float) -> dict:
    """Time `steps` optimizer steps of `objective` (after `warmup` untimed ones), stopping early after `budget_s`."""
    from diffusers.training_utils import EMAModel

    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr)
    average = EMAModel(params, decay=0.999, foreach=True) if ema else None
    torch.cuda.reset_peak_memory_stats()

    def step() -> float:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = objective()["loss"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        if average is not None:
            average.step(params)
        return loss

    for _ in range(warmup):
        step()
    torch.cuda.synchronize()
    start = time.perf_counter()
    done = 0
    while done < steps and (done % 10 or time.perf_counter() - start < budget_s):
        loss = step()
        done += 1
    torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    return {"steps_per_s": round(done / seconds, 3), "timed_steps": done, "seconds": round(seconds, 1),
            "peak_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2),
            "parameters": count_parameters(model), "final_loss": float(loss.detach())}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="paper")
    parser.add_argument("--steps", type=int, default=200, help="timed steps per stage")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--budget-s", type=float, default=120.0,
                        help="stop a stage's timed loop after this many seconds (checked every 10 steps)")
    parser.add_argument("--stages", default="vae,teacher,anatomy,motion")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("train_gpu.py: no CUDA GPU found; this benchmark needs one (the test suite does not)", file=sys.stderr)
        return 2
    torch.backends.cudnn.benchmark = True
    torch.backends.cuda.matmul.allow_tf32 = True
    preset, device = get_preset(args.preset), "cuda"
    recipe = get_recipe(preset.name)
    scheduler = training_scheduler(preset.diffusion)
    seg_loss = dice_ce()
    results: dict = {"device": torch.cuda.get_device_name(), "preset": preset.name, "precision": "bf16 autocast",
                     "torch": torch.__version__, "max_steps": args.steps, "stages": {}}
    with torch.device(device):  # initialise the weights on the GPU (the paper anatomy UNet has 0.8 G parameters)
        frozen_vae = build_model(preset, "vae").eval().requires_grad_(False)
    for stage in args.stages.split(","):
        size = recipe[stage].batch_size
        with torch.device(device):
            model = build_model(preset, stage).train()
        if stage in ("vae", "teacher"):
            batch = frame_batch(preset, size, device)
            weights = recipe[stage].loss
            objective = (partial(vae.losses, model, batch, seg_loss, weights, weights.kl) if stage == "vae"
                         else partial(teacher.losses, model, frozen_vae, batch, seg_loss, weights))
        else:
            batch = latent_batch(preset, size, device)
            weights = recipe[stage].loss
            volume = (diffusion.VolumeTerm(frozen_vae, {"latent_scale": 1.0, "residual_scale": 1.0},
                                           preset.geometry.voxel_ml, weights) if weights.volume else None)
            objective = partial(diffusion.losses, diffusion.DENOISERS[stage], model, scheduler, batch,
                                StageConfig.cond_drop, volume)
        stats = benchmark(model, objective, args.steps, args.warmup, recipe[stage].lr,
                          ema=stage in ("anatomy", "motion"), budget_s=args.budget_s)
        results["stages"][stage] = {"batch_size": size, "samples_per_s": round(stats["steps_per_s"] * size, 2),
                                    **stats}
        print(f"{stage}: {json.dumps(results['stages'][stage])}", file=sys.stderr, flush=True)
        del model, batch, objective
        torch.cuda.empty_cache()
    print(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
