"""`factory evaluate` / `jobs/evaluate.py`: evaluate a synthetic store against the real cohort."""

from __future__ import annotations

import argparse
from dataclasses import fields
from pathlib import Path

from factory.cli_args import non_negative_int, positive_float, positive_int
from factory.errors import InputError
from factory.evaluate.arms import ARMS
from factory.evaluate.downstream import DownstreamSpec
from factory.evaluate.generator import REGIMES
from factory.evaluate.job import EvaluationSpec, evaluate

DEFAULTS = DownstreamSpec()


def arm_names(text: str) -> tuple[str, ...]:
    """`real,synthetic` -> ("real", "synthetic"): the argparse type of --arms, refusing unknown arms or none."""
    arms = tuple(a.strip() for a in text.split(",") if a.strip())
    unknown = [a for a in arms if a not in ARMS]
    if unknown:
        raise argparse.ArgumentTypeError(f"{text!r}: unknown arms {unknown}; choose one or more of {list(ARMS)}")
    if not arms:
        raise argparse.ArgumentTypeError(f"{text!r}: no arms given; choose one or more of {list(ARMS)}")
    return arms


def share(text: str) -> float:
    """A number strictly between 0 and 1: the share of a batch's samples drawn from an arm's extra pool."""
    value = positive_float(text)
    if value >= 1:
        raise argparse.ArgumentTypeError(f"must be a number between 0 and 1 (exclusive), got {text!r}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--synthetic", required=True, help="synthetic store to evaluate (path or fsspec URL)")
    parser.add_argument("--cohort", required=True, help="real cohort store (the generator's training data)")
    parser.add_argument("--out", required=True, help="output directory for report.json, report.md and figures")
    parser.add_argument("--test", help="held-out labeled store of other vendors for --downstream (default: the"
                                       " cohort's labeled non-train-vendor subjects, which the report flags)")
    parser.add_argument("--bundle", help="the generator's model bundle (default: the one the synthetic store names)")
    parser.add_argument("--i3d", help="local TorchScript video feature extractor (e.g. I3D) for the Fréchet distance"
                                      " (default: a 3D CNN trained here on the cohort)")
    parser.add_argument("--extractor-steps", type=positive_int, default=300,
                        help="training steps of the cohort extractor")
    parser.add_argument("--c2st-steps", type=positive_int, default=500,
                        help="training steps of the real-vs-synthetic classifier of the two-sample test")
    parser.add_argument("--bootstrap", type=positive_int, default=1000, help="bootstrap resamples for the intervals")
    parser.add_argument("--seed", type=non_negative_int, default=0)
    parser.add_argument("--overwrite", action="store_true", help="replace an earlier evaluation's --out")
    parser.add_argument("--resume", action="store_true",
                        help="reuse what an interrupted evaluation into the same --out finished: its downstream"
                             " (arm, seed) runs and its FVD, two-sample and vendor sections (any whose inputs or"
                             " settings differ are computed again)")
    group = parser.add_argument_group("downstream", "the cross-vendor segmentation experiment (only with --downstream)")
    group.add_argument("--downstream", action="store_true", help="run the cross-vendor segmentation experiment")
    group.add_argument("--regime", choices=list(REGIMES),
                       help=f"label regime (default {DEFAULTS.regime}): scarce accepts only a generator that saw at most"
                            f" {REGIMES['scarce']} labeled subjects, counted on its training cohort (give it as --cohort)")
    group.add_argument("--arms", type=arm_names, help=f"comma-separated arms among {','.join(ARMS)} (default: all)")
    group.add_argument("--seeds", type=positive_int, help=f"seeds per arm (default {DEFAULTS.seeds})")
    group.add_argument("--steps", type=positive_int,
                       help=f"step budget per arm and seed (default {DEFAULTS.steps}); validation picks the best step")
    group.add_argument("--val-every", type=positive_int,
                       help=f"steps between validations (default {DEFAULTS.val_every})")
    group.add_argument("--patience", type=positive_int,
                       help=f"validations without improvement before stopping (default {DEFAULTS.patience})")
    group.add_argument("--batch-size", type=positive_int, help=f"batch size in frames (default {DEFAULTS.batch_size})")
    group.add_argument("--train-vendor", help=f"vendor whose labeled real subjects train the segmenter"
                                              f" (default {DEFAULTS.train_vendor})")
    group.add_argument("--n-extra", type=positive_int, help="N, the subjects of every extra pool (default: as many as"
                                                            " real training subjects, at most what each pool holds)")
    group.add_argument("--extra-share", type=share, help="share of the samples drawn from an arm's extra pool"
                                                         " (default N / (real training subjects + N))")


def downstream_spec(args: argparse.Namespace) -> DownstreamSpec | None:
    """The DownstreamSpec of --downstream and its options (their defaults: DownstreamSpec's); None without it.

    A downstream option without --downstream is refused: it would do nothing."""
    given = {f.name: getattr(args, f.name) for f in fields(DownstreamSpec) if getattr(args, f.name) is not None}
    if not args.downstream:
        options = [f"--{name.replace('_', '-')}" for name in given]
        if options:
            raise InputError(f"{', '.join(options)}: only with --downstream")
        return None
    return DownstreamSpec(**given)


def spec_from_args(args: argparse.Namespace) -> EvaluationSpec:
    """The EvaluationSpec of parsed arguments; refuses an --i3d that is not a file before any work starts."""
    if args.i3d is not None and not Path(args.i3d).is_file():
        raise InputError(f"--i3d {args.i3d}: no such file (give a local TorchScript file)")
    return EvaluationSpec(synthetic=args.synthetic, cohort=args.cohort, out=args.out, test=args.test,
                          bundle=args.bundle, downstream=downstream_spec(args), i3d=args.i3d,
                          extractor_steps=args.extractor_steps, c2st_steps=args.c2st_steps, n_boot=args.bootstrap,
                          seed=args.seed)


def run(args: argparse.Namespace) -> int:
    spec = spec_from_args(args)
    report = evaluate(spec, overwrite=args.overwrite, resume=args.resume)
    print(f"evaluation of {spec.synthetic} written to {spec.out}/report.md ({report['seconds']:.0f} s)")
    return 0
