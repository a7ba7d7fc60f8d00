"""Evaluate a synthetic store: controllability, temporal coherence and realism, downstream cross-vendor value.

    ray job submit --working-dir . -- python jobs/evaluate.py --synthetic syn.zarr --cohort cohort.zarr \
        --out eval/ [--test heldout.zarr] [--bundle B] [--downstream --regime scarce|full] [--seeds 3] [--i3d i3d.pt]

Writes DIR/report.json and DIR/report.md. The downstream arms x seeds (and the pseudo-labelling of arm f)
run as Ray tasks on the cluster named by RAY_ADDRESS (set by `ray job submit`), or on a local Ray instance.
"""

from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

from factory.errors import exit_status  # noqa: E402
from factory.evaluate.cli import add_arguments, run  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    """Parse the arguments and evaluate; a FactoryError is one `evaluate: error:` line and exit status 2."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    return exit_status("evaluate", lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
