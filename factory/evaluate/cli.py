"""`factory evaluate` / `jobs/evaluate.py`: evaluate a synthetic store against the real cohort."""

from __future__ import annotations

import argparse
from pathlib import Path

from factory.cli_args import non_negative_int, positive_int
from factory.errors import InputError
from factory.evaluate.downstream import ARMS
from factory.evaluate.job import EvaluationSpec, evaluate


def arm_names(text: str) -> tuple[str, ...]:
    """`real,synthetic` -> ("real", "synthetic"): the argparse type of --arms, refusing unknown arms or none."""
    arms = tuple(a.strip() for a in text.split(",") if a.strip())
    unknown = [a for a in arms if a not in ARMS]
    if unknown:
        raise argparse.ArgumentTypeError(f"{text!r}: unknown arms {unknown}; choose one or more of {list(ARMS)}")
    if not arms:
        raise argparse.ArgumentTypeError(f"{text!r}: no arms given; choose one or more of {list(ARMS)}")
    return arms


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--synthetic", required=True, help="synthetic store to evaluate (path or fsspec URL)")
    parser.add_argument("--cohort", required=True, help="real cohort store (the generator's training data)")
    parser.add_argument("--out", required=True, help="output directory for report.json, report.md and figures")
    parser.add_argument("--test", help="held-out labeled store of other vendors for --downstream (default: the"
                                       " cohort's labeled non-train-vendor subjects, which the report flags)")
    parser.add_argument("--downstream", action="store_true", help="run the cross-vendor segmentation experiment")
    parser.add_argument("--seeds", type=positive_int, default=3, help="downstream seeds per arm (default 3)")
    parser.add_argument("--steps", type=positive_int, default=300, help="downstream training steps per arm and seed")
    parser.add_argument("--batch-size", type=positive_int, default=4, help="downstream batch size (frames)")
    parser.add_argument("--arms", type=arm_names, default="real,augmented,synthetic",
                        help=f"comma-separated downstream arms among {','.join(ARMS)}")
    parser.add_argument("--train-vendor", default="A", help="vendor whose labeled real subjects train the segmenter")
    parser.add_argument("--n-extra", type=positive_int, help="N, the extra subjects of the augmented and synthetic"
                                                             " arms (default: as many as real training subjects)")
    parser.add_argument("--i3d", help="local TorchScript video feature extractor (e.g. I3D) for the Fréchet distance"
                                      " (default: a 3D CNN trained here on the cohort)")
    parser.add_argument("--extractor-steps", type=positive_int, default=300,
                        help="training steps of the cohort extractor")
    parser.add_argument("--bootstrap", type=positive_int, default=1000, help="bootstrap resamples for the intervals")
    parser.add_argument("--seed", type=non_negative_int, default=0)
    parser.add_argument("--overwrite", action="store_true", help="replace an earlier evaluation's --out")


def spec_from_args(args: argparse.Namespace) -> EvaluationSpec:
    """The EvaluationSpec of parsed arguments; refuses an --i3d that is not a file before any work starts."""
    if args.i3d is not None and not Path(args.i3d).is_file():
        raise InputError(f"--i3d {args.i3d}: no such file (give a local TorchScript file)")
    return EvaluationSpec(synthetic=args.synthetic, cohort=args.cohort, out=args.out, test=args.test,
                          downstream=args.downstream, seeds=args.seeds, steps=args.steps, batch_size=args.batch_size,
                          arms=args.arms, train_vendor=args.train_vendor, n_extra=args.n_extra, i3d=args.i3d,
                          extractor_steps=args.extractor_steps, n_boot=args.bootstrap, seed=args.seed)


def run(args: argparse.Namespace) -> int:
    spec = spec_from_args(args)
    report = evaluate(spec, overwrite=args.overwrite)
    print(f"evaluation of {spec.synthetic} written to {spec.out}/report.md ({report['seconds']:.0f} s)")
    return 0
