"""Sampling plans: one row per subject to generate, each with its own seed.

A plan is a table with columns `plan_row`, `diagnosis`, `edv_ml`, `esv_ml`, `ef_pct`, `n_slices`,
`frames`, `es_frame`, `seed`. The same plan gives the same dataset: every random choice made while
generating row k derives from that row's seed alone, so rows can be generated in any order, on
any worker, and resumed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from factory.data.priors import ClinicalPriors
from factory.errors import InputError
from factory.presets import DIAGNOSES, Preset

PLAN_COLUMNS = ("plan_row", "diagnosis", "edv_ml", "esv_ml", "ef_pct", "n_slices", "frames", "es_frame", "seed")
ES_FRACTION = 0.37  # default ES position (fraction of the cycle) when a plan file gives none


def row_seed(plan_seed: int, row: int) -> int:
    """A 63-bit seed for plan row `row`, independent of the plan's length."""
    return int(np.random.SeedSequence([plan_seed, row]).generate_state(2, np.uint64)[0] >> np.uint64(1))


def diagnosis_counts(n: int, weights: dict[str, float]) -> dict[str, int]:
    """Split n subjects over diagnoses by weight (largest remainder, ties in vocabulary order)."""
    total = sum(weights.values())
    exact = {d: n * w / total for d, w in weights.items()}
    counts = {d: int(np.floor(x)) for d, x in exact.items()}
    by_remainder = sorted(weights, key=lambda d: (-(exact[d] - counts[d]), DIAGNOSES.index(d)))
    for d in by_remainder[: n - sum(counts.values())]:
        counts[d] += 1
    return counts


def parse_mix(text: str) -> dict[str, float]:
    """`NOR=0.2,HCM=0.4` -> {"NOR": 0.2, "HCM": 0.4}; rejects unknown diagnoses and bad weights."""
    mix = {}
    for item in text.split(","):
        name, sep, value = item.partition("=")
        name = name.strip().upper()
        if not sep or name not in DIAGNOSES:
            raise InputError(f"--mix item {item!r}: expected DIAGNOSIS=WEIGHT with DIAGNOSIS in {DIAGNOSES}")
        try:
            mix[name] = float(value)
        except ValueError:
            raise InputError(f"--mix item {item!r}: weight {value!r} is not a number") from None
        if not mix[name] >= 0:
            raise InputError(f"--mix item {item!r}: weight must be >= 0")
    if sum(mix.values()) <= 0:
        raise InputError(f"--mix {text!r}: weights sum to zero")
    return mix


def make_plan(n: int, preset: Preset, *, seed: int = 0, balance: str | None = None,
              mix: dict[str, float] | None = None, diagnoses: list[str] | None = None,
              priors: ClinicalPriors | None = None, frames: int | None = None) -> pd.DataFrame:
    """Draw a plan of n subjects from per-diagnosis clinical priors.

    Diagnoses: `balance="diagnosis"` gives equal counts, `mix` explicit proportions, `diagnoses`
    an equal split over a subset (rare-disease sets); default is the priors' own diagnoses, equally.
    """
    if n < 1:
        raise InputError(f"--n must be >= 1, got {n}")
    if balance not in (None, "diagnosis"):
        raise InputError(f"--balance {balance!r}: only 'diagnosis' is supported")
    if mix is not None and diagnoses is not None:
        raise InputError("give either --mix or --diagnoses, not both")
    priors = priors or ClinicalPriors.default()
    if mix is not None:
        weights = {d: w for d, w in mix.items() if w > 0}
    else:
        names = [d.strip().upper() for d in diagnoses] if diagnoses else list(priors.diagnoses)
        unknown = [d for d in names if d not in DIAGNOSES]
        if unknown:
            raise InputError(f"unknown diagnoses {unknown}; choose from {DIAGNOSES}")
        weights = dict.fromkeys(names, 1.0)
    missing = [d for d in weights if d not in priors.diagnoses]
    if missing:
        raise InputError(f"the priors have no distribution for {missing} (they cover {list(priors.diagnoses)})")
    counts = diagnosis_counts(n, weights)
    # Interleave diagnoses (NOR, MINF, ..., NOR, ...) so any prefix of the plan is itself balanced.
    remaining = {d: counts[d] for d in DIAGNOSES if counts.get(d)}
    sequence = []
    while remaining:
        for d in list(remaining):
            sequence.append(d)
            remaining[d] -= 1
            if not remaining[d]:
                del remaining[d]
    rows = []
    for k, diagnosis in enumerate(sequence):
        seed_k = row_seed(seed, k)
        draw = priors.sample(diagnosis, np.random.default_rng(seed_k))
        t = frames or int(draw["n_frames"])
        es = int(round(draw["es_frame"] / draw["n_frames"] * t)) if frames else int(draw["es_frame"])
        rows.append({"plan_row": k, "diagnosis": diagnosis, "edv_ml": draw["edv_ml"], "esv_ml": draw["esv_ml"],
                     "ef_pct": draw["ef_pct"], "n_slices": min(int(draw["n_slices"]), preset.geometry.n_slices),
                     "frames": t, "es_frame": min(max(es, 1), t - 1), "seed": seed_k})
    return validate_plan(pd.DataFrame(rows, columns=PLAN_COLUMNS), preset, source="generated plan")


def load_plan(path: Path, preset: Preset, seed: int = 0) -> pd.DataFrame:
    """Read an explicit plan (CSV or Parquet) and complete it: ESV/EF from each other, ES frame, seeds."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: plan file does not exist")
    try:
        table = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)
    except Exception as err:
        raise InputError(f"{path}: cannot read plan ({err})") from None
    required = ["diagnosis", "edv_ml", "n_slices", "frames"]
    absent = [c for c in required if c not in table] + ([] if {"ef_pct", "esv_ml"} & set(table) else ["ef_pct or esv_ml"])
    if absent:
        raise InputError(f"{path}: plan lacks columns {absent}")
    table = table.copy()
    table["diagnosis"] = table["diagnosis"].astype(str).str.strip().str.upper()
    if "esv_ml" not in table:
        table["esv_ml"] = table["edv_ml"] * (1 - table["ef_pct"] / 100)
    if "ef_pct" not in table:
        table["ef_pct"] = 100 * (table["edv_ml"] - table["esv_ml"]) / table["edv_ml"]
    table["plan_row"] = np.arange(len(table))
    if "es_frame" not in table:
        table["es_frame"] = np.clip(np.round(table["frames"] * ES_FRACTION), 1, table["frames"] - 1)
    if "seed" not in table:
        table["seed"] = [row_seed(seed, k) for k in range(len(table))]
    return validate_plan(table[list(PLAN_COLUMNS)], preset, source=str(path))


def validate_plan(plan: pd.DataFrame, preset: Preset, source: str) -> pd.DataFrame:
    """Reject impossible rows up front, naming each by its row number (1-based, as in a spreadsheet)."""
    problems = []
    z_max, t_max = preset.geometry.n_slices, preset.max_frames
    for k, row in enumerate(plan.itertuples(index=False), start=1):
        values = row._asdict()
        bad = [c for c in ("edv_ml", "esv_ml", "ef_pct", "n_slices", "frames", "es_frame", "seed")
               if pd.isna(values[c])]
        if bad:
            problems.append(f"row {k}: missing {bad}")
            continue
        if row.diagnosis not in DIAGNOSES:
            problems.append(f"row {k}: unknown diagnosis {row.diagnosis!r} (choose from {DIAGNOSES})")
        if not row.edv_ml > 0:
            problems.append(f"row {k}: EDV {row.edv_ml} ml must be positive")
        if row.esv_ml > row.edv_ml or row.esv_ml < 0:
            problems.append(f"row {k}: ESV {row.esv_ml:.1f} ml must lie in 0..EDV ({row.edv_ml:.1f} ml)")
        if not 0 < row.ef_pct < 100:
            problems.append(f"row {k}: EF {row.ef_pct:.1f} % outside 0-100")
        elif row.edv_ml > 0 and abs(100 * (row.edv_ml - row.esv_ml) / row.edv_ml - row.ef_pct) > 1.0:
            problems.append(f"row {k}: EF {row.ef_pct:.1f} % disagrees with EDV/ESV")
        if not 1 <= row.n_slices <= z_max:
            problems.append(f"row {k}: n_slices {row.n_slices} outside 1..{z_max} of preset {preset.name}")
        if not 2 <= row.frames <= t_max:
            problems.append(f"row {k}: frames {row.frames} outside 2..{t_max} of preset {preset.name}")
        elif not 0 < row.es_frame < row.frames:
            problems.append(f"row {k}: es_frame {row.es_frame} outside 1..{int(row.frames) - 1}")
    if problems:
        shown = "\n  ".join(problems[:20]) + (f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else "")
        raise InputError(f"{source}: {len(problems)} impossible plan row(s):\n  {shown}")
    return plan.astype({"plan_row": int, "n_slices": int, "frames": int, "es_frame": int, "seed": "int64"})
