"""Sampling cost and quality: the paper-style loop against faster sampler settings, in one run on the same weights.

    python benchmarks/sampling.py [--bundle DIR] [--n 8] [--paper-n 2] [--frames T] [--repeats 2]
        [--device cpu|cuda] [--arm unipc:10/6:3:3 ...]

Prints JSON. Every arm samples the same plan with the same bundle:
- `paper`: the paper's code path, one frame per UNet call and one subject at a time, DDIM-30,
  guidance 3 on both stages (on the first `--paper-n` plan rows: it is slow);
- `paper_batched`: the same settings with every frame of `--batch` subjects in one UNet call (the
  same samples up to float rounding), on the whole plan: the quality reference;
- one arm per `--arm SCHEDULER:STEPS[/MOTION_STEPS]:GUIDANCE:MOTION_GUIDANCE[:KEYFRAMES]`, batched, whole
  plan (KEYFRAMES: motion keyframes per cycle, factory.sample.keyframes; 0 = every frame).
Per arm: subjects/s, UNet sample-evaluations per subject (a batch of k samples counts k), Pearson r of
requested vs measured EDV / ESV / EF, myocardial volume CV and frame-to-frame Dice (mean over subjects,
factory.evaluate.coherence), gate failures; each arm's speed-up over `paper` (fastest of `--repeats`
rounds, all arms once per round) and its ratio of UNet evaluations (load-independent).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import replace

import numpy as np
import torch

from factory.bundle import load_bundle
from factory.data.clinical import label_volumes_ml
from factory.evaluate.coherence import subject_coherence
from factory.models.schedulers import SAMPLERS
from factory.presets import get_preset
from factory.reporting.stats import pearson
from factory.sample.job import DEMO_BUNDLE
from factory.sample.pipeline import CinePipeline, SamplerSettings
from factory.sample.plan import make_plan
from factory.vocabulary import STRUCTURES

PAPER = SamplerSettings(scheduler="ddim", steps=30, guidance=3.0, motion_guidance=3.0, motion_keyframes=0)
DEFAULT_ARMS = ("unipc:10:3:3", "unipc:10:3:3:8", "unipc:8/5:3:3:6")  # every frame; the default; the cheapest kept


def parse_arm(text: str) -> SamplerSettings:
    """`unipc:8/5:3:1` -> UniPC, 8 anatomy and 5 motion steps, guidance 3 (anatomy) and 1 (motion); a fifth
    field, `unipc:8/5:3:3:6`, denoises 6 motion keyframes per cycle."""
    try:
        parts = text.split(":")
        scheduler, steps, guidance, motion_guidance, keys = parts + ["0"] * (len(parts) == 4)
        anatomy, _, motion = steps.partition("/")
        settings = SamplerSettings(scheduler=scheduler, steps=int(anatomy), motion_steps=int(motion) if motion else None,
                                   guidance=float(guidance), motion_guidance=float(motion_guidance),
                                   motion_keyframes=int(keys))
    except ValueError:
        raise SystemExit(f"--arm {text!r}: expected SCHEDULER:STEPS[/MOTION_STEPS]:GUIDANCE:MOTION_GUIDANCE[:KEYFRAMES]"
                         ) from None
    if scheduler not in SAMPLERS:
        raise SystemExit(f"--arm {text!r}: scheduler must be one of {SAMPLERS}")
    return settings


class Counted(torch.nn.Module):
    """A UNet wrapper that counts the samples it evaluates (the batch size of every call, summed)."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model, self.samples = model, 0

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        self.samples += x.shape[0]
        return self.model(x, *args, **kwargs)


def quality(generated: list, spacing: tuple[float, float, float]) -> dict:
    """Pearson r requested vs measured EDV / ESV / EF, myocardial volume CV and frame-to-frame Dice (means)."""
    rows = [g.row for g in generated]
    result = {}
    for name in ("edv_ml", "esv_ml", "ef_pct"):
        r, _ = pearson([row[f"requested_{name}"] for row in rows], [row[name] for row in rows])
        result[f"r_{name}"] = round(r, 3) if math.isfinite(r) else None  # undefined below 3 subjects
    coherence = [subject_coherence(g.subject.mask, label_volumes_ml(g.subject.mask, spacing), g.subject.phase,
                                   spacing, g.subject.slice_mask) for g in generated]
    result["myo_volume_cv"] = round(float(np.nanmean([c["myo_volume_cv"] for c in coherence])), 4)
    result["frame_dice"] = round(float(np.nanmean([[c[f"frame_dice_{s}"] for s in STRUCTURES]
                                                   for c in coherence])), 4)
    result["gate_failures"] = sum(row["status"] != "ok" for row in rows)
    return result


def run_arm(bundle, plan, settings: SamplerSettings, batch: int, device: str) -> dict:
    """Generate the plan in batches of `batch` rows with `settings`: speed, UNet evaluations and quality."""
    pipeline = CinePipeline.from_bundle(bundle, settings, device=device)
    pipeline.anatomy, pipeline.motion = Counted(pipeline.anatomy), Counted(pipeline.motion)
    generated = []
    start = time.perf_counter()
    for s in range(0, len(plan), batch):
        generated += pipeline(plan.iloc[s:s + batch])
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    evaluations = pipeline.anatomy.samples + pipeline.motion.samples
    return {"scheduler": settings.scheduler, "steps": settings.steps, "motion_steps": settings.motion_denoising_steps,
            "motion_keyframes": settings.motion_keyframes,
            "guidance": settings.guidance, "motion_guidance": settings.motion_guidance, "batch": batch,
            "frames_per_call": settings.frames_per_call, "subjects": len(plan), "seconds": round(seconds, 2),
            "subjects_per_s": round(len(plan) / seconds, 4),
            "unet_evaluations_per_subject": round(evaluations / len(plan), 1),
            "anatomy_evaluations_per_subject": round(pipeline.anatomy.samples / len(plan), 1),
            **quality(generated, pipeline.spacing)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", default=str(DEMO_BUNDLE))
    parser.add_argument("--n", type=int, default=8, help="subjects of every batched arm (balanced over diagnoses)")
    parser.add_argument("--paper-n", type=int, default=2, help="subjects of the slow paper-style arm")
    parser.add_argument("--batch", type=int, default=8, help="subjects per pipeline call of the batched arms")
    parser.add_argument("--arm", action="append", help=f"a batched arm (repeatable; default {list(DEFAULT_ARMS)})")
    parser.add_argument("--frames", type=int, help="frames per cycle of every subject (default: drawn, ~25)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=2, help="rounds of every arm; each arm's fastest is kept")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    arms = [parse_arm(a) for a in args.arm or DEFAULT_ARMS]
    bundle = load_bundle(args.bundle, device=args.device)
    plan = make_plan(args.n, get_preset(bundle.config["preset"]), seed=args.seed, balance="diagnosis",
                     frames=args.frames)
    runs = [(plan.iloc[:args.paper_n], replace(PAPER, frames_per_call=1), 1)]
    runs += [(plan, settings, args.batch) for settings in [PAPER, *arms]]
    # Every arm once per round, rounds in turn: a machine whose load changes during the run slows every arm
    # alike; the fastest round of each arm is its time (the outputs are the same in every round).
    rounds = [[run_arm(bundle, rows, settings, batch, args.device) for rows, settings, batch in runs]
              for _ in range(args.repeats)]
    results = []
    for arm_rounds in zip(*rounds):
        best = min(arm_rounds, key=lambda result: result["seconds"])
        results.append({**best, "seconds_per_round": [result["seconds"] for result in arm_rounds]})
    paper = results.pop(0)
    for result in results:
        result["speedup_vs_paper"] = round(result["subjects_per_s"] / paper["subjects_per_s"], 2)
        result["evaluations_ratio_vs_paper"] = round(paper["unet_evaluations_per_subject"]
                                                     / result["unet_evaluations_per_subject"], 2)
    print(json.dumps({
        "device": torch.cuda.get_device_name() if args.device == "cuda" else "cpu",
        "torch_threads": torch.get_num_threads(), "bundle": args.bundle, "plan_seed": args.seed,
        "mean_frames": round(float(plan["frames"].mean()), 1),
        "repeats": args.repeats, "paper": paper, "paper_batched": results[0], "arms": results[1:],
    }, indent=1))


if __name__ == "__main__":
    main()
