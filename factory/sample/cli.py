"""Command-line pieces shared by `factory plan` and jobs/generate.py: plan and sampler options."""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from factory.cli_args import non_negative_float, non_negative_int, positive_int
from factory.data.priors import ClinicalPriors
from factory.errors import InputError
from factory.models.schedulers import SAMPLERS
from factory.outputs import check_output
from factory.presets import PRESETS, get_preset
from factory.sample.pipeline import SamplerSettings
from factory.sample.plan import load_plan, make_plan, parse_mix
from factory.sample.tolerance import parse_tolerance


def add_plan_arguments(parser: argparse.ArgumentParser, with_preset: bool = True) -> None:
    """Options that define what to generate: a drawn plan or an explicit plan file.

    `with_preset`: offer --preset (`factory plan`); a job that samples a bundle takes the bundle's preset instead.
    """
    parser.add_argument("--n", type=positive_int, help="number of subjects to draw (ignored with --plan)")
    parser.add_argument("--plan", type=Path, help="explicit plan (.csv / .parquet): diagnosis, edv_ml, ef_pct or"
                                                  " esv_ml, n_slices, frames, optional seed and es_frame")
    parser.add_argument("--balance", choices=["diagnosis"], help="equal counts per diagnosis")
    parser.add_argument("--mix", help="diagnosis proportions summing to 1, e.g. NOR=0.2,HCM=0.4,RV=0.4")
    parser.add_argument("--normalize", action="store_true", help="rescale --mix weights that do not sum to 1")
    parser.add_argument("--diagnoses", help="equal split over these diagnoses only, e.g. HCM,RV")
    parser.add_argument("--priors", help="fit clinical priors to this cohort store or CSV table"
                                         " (default: the bundled ACDC fit)")
    parser.add_argument("--frames", type=int, help="frames per cycle for every subject, 2 to the preset's maximum"
                                                   " (default: drawn)")
    parser.add_argument("--seed", type=non_negative_int, default=0, help="plan seed (every row derives its own)")
    if with_preset:
        parser.add_argument("--preset", default="tiny", choices=sorted(PRESETS), help="preset the plan must fit")


def add_sampler_arguments(parser: argparse.ArgumentParser) -> None:
    """Options that define how to sample (jobs/generate.py; a plan alone does not sample)."""
    defaults = SamplerSettings()  # the one place sampler defaults are set
    parser.add_argument("--scheduler", choices=SAMPLERS, default=defaults.scheduler, help="diffusion sampler")
    parser.add_argument("--steps", type=positive_int, default=defaults.steps,
                        help="denoising steps per diffusion stage")
    parser.add_argument("--guidance", type=non_negative_float, default=defaults.guidance,
                        help="classifier-free guidance scale of the anatomy LDM (1 = conditional branch only)")
    parser.add_argument("--motion-guidance", type=non_negative_float, default=defaults.motion_guidance,
                        help="classifier-free guidance scale of the motion LDM (1 = conditional branch only)")
    parser.add_argument("--gate-attempts", type=positive_int, default=defaults.max_gate_attempts,
                        help="anatomy resampling bound of the quality gate (and of an EDV tolerance)")
    parser.add_argument("--tolerance", default=defaults.tolerance,
                        help="resample until the measured values lie within these bounds of the requested ones,"
                             " e.g. ef=5,edv=10%% (EF points, ml, or %% of the request); rows that never get there"
                             " are kept with within_tolerance = false")
    parser.add_argument("--tolerance-attempts", type=positive_int, default=defaults.max_motion_attempts,
                        help="motion resampling bound of an ESV / EF tolerance")


def load_priors(source: str | None) -> ClinicalPriors:
    """Bundled ACDC priors, or priors fitted to a cohort store's table or a CSV table."""
    if source is None:
        return ClinicalPriors.default()
    if source.endswith(".csv"):
        return ClinicalPriors.from_csv(Path(source))
    from factory.store.reader import open_store

    return ClinicalPriors.fit(open_store(source).table.dropna(subset=["edv_ml", "ef_pct"]), source=source)


def plan_from_args(args: argparse.Namespace, preset_name: str | None = None) -> pd.DataFrame:
    """The plan an invocation asks for: from --plan, or drawn from priors with --n; `preset_name` overrides --preset."""
    preset = get_preset(preset_name or args.preset)
    if args.plan is not None:
        return load_plan(args.plan, preset, seed=args.seed)
    if args.n is None:
        raise InputError("give --n N (subjects to draw) or --plan FILE")
    return make_plan(args.n, preset, seed=args.seed, balance=args.balance,
                     mix=parse_mix(args.mix, normalize=args.normalize) if args.mix else None,
                     diagnoses=args.diagnoses.split(",") if args.diagnoses else None,
                     priors=load_priors(args.priors), frames=args.frames)


def settings_from_args(args: argparse.Namespace) -> SamplerSettings:
    """The sampler settings of parsed arguments (their ranges are checked by argparse)."""
    parse_tolerance(args.tolerance)  # refuses a malformed tolerance before anything runs
    return SamplerSettings(scheduler=args.scheduler, steps=args.steps, guidance=args.guidance,
                           motion_guidance=args.motion_guidance, max_gate_attempts=args.gate_attempts,
                           tolerance=args.tolerance, max_motion_attempts=args.tolerance_attempts)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """`factory plan`: write a sampling plan to inspect or edit before generating."""
    add_plan_arguments(parser)
    parser.add_argument("--out", type=Path, required=True, help="plan file to write (.csv or .parquet)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out file")


def run(args: argparse.Namespace) -> int:
    """Write the plan the arguments ask for to --out."""
    check_output(args.out, overwrite=args.overwrite, accept=(), is_file=True)
    plan = plan_from_args(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    if args.out.suffix == ".parquet":
        plan.to_parquet(args.out, index=False)
    else:
        plan.to_csv(args.out, index=False)
    print(f"wrote {len(plan)} plan rows to {args.out}")
    return 0
