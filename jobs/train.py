"""Train the cascade on a cohort store with Ray Train and write the model bundle.

    python jobs/train.py --cohort STORE --stage all --preset tiny --out BUNDLE_DIR --workers 2

Runs the stages in order (vae, teacher, then the cohort is pre-encoded and the anatomy and motion
LDMs train from it). Stages already in --out are kept; re-running the same command resumes the
unfinished stage from its latest checkpoint. Connects to RAY_ADDRESS when set, else starts a local
Ray instance.
"""

from __future__ import annotations

import argparse
import sys

from factory.cli_args import non_negative_float, non_negative_int, positive_int
from factory.errors import exit_status
from factory.presets import PRESETS
from factory.train.runner import TrainOptions, train
from factory.vocabulary import STAGES


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cohort", required=True, help="cohort store (path or fsspec URL)")
    parser.add_argument("--stage", default="all", choices=[*STAGES, "all"])
    parser.add_argument("--preset", default="tiny", choices=sorted(PRESETS), help="model-size preset")
    parser.add_argument("--out", required=True, help="bundle directory (created, or resumed)")
    parser.add_argument("--workers", type=positive_int, default=2, help="Ray Train workers (DDP ranks) per stage")
    parser.add_argument("--gpus-per-worker", type=non_negative_float, default=0.0, help="GPUs per worker (0 = CPU)")
    parser.add_argument("--steps", type=positive_int, help="steps of every stage run (default: per preset and stage)")
    parser.add_argument("--batch-size", type=positive_int,
                        help="per-worker batch size (default: per preset and stage)")
    parser.add_argument("--checkpoint-every", type=positive_int, help="steps between checkpoints (default 250)")
    parser.add_argument("--seed", type=non_negative_int, default=0)
    parser.add_argument("--max-failures", type=non_negative_int, default=2, help="worker-group restarts per stage")
    return parser.parse_args(argv)


def run(args: argparse.Namespace) -> int:
    """Train the requested stages into --out and print the stages it holds."""
    options = TrainOptions(cohort=args.cohort, out=args.out, preset=args.preset,
                           stages=STAGES if args.stage == "all" else (args.stage,), workers=args.workers,
                           gpus_per_worker=args.gpus_per_worker, steps=args.steps, batch_size=args.batch_size,
                           checkpoint_every=args.checkpoint_every, seed=args.seed, max_failures=args.max_failures)
    config = train(options)
    print(f"bundle {args.out}: stages {list(config['stages'])}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Parse the arguments and run; a FactoryError is one `train: error:` line and exit status 2."""
    args = parse_args(argv)
    return exit_status("train", lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
