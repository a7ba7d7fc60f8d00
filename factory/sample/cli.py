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
from factory.sample.image_noise import measure_vendor_noise
from factory.sample.pipeline import MOTION_VOLUMES, SamplerSettings
from factory.sample.plan import (animation_plan, assign_vendors, check_sources, check_vendors, load_plan, make_plan,
                                 parse_mix, vendor_weights)
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
    parser.add_argument("--vendors", help="scanner appearance to generate, equal split inside every diagnosis,"
                                          " e.g. B,C (default: the bundle's training cohort's vendor mix)")
    parser.add_argument("--vendor-mix", help="vendor proportions summing to 1, e.g. B=0.5,C=0.5")
    parser.add_argument("--from", dest="source", help="animate the real subjects of this cohort store instead of"
                                                      " sampling anatomies: each row keeps a subject's ED frame and"
                                                      " mask and asks for an EF drawn from its diagnosis' priors")
    parser.add_argument("--priors", help="fit clinical priors to this cohort store or CSV table"
                                         " (default: the bundled ACDC fit)")
    parser.add_argument("--frames", type=int, help="frames per cycle for every subject, 2 to the preset's maximum"
                                                   " (default: drawn)")
    parser.add_argument("--seed", type=non_negative_int, default=0, help="plan seed (every row derives its own)")
    if with_preset:
        parser.add_argument("--preset", choices=sorted(PRESETS),
                            help="preset the plan must fit (default: the --bundle's, else tiny)")


def add_sampler_arguments(parser: argparse.ArgumentParser) -> None:
    """Options that define how to sample (jobs/generate.py; a plan alone does not sample)."""
    defaults = SamplerSettings()  # the one place sampler defaults are set
    parser.add_argument("--scheduler", choices=SAMPLERS, default=defaults.scheduler, help="diffusion sampler")
    parser.add_argument("--steps", type=positive_int, default=defaults.steps,
                        help="denoising steps of the anatomy LDM (and of the motion LDM without --motion-steps)")
    parser.add_argument("--motion-steps", type=positive_int, default=defaults.motion_steps,
                        help="denoising steps of the motion LDM (default: --steps)")
    parser.add_argument("--motion-keyframes", type=non_negative_int, default=defaults.motion_keyframes,
                        help="frames per cycle the motion LDM denoises, ES and the last frame among them; the"
                             " others are interpolated in phase between them (0 = every frame)")
    parser.add_argument("--motion-volumes", choices=MOTION_VOLUMES, default=defaults.motion_volumes,
                        help="volumes the motion LDM is conditioned on: the row's requested EDV and ESV, or the"
                             " EDV measured on the sampled anatomy and the ESV that gives the requested EF with it")
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
    parser.add_argument("--noise-from", help="cohort store whose frames (unlabeled ones do) give each requested"
                                             " vendor's noise level, added to the decoded images as Rician noise"
                                             " (default: none; the VAE decoder denoises)")


def load_priors(source: str | None) -> ClinicalPriors:
    """Bundled ACDC priors, or priors fitted to a cohort store's table or a CSV table."""
    if source is None:
        return ClinicalPriors.default()
    if source.endswith(".csv"):
        return ClinicalPriors.from_csv(Path(source))
    from factory.store.reader import open_store

    return ClinicalPriors.fit(open_store(source).table.dropna(subset=["edv_ml", "ef_pct"]), source=source)


def plan_from_args(args: argparse.Namespace, bundle_config: dict) -> pd.DataFrame:
    """The plan an invocation asks for, for the bundle whose bundle.json is `bundle_config` (its preset, its vendor
    vocabulary): from --plan, or drawn from priors with --n.

    Vendors: --vendors / --vendor-mix split every diagnosis over the vendors asked for; without them, rows that
    name no vendor get the bundle's training-cohort vendor mix (bundles without a vendor token: none).
    """
    preset = get_preset(bundle_config["preset"])
    vocabulary = list(bundle_config.get("vendors") or [])
    weights = vendor_weights(args.vendors, args.vendor_mix, vocabulary, normalize=args.normalize)
    sources = None if args.source is None else source_table(args.source)
    if args.plan is not None:
        plan, source = load_plan(args.plan, preset, seed=args.seed), str(args.plan)
        if weights is not None and plan["vendor"].astype(bool).any():
            raise InputError(f"{args.plan}: the plan has a vendor column; drop --vendors / --vendor-mix or the column")
    elif args.n is None:
        raise InputError("give --n N (subjects to draw) or --plan FILE")
    elif args.source is not None:
        plan, source = animation_plan(sources, args.n, preset, seed=args.seed,
                                      priors=load_priors(args.priors), frames=args.frames), "animation plan"
        plan["vendor"] = plan["vendor"].where(plan["vendor"].isin(vocabulary), "")  # a vendor the bundle knows
    else:
        plan, source = make_plan(args.n, preset, seed=args.seed, balance=args.balance,
                                 mix=parse_mix(args.mix, normalize=args.normalize) if args.mix else None,
                                 diagnoses=args.diagnoses.split(",") if args.diagnoses else None,
                                 priors=load_priors(args.priors), frames=args.frames), "generated plan"
    counts = bundle_config.get("vendor_counts") or {}
    weights = weights or ({v: float(n) for v, n in counts.items() if n} if sum(counts.values()) else None)
    if weights is not None and (args.vendors or args.vendor_mix or not plan["vendor"].astype(bool).any()):
        plan = assign_vendors(plan, weights)
    check_vendors(plan, vocabulary, source)
    check_sources(plan, sources, source)
    return plan


def source_table(url: str) -> pd.DataFrame:
    """The metadata table of the cohort store `--from` names."""
    from factory.store.reader import open_store

    return open_store(url, kind="cohort").table


def image_noise_from_args(args: argparse.Namespace, plan: pd.DataFrame) -> str:
    """The per-vendor noise levels --noise-from measures for the plan's vendors ("" without it)."""
    if args.noise_from is None:
        return ""
    from factory.bundle import read_config

    vendors = plan["vendor"].astype(str)
    if not vendors.astype(bool).all():
        raise InputError(f"--noise-from {args.noise_from}: {int((~vendors.astype(bool)).sum())} plan rows name no"
                         " vendor, and the noise level is a vendor's; give --vendors or --vendor-mix")
    return measure_vendor_noise(args.noise_from, sorted(set(vendors)), read_config(args.bundle)["preset"])


def settings_from_args(args: argparse.Namespace, plan: pd.DataFrame) -> SamplerSettings:
    """The sampler settings of parsed arguments (their ranges are checked by argparse) for `plan`."""
    parse_tolerance(args.tolerance)  # refuses a malformed tolerance before anything runs
    return SamplerSettings(scheduler=args.scheduler, steps=args.steps, motion_steps=args.motion_steps,
                           motion_keyframes=args.motion_keyframes, motion_volumes=args.motion_volumes,
                           guidance=args.guidance,
                           motion_guidance=args.motion_guidance, max_gate_attempts=args.gate_attempts,
                           tolerance=args.tolerance, max_motion_attempts=args.tolerance_attempts,
                           image_noise=image_noise_from_args(args, plan))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """`factory plan`: write a sampling plan to inspect or edit before generating."""
    add_plan_arguments(parser)
    parser.add_argument("--bundle", type=Path, help="bundle the plan is for: its vendor vocabulary and cohort"
                                                    " vendor mix (default: none, plans without vendors)")
    parser.add_argument("--out", type=Path, required=True, help="plan file to write (.csv or .parquet)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out file")


def run(args: argparse.Namespace) -> int:
    """Write the plan the arguments ask for to --out."""
    check_output(args.out, overwrite=args.overwrite, accept=(), is_file=True)
    config = {"preset": args.preset or "tiny"}
    if args.bundle is not None:
        from factory.bundle import read_config

        config = read_config(args.bundle)
        if args.preset not in (None, config["preset"]):
            raise InputError(f"--preset {args.preset} differs from the bundle's preset {config['preset']!r}")
    plan = plan_from_args(args, config)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    if args.out.suffix == ".parquet":
        plan.to_parquet(args.out, index=False)
    else:
        plan.to_csv(args.out, index=False)
    print(f"wrote {len(plan)} plan rows to {args.out}")
    return 0
