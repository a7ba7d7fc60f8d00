"""Clinical priors: fitting, JSON round trip, sampling and the shipped ACDC file."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from factory.data import priors as priors_module
from factory.data.priors import EDV_RANGE_ML, EF_RANGE, ClinicalPriors
from factory.errors import InputError
from factory.vocabulary import DIAGNOSES

SAMPLE_KEYS = {"edv_ml", "esv_ml", "ef_pct", "n_slices", "n_frames", "es_frame", "height_m", "weight_kg"}


def synthetic_table(n: int = 40, seed: int = 0) -> pd.DataFrame:
    """A minimal cohort table: `diagnosis`, EDV and ESV (no EF), slice and frame counts only."""
    rng = np.random.default_rng(seed)
    rows = []
    for diagnosis, edv, ef in (("NOR", 130.0, 62.0), ("DCM", 280.0, 20.0)):
        volumes = rng.normal(edv, 0.15 * edv, n)
        fractions = rng.normal(ef, 5.0, n)
        rows += [{"diagnosis": diagnosis, "edv_ml": v, "esv_ml": v * (1 - f / 100), "n_slices": int(rng.integers(7, 11)),
                  "n_frames": int(rng.choice([25, 30]))} for v, f in zip(volumes, fractions)]
    return pd.DataFrame(rows)


def test_default_priors_cover_every_diagnosis_and_sample_plausible_values():
    priors = ClinicalPriors.default()
    assert priors.diagnoses == DIAGNOSES
    rng = np.random.default_rng(0)
    for diagnosis in DIAGNOSES:
        for _ in range(200):
            draw = priors.sample(diagnosis, rng)
            assert set(draw) == SAMPLE_KEYS
            assert EF_RANGE[0] <= draw["ef_pct"] <= EF_RANGE[1]
            assert EDV_RANGE_ML[0] <= draw["edv_ml"] <= EDV_RANGE_ML[1]
            assert draw["esv_ml"] == pytest.approx(draw["edv_ml"] * (1 - draw["ef_pct"] / 100))
            assert 0 < draw["es_frame"] < draw["n_frames"] - 1
            assert isinstance(draw["n_slices"], int) and isinstance(draw["n_frames"], int)


def test_sampling_is_deterministic_per_generator_seed():
    priors = ClinicalPriors.default()
    assert priors.sample("HCM", np.random.default_rng(7)) == priors.sample("HCM", np.random.default_rng(7))


def test_fit_accepts_diagnosis_column_and_esv_and_falls_back_to_defaults(tmp_path):
    table = synthetic_table()
    priors = ClinicalPriors.fit(table)
    assert priors.diagnoses == ("NOR", "DCM")  # the project's diagnosis order
    rng = np.random.default_rng(1)
    draws = pd.DataFrame([priors.sample("DCM", rng) for _ in range(2000)])
    assert draws["edv_ml"].mean() == pytest.approx(table.query("diagnosis == 'DCM'")["edv_ml"].mean(), rel=0.05)
    assert draws["ef_pct"].mean() == pytest.approx(20.0, abs=1.5)
    assert set(draws["n_frames"]) <= {25, 30}
    assert draws["height_m"].mean() == pytest.approx(priors_module.DEFAULT_BODY.mean[0], abs=0.02)
    assert (draws["es_frame"] / draws["n_frames"]).mean() == pytest.approx(0.37, abs=0.03)


def test_json_round_trip(tmp_path):
    priors = ClinicalPriors.fit(synthetic_table(), source="synthetic")
    path = priors.to_json(tmp_path / "priors.json")
    assert ClinicalPriors.from_json(path) == priors


@pytest.mark.parametrize("drop", ["edv_ml", "n_frames", "diagnosis"])
def test_fit_rejects_missing_columns(drop):
    with pytest.raises(InputError, match="lacks columns"):
        ClinicalPriors.fit(synthetic_table().drop(columns=drop))


def test_fit_rejects_too_few_subjects():
    with pytest.raises(InputError, match="subjects per diagnosis"):
        ClinicalPriors.fit(synthetic_table(n=2))


def test_unknown_diagnosis_and_bad_json_are_input_errors(tmp_path):
    with pytest.raises(InputError, match="no prior"):
        ClinicalPriors.default().sample("XYZ", np.random.default_rng(0))
    bad = tmp_path / "bad.json"
    bad.write_text('{"format": "something else"}')
    with pytest.raises(InputError):
        ClinicalPriors.from_json(bad)


def test_module_entry_point_fits_a_csv(tmp_path):
    csv = tmp_path / "cohort.csv"
    synthetic_table().to_csv(csv, index=False)
    out = tmp_path / "fitted.json"
    assert priors_module.main(["--fit", str(csv), "--out", str(out)]) == 0
    assert ClinicalPriors.from_json(out).diagnoses == ("NOR", "DCM")
    assert priors_module.main(["--fit", str(tmp_path / "missing.csv"), "--out", str(out)]) == 2


def assert_same_document(a, b, path: str = "") -> None:
    """Equal JSON-like documents, floats to 1e-12 relative (the fit's last bit depends on the BLAS build)."""
    if isinstance(a, dict):
        assert set(a) == set(b), path
        for key in a:
            assert_same_document(a[key], b[key], f"{path}/{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same_document(x, y, f"{path}[{i}]")
    elif isinstance(a, float):
        assert math.isclose(a, b, rel_tol=1e-12), f"{path}: {a} != {b}"
    else:
        assert a == b, path


def test_shipped_priors_are_the_fit_of_the_acdc_table(shared_data):
    fitted = ClinicalPriors.from_csv(shared_data / "acdc_clinical.csv")
    assert_same_document(fitted.to_dict(), ClinicalPriors.default().to_dict())


def test_sampled_means_follow_the_acdc_table(shared_data):
    table = pd.read_csv(shared_data / "acdc_clinical.csv")
    priors = ClinicalPriors.default()
    rng = np.random.default_rng(3)
    for diagnosis, group in table.groupby("pathology"):
        draws = pd.DataFrame([priors.sample(diagnosis, rng) for _ in range(1000)])
        for column in ("edv_ml", "ef_pct", "n_slices", "n_frames"):
            assert abs(draws[column].mean() - group[column].mean()) < 0.2 * group[column].std(), (diagnosis, column)
        correlation = np.corrcoef(np.log(draws["edv_ml"]), draws["ef_pct"])[0, 1]
        assert correlation == pytest.approx(np.corrcoef(np.log(group["edv_ml"]), group["ef_pct"])[0, 1], abs=0.15)
