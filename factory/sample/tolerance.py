"""Tolerances on the measured clinical values of a generated subject: `ef=5,edv=10%`.

A bound is absolute (EF points, ml) or, with a `%` suffix, relative to the requested value. The
sampler resamples a row (anatomy for EDV, motion for ESV and EF) until its measured values lie
within every bound, a bounded number of times; rows that never get there are kept and flagged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from factory.errors import InputError

MEASURES = {"edv": "edv_ml", "esv": "esv_ml", "ef": "ef_pct"}  # tolerance key -> table column


@dataclass(frozen=True)
class Bound:
    """The largest allowed |measured - requested|: `limit` in the value's unit, or in % of the request."""

    limit: float
    relative: bool

    def allows(self, requested: float, measured: float) -> bool:
        """Whether `measured` lies within this bound of `requested` (a non-finite measurement never does)."""
        allowed = self.limit / 100 * abs(requested) if self.relative else self.limit
        return math.isfinite(measured) and abs(measured - requested) <= allowed


def parse_tolerance(text: str) -> dict[str, Bound]:
    """`ef=5,edv=10%` -> {"ef": Bound(5, False), "edv": Bound(10, True)}; "" -> {} (no tolerance)."""
    bounds: dict[str, Bound] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, value = item.partition("=")
        key = key.strip().lower()
        if not sep or key not in MEASURES:
            raise InputError(f"--tolerance item {item!r}: expected NAME=LIMIT or NAME=LIMIT% with NAME in"
                             f" {sorted(MEASURES)}")
        if key in bounds:
            raise InputError(f"--tolerance {text!r}: {key} is given twice")
        relative = value.strip().endswith("%")
        try:
            limit = float(value.strip().removesuffix("%"))
        except ValueError:
            raise InputError(f"--tolerance item {item!r}: {value!r} is not a number") from None
        if not (math.isfinite(limit) and limit > 0):
            raise InputError(f"--tolerance item {item!r}: the limit must be a finite number > 0")
        bounds[key] = Bound(limit, relative)
    return bounds


def within(bounds: dict[str, Bound], requested: dict[str, float], measured: dict[str, float],
           keys: tuple[str, ...] = tuple(MEASURES)) -> bool:
    """Whether every bound among `keys` holds; values are keyed by table column (edv_ml, esv_ml, ef_pct)."""
    return all(bounds[k].allows(requested[MEASURES[k]], measured[MEASURES[k]]) for k in keys if k in bounds)
