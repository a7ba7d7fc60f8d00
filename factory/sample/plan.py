"""Sampling plans: one row per subject to generate, each with its own seed.

A plan is a table with columns `plan_row`, `diagnosis`, `edv_ml`, `esv_ml`, `ef_pct`, `n_slices`,
`frames`, `es_frame`, `seed`, `vendor` (the scanner whose appearance to generate; "" = none, the
vendor-unconditional model) and `source_subject` (the real subject to animate instead of sampling an
anatomy, see `animation_plan`; "" = sample one). The same plan gives the same dataset: every random choice made while
generating row k derives from that row's seed alone, so rows can be generated in any order, on
any worker, and resumed.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from factory.data.priors import ClinicalPriors
from factory.errors import InputError
from factory.presets import Preset
from factory.vocabulary import DIAGNOSES, derive_seed

PLAN_COLUMNS = ("plan_row", "diagnosis", "edv_ml", "esv_ml", "ef_pct", "n_slices", "frames", "es_frame", "seed",
                "vendor", "source_subject")
NUMERIC_COLUMNS = ("edv_ml", "esv_ml", "ef_pct", "n_slices", "frames", "es_frame", "seed")
INTEGER_COLUMNS = ("n_slices", "frames", "es_frame", "seed")
ES_FRACTION = 0.37  # default ES position (fraction of the cycle) when a plan file gives none
MIX_TOLERANCE = 1e-6  # how far --mix weights may sum from 1 without --normalize
SEED_LIMIT = 2**63  # seeds are stored as int64
MAX_SHOWN = 20  # problems listed in one error
# Plausible LV physiology of a plan row: generous bounds around the ACDC cohort (EDV 49-388 ml, ESV 19-334 ml,
# EF 8-85 %) and the priors' clipping (factory/data/priors.py), so only typos and unit mistakes are refused.
EDV_RANGE_ML = (10.0, 1000.0)
ESV_RANGE_ML = (1.0, 950.0)
EF_RANGE_PCT = (2.0, 95.0)


def split_counts(n: int, weights: dict[str, float]) -> dict[str, int]:
    """Split n subjects over names by weight (largest remainder, ties in the weights' order)."""
    total = sum(weights.values())
    exact = {d: n * w / total for d, w in weights.items()}
    counts = {d: int(np.floor(x)) for d, x in exact.items()}
    order = list(weights)
    by_remainder = sorted(weights, key=lambda d: (-(exact[d] - counts[d]), order.index(d)))
    for d in by_remainder[: n - sum(counts.values())]:
        counts[d] += 1
    return counts


def interleave(counts: dict[str, int]) -> list[str]:
    """Names repeated by their counts, in turn (A, B, C, A, B, ...): every prefix keeps the proportions."""
    remaining = {d: c for d, c in counts.items() if c}
    sequence = []
    while remaining:
        for d in list(remaining):
            sequence.append(d)
            remaining[d] -= 1
            if not remaining[d]:
                del remaining[d]
    return sequence


def parse_weights(text: str, flag: str, vocabulary: list[str] | tuple[str, ...], normalize: bool = False,
                  upper: bool = False) -> dict[str, float]:
    """`NAME=W,NAME=W` -> {name: w}, names from `vocabulary`; the weights must sum to 1 unless `normalize`
    rescales them. `flag` names the option in errors (--mix, --vendor-mix)."""
    weights = {}
    for item in text.split(","):
        name, sep, value = item.partition("=")
        name = name.strip().upper() if upper else name.strip()
        if not sep or name not in vocabulary:
            raise InputError(f"{flag} item {item!r}: expected NAME=WEIGHT with NAME in {list(vocabulary)}")
        if name in weights:
            raise InputError(f"{flag} item {item!r}: {name} is given twice")
        try:
            weight = float(value)
        except ValueError:
            raise InputError(f"{flag} item {item!r}: weight {value!r} is not a number") from None
        if not (math.isfinite(weight) and weight >= 0):
            raise InputError(f"{flag} item {item!r}: weight must be a finite number >= 0")
        weights[name] = weight
    total = sum(weights.values())
    if total <= 0:
        raise InputError(f"{flag} {text!r}: weights sum to zero")
    if not normalize and abs(total - 1) > MIX_TOLERANCE:
        raise InputError(f"{flag} {text!r}: weights sum to {total:.10g}, not 1 (pass --normalize to rescale them)")
    return {d: w / total for d, w in weights.items()}


def parse_mix(text: str, normalize: bool = False) -> dict[str, float]:
    """`NOR=0.2,HCM=0.8` -> {"NOR": 0.2, "HCM": 0.8} (diagnosis proportions, see `parse_weights`)."""
    return parse_weights(text, "--mix", DIAGNOSES, normalize, upper=True)


def vendor_weights(vendors: str | None, mix: str | None, vocabulary: list[str], normalize: bool = False,
                   ) -> dict[str, float] | None:
    """The vendor proportions `--vendors B,C` (equal split) or `--vendor-mix B=0.5,C=0.5` ask for, checked against a
    bundle's vendor vocabulary; None when neither is given."""
    if vendors is not None and mix is not None:
        raise InputError("give either --vendors or --vendor-mix, not both")
    if (vendors is not None or mix is not None) and not vocabulary:
        raise InputError("this bundle has no vendor vocabulary (it was trained without the vendor token);"
                         " drop --vendors / --vendor-mix or use a bundle trained with it")
    if mix is not None:
        return {v: w for v, w in parse_weights(mix, "--vendor-mix", vocabulary, normalize).items() if w > 0}
    if vendors is None:
        return None
    names = [v.strip() for v in vendors.split(",") if v.strip()]
    unknown = [v for v in names if v not in vocabulary]
    if unknown or not names:
        raise InputError(f"--vendors {vendors!r}: unknown vendor {unknown}; this bundle knows {vocabulary}")
    return dict.fromkeys(dict.fromkeys(names), 1.0 / len(set(names)))


def assign_vendors(plan: pd.DataFrame, weights: dict[str, float]) -> pd.DataFrame:
    """`plan` with a vendor column split by `weights` inside every diagnosis (each diagnosis gets the vendor mix, in
    turn), so vendor and diagnosis are not confounded."""
    plan = plan.copy()
    plan["vendor"] = ""
    for diagnosis in plan["diagnosis"].unique():
        rows = plan.index[plan["diagnosis"] == diagnosis]
        plan.loc[rows, "vendor"] = interleave(split_counts(len(rows), weights))
    return plan


def check_vendors(plan: pd.DataFrame, vocabulary: list[str], source: str) -> None:
    """Refuse plan rows whose vendor the bundle does not know, naming the rows and the vocabulary."""
    bad = [f"row {k + 1}: vendor {v!r}" for k, v in enumerate(plan["vendor"]) if v and v not in vocabulary]
    if bad:
        known = f"this bundle knows {vocabulary}" if vocabulary else "this bundle has no vendor vocabulary"
        raise InputError(f"{source}: unknown vendor in {len(bad)} row(s): {'; '.join(bad[:MAX_SHOWN])}; {known}")


def make_plan(n: int, preset: Preset, *, seed: int = 0, balance: str | None = None,
              mix: dict[str, float] | None = None, diagnoses: list[str] | None = None,
              priors: ClinicalPriors | None = None, frames: int | None = None) -> pd.DataFrame:
    """Draw a plan of n subjects from per-diagnosis clinical priors.

    Diagnoses: `balance="diagnosis"` gives equal counts, `mix` explicit proportions, `diagnoses`
    an equal split over a subset (rare-disease sets); default is the priors' own diagnoses, equally.
    """
    if n < 1:
        raise InputError(f"--n must be >= 1, got {n}")
    if frames is not None and not 2 <= frames <= preset.max_frames:
        raise InputError(f"--frames {frames}: must lie in 2..{preset.max_frames} (preset {preset.name})")
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
    counts = split_counts(n, {d: weights[d] for d in DIAGNOSES if d in weights})
    sequence = interleave(counts)  # NOR, MINF, ..., NOR, ...: any prefix of the plan is itself balanced
    rows = []
    for k, diagnosis in enumerate(sequence):
        seed_k = derive_seed(seed, k)
        draw = priors.sample(diagnosis, np.random.default_rng(seed_k))
        drawn_frames = int(draw["n_frames"])
        t = drawn_frames if frames is None else frames
        es = int(round(draw["es_frame"] / drawn_frames * t))
        rows.append({"plan_row": k, "diagnosis": diagnosis, "edv_ml": draw["edv_ml"], "esv_ml": draw["esv_ml"],
                     "ef_pct": draw["ef_pct"], "n_slices": min(int(draw["n_slices"]), preset.geometry.n_slices),
                     "frames": t, "es_frame": min(max(es, 1), t - 1), "seed": seed_k, "vendor": "",
                     "source_subject": ""})
    return validate_plan(pd.DataFrame(rows, columns=PLAN_COLUMNS), preset, source="generated plan")


def animation_plan(sources: pd.DataFrame, n: int, preset: Preset, *, seed: int = 0,
                   priors: ClinicalPriors | None = None, frames: int | None = None) -> pd.DataFrame:
    """A plan that animates real subjects (`sources`: a cohort store's table) instead of sampling anatomies.

    Row k animates the k-th animatable subject in turn (a diagnosis and a measured EDV, i.e. a labeled
    ED frame), at an EF drawn from the priors of its diagnosis: EDV and slice count are the subject's
    own, ESV follows from the EF, the vendor is the subject's, the cycle length and ES position are
    the subject's unless `frames` is given.
    """
    if n < 1:
        raise InputError(f"--n must be >= 1, got {n}")
    priors = priors or ClinicalPriors.default()
    usable = sources[sources["diagnosis"].isin(list(priors.diagnoses)) & sources["edv_ml"].notna()
                     & sources["es_frame"].notna()]
    if usable.empty:
        raise InputError("--from: the store has no subject to animate (none has a diagnosis the priors cover and"
                         " measured ED/ES masks)")
    rows = []
    for k in range(n):
        source = usable.iloc[k % len(usable)]
        seed_k = derive_seed(seed, k)
        ef = float(priors.sample(source["diagnosis"], np.random.default_rng(seed_k))["ef_pct"])
        own = min(int(source["n_frames"]), preset.max_frames)
        t = own if frames is None else frames
        es = int(round(float(source["es_frame"]) / int(source["n_frames"]) * t))
        vendor = source["vendor"] if isinstance(source["vendor"], str) else ""
        rows.append({"plan_row": k, "diagnosis": source["diagnosis"], "edv_ml": float(source["edv_ml"]),
                     "esv_ml": float(source["edv_ml"]) * (1 - ef / 100), "ef_pct": ef,
                     "n_slices": int(source["n_slices"]), "frames": t, "es_frame": min(max(es, 1), t - 1),
                     "seed": seed_k, "vendor": vendor, "source_subject": str(source["subject_id"])})
    return validate_plan(pd.DataFrame(rows, columns=PLAN_COLUMNS), preset, source="animation plan")


def check_sources(plan: pd.DataFrame, sources: pd.DataFrame | None, source: str) -> None:
    """Refuse rows naming a source subject without a --from store, or one the store does not hold or cannot animate."""
    named = plan["source_subject"].astype(bool)
    if sources is None:
        if named.any():
            raise InputError(f"{source}: {int(named.sum())} row(s) name a source_subject: give --from STORE to"
                             " animate them")
        return
    if not named.all():
        raise InputError(f"{source}: with --from every row must name a source_subject"
                         f" (rows {list(np.flatnonzero(~named.to_numpy()) + 1)[:MAX_SHOWN]} do not)")
    known = sources.dropna(subset=["edv_ml", "es_frame"]).set_index("subject_id")
    bad = [f"row {k + 1}: {name!r}" for k, name in enumerate(plan["source_subject"]) if name not in known.index]
    if bad:
        raise InputError(f"{source}: source subject not in the --from store or without measured ED/ES masks:"
                         f" {'; '.join(bad[:MAX_SHOWN])}")


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
    table = _numeric(table.copy(), str(path))
    table["diagnosis"] = table["diagnosis"].astype(str).str.strip().str.upper()
    if "esv_ml" not in table:
        table["esv_ml"] = table["edv_ml"] * (1 - table["ef_pct"] / 100)
    if "ef_pct" not in table:
        table["ef_pct"] = 100 * (table["edv_ml"] - table["esv_ml"]) / table["edv_ml"]
    table["plan_row"] = np.arange(len(table))
    if "es_frame" not in table:
        table["es_frame"] = np.clip(np.round(table["frames"] * ES_FRACTION), 1, table["frames"] - 1)
    if "seed" not in table:
        table["seed"] = [derive_seed(seed, k) for k in range(len(table))]
    for column in ("vendor", "source_subject"):  # optional text columns: blank = none
        table[column] = table[column].fillna("").astype(str).str.strip() if column in table else ""
    return validate_plan(table[list(PLAN_COLUMNS)], preset, source=str(path))


def _numeric(table: pd.DataFrame, source: str) -> pd.DataFrame:
    """`table` with its numeric columns as numbers; refuses each cell that is not a finite number by row and column."""
    problems = []
    for column in [c for c in NUMERIC_COLUMNS if c in table]:
        cells, values = table[column].tolist(), pd.to_numeric(table[column], errors="coerce")
        bad = (values.isna() & table[column].notna()) | np.isinf(values)
        problems += [f"row {k + 1}: {column} {cells[k]!r} is not a finite number" for k in np.flatnonzero(bad)]
        table[column] = values
    if problems:
        raise _refusal(source, problems)
    return table


def _outside(value: float, bounds: tuple[float, float]) -> bool:
    """Whether `value` lies outside the closed interval `bounds`."""
    return not bounds[0] <= value <= bounds[1]


def _row_problems(k: int, row: dict, preset: Preset) -> list[str]:
    """What is impossible about plan row `k` (1-based): gaps, fractions, unknown diagnosis, implausible values."""
    missing = [c for c in NUMERIC_COLUMNS if pd.isna(row[c])]
    if missing:
        return [f"row {k}: missing {missing}"]
    problems = [f"row {k}: {c} {row[c]} is not an integer" for c in INTEGER_COLUMNS if not float(row[c]).is_integer()]
    edv, esv, ef, frames = row["edv_ml"], row["esv_ml"], row["ef_pct"], row["frames"]
    z_max, t_max = preset.geometry.n_slices, preset.max_frames
    if row["diagnosis"] not in DIAGNOSES:
        problems.append(f"row {k}: unknown diagnosis {row['diagnosis']!r} (choose from {DIAGNOSES})")
    if _outside(edv, EDV_RANGE_ML):
        problems.append(f"row {k}: EDV {edv:g} ml outside the plausible {EDV_RANGE_ML[0]:g}..{EDV_RANGE_ML[1]:g} ml")
    if esv > edv:
        problems.append(f"row {k}: ESV {esv:g} ml above the EDV ({edv:g} ml)")
    elif _outside(esv, ESV_RANGE_ML):
        problems.append(f"row {k}: ESV {esv:g} ml outside the plausible {ESV_RANGE_ML[0]:g}..{ESV_RANGE_ML[1]:g} ml")
    if _outside(ef, EF_RANGE_PCT):
        problems.append(f"row {k}: EF {ef:g} % outside the plausible {EF_RANGE_PCT[0]:g}..{EF_RANGE_PCT[1]:g} %")
    elif edv > 0 and abs(100 * (edv - esv) / edv - ef) > 1.0:
        problems.append(f"row {k}: EF {ef:g} % disagrees with EDV/ESV")
    if not 1 <= row["n_slices"] <= z_max:
        problems.append(f"row {k}: n_slices {row['n_slices']} outside 1..{z_max} of preset {preset.name}")
    if not 2 <= frames <= t_max:
        problems.append(f"row {k}: frames {frames} outside 2..{t_max} of preset {preset.name}")
    elif not 0 < row["es_frame"] < frames:
        problems.append(f"row {k}: es_frame {row['es_frame']} outside 1..{int(frames) - 1}")
    if not 0 <= row["seed"] < SEED_LIMIT:
        problems.append(f"row {k}: seed {row['seed']} outside 0..2**63-1")
    return problems


def _refusal(source: str, problems: list[str]) -> InputError:
    """A single-line error listing the problems of a plan (the first MAX_SHOWN of them)."""
    more = f"; ... and {len(problems) - MAX_SHOWN} more" if len(problems) > MAX_SHOWN else ""
    return InputError(f"{source}: {len(problems)} impossible plan row(s): {'; '.join(problems[:MAX_SHOWN])}{more}")


def validate_plan(plan: pd.DataFrame, preset: Preset, source: str) -> pd.DataFrame:
    """Reject an empty plan and impossible rows up front, naming each row by its number (1-based, as in a sheet)."""
    if plan.empty:
        raise InputError(f"{source}: plan has no rows")
    problems = [p for k, row in enumerate(plan.to_dict("records"), start=1) for p in _row_problems(k, row, preset)]
    if problems:
        raise _refusal(source, problems)
    return plan.astype({"plan_row": int, "n_slices": int, "frames": int, "es_frame": int, "seed": "int64"})
