"""argparse `type=` helpers for numeric options: a bad value becomes argparse's one-line usage error (exit 2)."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable


def _number(text: str, kind: type[int] | type[float], bound: str, ok: Callable[[float], bool]) -> int | float:
    """`text` as a finite `kind` for which `ok` holds, else an ArgumentTypeError saying `kind` and `bound`."""
    try:
        value = kind(text)
    except ValueError:
        value = None
    if value is None or not math.isfinite(value) or not ok(value):
        noun = "an integer" if kind is int else "a number"
        raise argparse.ArgumentTypeError(f"must be {noun} {bound}, got {text!r}")
    return value


def positive_int(text: str) -> int:
    """An integer >= 1: a count of subjects, steps, workers or items per batch."""
    return _number(text, int, ">= 1", lambda v: v >= 1)


def non_negative_int(text: str) -> int:
    """An integer >= 0: a seed or a number of retries."""
    return _number(text, int, ">= 0", lambda v: v >= 0)


def worker_range(text: str) -> tuple[int, int]:
    """`N` (a fixed pool of N actors) or `MIN-MAX` (an autoscaling pool of MIN to MAX), 1 <= MIN <= MAX."""
    low, sep, high = text.partition("-")
    try:
        bounds = (positive_int(low), positive_int(high)) if sep else (positive_int(text),) * 2
    except argparse.ArgumentTypeError:
        bounds = None
    if bounds is None or bounds[0] > bounds[1]:
        raise argparse.ArgumentTypeError(f"must be N or MIN-MAX with 1 <= MIN <= MAX, got {text!r}")
    return bounds


def positive_float(text: str) -> float:
    """A finite number > 0: a resource share such as CPUs per worker."""
    return _number(text, float, "> 0", lambda v: v > 0)


def non_negative_float(text: str) -> float:
    """A finite number >= 0: a guidance scale or GPUs per worker (0 = none)."""
    return _number(text, float, ">= 0", lambda v: v >= 0)
