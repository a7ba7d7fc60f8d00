"""Mass-produce synthetic 4D cine subjects into a Zarr store with Ray Data.

    ray job submit --working-dir . -- python jobs/generate.py --n 10000 --balance diagnosis --out /data/syn.zarr

Runs on the Ray cluster named by RAY_ADDRESS (set by `ray job submit`), or starts a local one.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

from factory.bundle import read_config  # noqa: E402
from factory.cli_args import non_negative_float, positive_float, positive_int, worker_range  # noqa: E402
from factory.errors import exit_status  # noqa: E402
from factory.sample.cli import (add_plan_arguments, add_sampler_arguments, plan_from_args,  # noqa: E402
                                settings_from_args)
from factory.sample.job import DEMO_BUNDLE, RunSpec, generate  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", default=str(DEMO_BUNDLE), help="model bundle directory (default: the shipped demo)")
    parser.add_argument("--out", required=True, help="output store: local path or fsspec URL (s3://...)")
    add_plan_arguments(parser, with_preset=False)  # the preset is the bundle's
    add_sampler_arguments(parser)
    parser.add_argument("--workers", type=worker_range, default=(1, 1),
                        help="sampler actors (one model copy each): N, or MIN-MAX for a pool that grows with the"
                             " cluster (an autoscaling cluster adds nodes for it); the plan is grouped for MAX")
    parser.add_argument("--gpus-per-worker", type=non_negative_float, default=0.0,
                        help="GPUs per sampler actor (0 = CPU)")
    parser.add_argument("--cpus-per-worker", type=positive_float,
                        help="CPUs (torch threads) per sampler actor (default: CPU runs share the cluster's CPUs"
                             " equally, at most one node's; GPU runs 1)")
    parser.add_argument("--batch-size", type=positive_int, default=RunSpec.batch_size,
                        help="the most plan rows sampled together by one actor call (the plan is split into equal"
                             " groups, as many for every actor)")
    parser.add_argument("--resume", action="store_true", help="finish an interrupted run into the same --out")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    return parser.parse_args(argv)


def run(args: argparse.Namespace) -> int:
    """Draw the plan, generate it into --out, and print the run's summary and where the store is."""
    plan = plan_from_args(args, read_config(args.bundle))
    spec = RunSpec(bundle=args.bundle, out=args.out, settings=settings_from_args(args, plan), batch_size=args.batch_size,
                   min_workers=args.workers[0], workers=args.workers[1], gpus_per_worker=args.gpus_per_worker, cpus_per_worker=args.cpus_per_worker,
                   source=args.source, noise_from=args.noise_from)
    summary = generate(spec, plan, resume=args.resume, overwrite=args.overwrite)
    print(json.dumps(summary, indent=1))
    print(f"store: {Path(args.out).resolve() if '://' not in args.out else args.out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Parse the arguments and run; a FactoryError is one `generate: error:` line and exit status 2."""
    args = parse_args(argv)
    return exit_status("generate", lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
