"""Clinical priors: per-diagnosis joint distributions of the values a subject is generated from.

Per diagnosis the priors hold a bivariate normal over (log EDV, EF) (keeping their correlation;
ESV = EDV * (1 - EF / 100)), the empirical distributions of slice count and frame count, a normal
over the ES position as a fraction of the cycle, and a bivariate normal over (height, weight).
Samples are clipped to plausible physiology.

The shipped `acdc_priors.json` is fitted from the ACDC table and regenerated with

    python -m factory.data.priors --fit ../shared/data/acdc_clinical.csv --out factory/data/acdc_priors.json
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd

from factory.errors import InputError, exit_status
from factory.vocabulary import DIAGNOSES

FORMAT = "cine-factory clinical priors"
VERSION = 1
DEFAULT_RESOURCE = "acdc_priors.json"
MIN_SUBJECTS = 3  # a covariance needs a few subjects per diagnosis

# Plausible physiology: every sample is clipped into these ranges.
EF_RANGE = (5.0, 85.0)
EDV_RANGE_ML = (40.0, 450.0)
HEIGHT_RANGE_M = (1.40, 2.10)
WEIGHT_RANGE_KG = (35.0, 160.0)
ES_FRACTION_RANGE = (0.20, 0.60)
SLICES_RANGE = (4, 20)
FRAMES_RANGE = (8, 50)


@dataclass(frozen=True)
class Normal:
    """A multivariate normal (any dimension) that samples through its Cholesky factor."""

    mean: tuple[float, ...]
    cov: tuple[tuple[float, ...], ...]

    @classmethod
    def fit(cls, columns: list[np.ndarray]) -> Normal:
        """Sample mean and (ddof=1) covariance of the given columns, one variable per column."""
        data = np.stack([np.asarray(c, dtype=np.float64) for c in columns])
        cov = np.atleast_2d(np.cov(data))
        return cls(tuple(float(m) for m in data.mean(axis=1)), tuple(tuple(float(v) for v in row) for row in cov))

    def sample(self, rng: np.random.Generator) -> np.ndarray:
        """One draw as an array of the normal's dimension."""
        factor = np.linalg.cholesky(np.asarray(self.cov) + 1e-12 * np.eye(len(self.mean)))
        return np.asarray(self.mean) + factor @ rng.standard_normal(len(self.mean))

    @property
    def std(self) -> tuple[float, ...]:
        return tuple(math.sqrt(self.cov[i][i]) for i in range(len(self.mean)))


@dataclass(frozen=True)
class Categorical:
    """An empirical distribution over integers (slice or frame counts)."""

    values: tuple[int, ...]
    probs: tuple[float, ...]

    @classmethod
    def fit(cls, column: np.ndarray) -> Categorical:
        values, counts = np.unique(np.asarray(column, dtype=np.int64), return_counts=True)
        return cls(tuple(int(v) for v in values), tuple(float(c) for c in counts / counts.sum()))

    def sample(self, rng: np.random.Generator) -> int:
        return int(self.values[rng.choice(len(self.values), p=np.asarray(self.probs))])


# Population defaults for tables that lack ES frames or body size (adult cardiac MRI cohorts).
DEFAULT_ES_FRACTION = Normal((0.37,), ((0.06 ** 2,),))
DEFAULT_BODY = Normal((1.70, 75.0), ((0.10 ** 2, 0.5 * 0.10 * 15.0), (0.5 * 0.10 * 15.0, 15.0 ** 2)))


@dataclass(frozen=True)
class DiagnosisPrior:
    """Everything drawn for one subject of one diagnosis."""

    n_subjects: int
    volume: Normal  # (log EDV in ml, EF in %)
    es_fraction: Normal  # ES frame / number of frames, ED = frame 0
    body: Normal  # (height m, weight kg)
    n_slices: Categorical
    n_frames: Categorical

    def sample(self, rng: np.random.Generator) -> dict[str, float | int]:
        """Draw one subject's clinical values, clipped to plausible physiology."""
        log_edv, ef = self.volume.sample(rng)
        edv = float(np.clip(math.exp(log_edv), *EDV_RANGE_ML))
        ef = float(np.clip(ef, *EF_RANGE))
        n_slices = int(np.clip(self.n_slices.sample(rng), *SLICES_RANGE))
        n_frames = int(np.clip(self.n_frames.sample(rng), *FRAMES_RANGE))
        fraction = float(np.clip(self.es_fraction.sample(rng)[0], *ES_FRACTION_RANGE))
        height, weight = self.body.sample(rng)
        return {
            "edv_ml": edv,
            "esv_ml": edv * (1.0 - ef / 100.0),
            "ef_pct": ef,
            "n_slices": n_slices,
            "n_frames": n_frames,
            "es_frame": int(np.clip(round(fraction * n_frames), 1, n_frames - 2)),
            "height_m": float(np.clip(height, *HEIGHT_RANGE_M)),
            "weight_kg": float(np.clip(weight, *WEIGHT_RANGE_KG)),
        }


def _normal_from_dict(data: dict) -> Normal:
    return Normal(tuple(data["mean"]), tuple(tuple(row) for row in data["cov"]))


def _prior_to_dict(prior: DiagnosisPrior) -> dict:
    return {
        "n_subjects": prior.n_subjects,
        "volume": {"variables": ["log_edv_ml", "ef_pct"], "mean": prior.volume.mean, "cov": prior.volume.cov},
        "es_fraction": {"mean": prior.es_fraction.mean, "cov": prior.es_fraction.cov},
        "body": {"variables": ["height_m", "weight_kg"], "mean": prior.body.mean, "cov": prior.body.cov},
        "n_slices": {"values": prior.n_slices.values, "probs": prior.n_slices.probs},
        "n_frames": {"values": prior.n_frames.values, "probs": prior.n_frames.probs},
    }


def _prior_from_dict(data: dict) -> DiagnosisPrior:
    return DiagnosisPrior(
        n_subjects=int(data["n_subjects"]),
        volume=_normal_from_dict(data["volume"]),
        es_fraction=_normal_from_dict(data["es_fraction"]),
        body=_normal_from_dict(data["body"]),
        n_slices=Categorical(tuple(data["n_slices"]["values"]), tuple(data["n_slices"]["probs"])),
        n_frames=Categorical(tuple(data["n_frames"]["values"]), tuple(data["n_frames"]["probs"])),
    )


def _column(table: pd.DataFrame, *names: str) -> str | None:
    return next((name for name in names if name in table.columns), None)


def _fit_group(group: pd.DataFrame) -> DiagnosisPrior:
    """Fit one diagnosis; ES position and body size fall back to population defaults when absent."""
    edv = group["edv_ml"].to_numpy(float)
    ef = (group["ef_pct"].to_numpy(float) if "ef_pct" in group
          else 100.0 * (1.0 - group["esv_ml"].to_numpy(float) / edv))
    n_frames = group["n_frames"].to_numpy(float)
    es_fraction = DEFAULT_ES_FRACTION
    if "es_frame" in group and group["es_frame"].notna().all():
        ed = group["ed_frame"].to_numpy(float) if "ed_frame" in group else np.ones(len(group))
        es_fraction = Normal.fit([((group["es_frame"].to_numpy(float) - ed) % n_frames) / n_frames])
    body = DEFAULT_BODY
    if {"height_m", "weight_kg"} <= set(group.columns) and group[["height_m", "weight_kg"]].notna().all().all():
        body = Normal.fit([group["height_m"].to_numpy(float), group["weight_kg"].to_numpy(float)])
    return DiagnosisPrior(
        n_subjects=len(group),
        volume=Normal.fit([np.log(edv), ef]),
        es_fraction=es_fraction,
        body=body,
        n_slices=Categorical.fit(group["n_slices"].to_numpy()),
        n_frames=Categorical.fit(group["n_frames"].to_numpy()),
    )


@dataclass(frozen=True)
class ClinicalPriors:
    """Per-diagnosis priors with JSON round trip; `sample` draws one subject's clinical values."""

    priors: dict[str, DiagnosisPrior]
    source: str = ""

    @property
    def diagnoses(self) -> tuple[str, ...]:
        return tuple(self.priors)

    def sample(self, diagnosis: str, rng: np.random.Generator) -> dict[str, float | int]:
        """edv_ml, esv_ml, ef_pct, n_slices, n_frames, es_frame (0-based, ED = 0), height_m, weight_kg."""
        try:
            prior = self.priors[diagnosis]
        except KeyError:
            raise InputError(f"no prior for diagnosis {diagnosis!r}; the priors cover {list(self.priors)}") from None
        return prior.sample(rng)

    @classmethod
    def fit(cls, table: pd.DataFrame, source: str = "") -> ClinicalPriors:
        """Fit from a cohort table: `pathology` or `diagnosis`, edv_ml, ef_pct or esv_ml, n_slices, n_frames."""
        diagnosis_col = _column(table, "diagnosis", "pathology")
        missing = [name for name, ok in (("pathology or diagnosis", diagnosis_col), ("edv_ml", "edv_ml" in table),
                                         ("ef_pct or esv_ml", _column(table, "ef_pct", "esv_ml")),
                                         ("n_slices", "n_slices" in table), ("n_frames", "n_frames" in table))
                   if not ok]
        if missing:
            raise InputError(f"{source or 'cohort table'}: lacks columns {missing}")
        table = table.dropna(subset=[diagnosis_col, "edv_ml", "n_slices", "n_frames"])
        table = table.assign(**{diagnosis_col: table[diagnosis_col].astype(str).str.strip().str.upper()})
        counts = table[diagnosis_col].value_counts()
        small = sorted(counts[counts < MIN_SUBJECTS].index)
        if small or table.empty:
            raise InputError(f"{source or 'cohort table'}: need >= {MIN_SUBJECTS} subjects per diagnosis, "
                             f"too few for {small or 'every diagnosis'}")
        if (table["edv_ml"] <= 0).any() or (table["n_frames"] < 3).any():
            raise InputError(f"{source or 'cohort table'}: EDV must be positive and every cycle >= 3 frames")
        order = sorted(counts.index, key=lambda d: (DIAGNOSES.index(d) if d in DIAGNOSES else len(DIAGNOSES), d))
        groups = dict(list(table.groupby(diagnosis_col)))
        priors = {name: _fit_group(groups[name]) for name in order}
        return cls(priors, source=source)

    @classmethod
    def from_csv(cls, path: Path) -> ClinicalPriors:
        """Fit from a CSV cohort table (e.g. the ACDC clinical table)."""
        path = Path(path)
        try:
            table = pd.read_csv(path)
        except (OSError, ValueError) as err:
            raise InputError(f"{path}: cannot read cohort table: {err}") from None
        return cls.fit(table, source=path.name)

    def to_dict(self) -> dict:
        return {"format": FORMAT, "version": VERSION, "source": self.source,
                "diagnoses": {name: _prior_to_dict(prior) for name, prior in self.priors.items()}}

    @classmethod
    def from_dict(cls, data: dict, where: str = "priors") -> ClinicalPriors:
        if data.get("format") != FORMAT or data.get("version") != VERSION:
            raise InputError(f"{where}: not a version-{VERSION} {FORMAT!r} file")
        try:
            priors = {name: _prior_from_dict(prior) for name, prior in data["diagnoses"].items()}
        except (KeyError, TypeError, ValueError) as err:
            raise InputError(f"{where}: malformed priors: {err!r}") from None
        return cls(priors, source=str(data.get("source", "")))

    def to_json(self, path: Path) -> Path:
        path = Path(path)
        path.write_text(json.dumps(self.to_dict(), indent=1) + "\n")
        return path

    @classmethod
    def from_json(cls, path: Path) -> ClinicalPriors:
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as err:
            raise InputError(f"{path}: cannot read priors: {err}") from None
        return cls.from_dict(data, where=str(path))

    @classmethod
    def default(cls) -> ClinicalPriors:
        """The priors shipped with the package (fitted on the 150 ACDC subjects)."""
        text = resources.files("factory.data").joinpath(DEFAULT_RESOURCE).read_text()
        return cls.from_dict(json.loads(text), where=DEFAULT_RESOURCE)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m factory.data.priors", description=__doc__.splitlines()[0])
    parser.add_argument("--fit", type=Path, required=True, help="cohort table (CSV) to fit")
    parser.add_argument("--out", type=Path, required=True, help="JSON file to write")
    args = parser.parse_args(argv)
    return exit_status(parser.prog, lambda: fit(args.fit, args.out))


def fit(table: Path, out: Path) -> None:
    """Fit priors on a cohort table (CSV) and write them as JSON."""
    priors = ClinicalPriors.from_csv(table)
    priors.to_json(out)
    print(f"wrote {out}: {', '.join(f'{d} ({p.n_subjects})' for d, p in priors.priors.items())}")


if __name__ == "__main__":
    raise SystemExit(main())
