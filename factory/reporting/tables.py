"""Markdown tables and their cells, as both reports write them (missing values as n/a)."""

from __future__ import annotations

import math


def num(value, digits: int = 3) -> str:
    """A number for a table cell; n/a for missing values."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def md_table(headers: list[str], rows: list[list]) -> list[str]:
    """Markdown table lines; float cells to three decimals, missing ones as n/a."""
    return ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers),
            *("| " + " | ".join(num(v) for v in row) + " |" for row in rows)]
