"""`factory phantom`: write a procedural phantom cohort in the ACDC layout."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from factory.cli_args import non_negative_int, positive_int
from factory.data.phantom.cohort import generate_cohort


def _names(text: str) -> list[str]:
    return [item for item in text.split(",") if item.strip()]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, required=True, help="output folder (must not exist or be empty)")
    parser.add_argument("--subjects", type=positive_int, required=True, help="number of subjects")
    parser.add_argument("--seed", type=non_negative_int, default=0,
                        help="cohort seed (subject k depends on it and k only)")
    parser.add_argument("--vendors", type=_names, default=["A", "B", "C"], help="vendors in turn, e.g. A,B,C")
    parser.add_argument("--diagnoses", type=_names, default=None,
                        help="diagnoses round-robin, e.g. NOR,DCM (default: all five)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output folder")


def run(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    table = generate_cohort(args.out, args.subjects, args.seed, vendors=args.vendors, diagnoses=args.diagnoses,
                            overwrite=args.overwrite)
    seconds = time.perf_counter() - start
    print(f"wrote {len(table)} subjects to {args.out} in {seconds:.1f} s ({seconds / len(table):.2f} s/subject)")
    return 0
