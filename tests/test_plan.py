"""Sampling plans: diagnosis splits, per-row seeds, explicit plan files and their validation."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest

from factory.cli import main
from factory.data.priors import ClinicalPriors
from factory.errors import InputError
from factory.presets import get_preset
from factory.sample.plan import PLAN_COLUMNS, load_plan, split_counts, make_plan, parse_mix
from factory.vocabulary import DIAGNOSES

TINY = get_preset("tiny")


def test_balanced_plan_has_equal_counts_and_valid_rows():
    plan = make_plan(100, TINY, seed=3, balance="diagnosis")
    assert list(plan.columns) == list(PLAN_COLUMNS)
    assert plan["diagnosis"].value_counts().to_dict() == dict.fromkeys(DIAGNOSES, 20)
    assert (plan["esv_ml"] < plan["edv_ml"]).all() and plan["ef_pct"].between(0, 100).all()
    assert plan["n_slices"].between(1, TINY.geometry.n_slices).all()
    assert ((plan["es_frame"] > 0) & (plan["es_frame"] < plan["frames"])).all()
    assert plan["seed"].is_unique


def test_rows_do_not_depend_on_plan_length_and_seed_changes_everything():
    short, long = make_plan(10, TINY, seed=1), make_plan(50, TINY, seed=1)
    pd.testing.assert_frame_equal(short, long.iloc[:10])
    other = make_plan(10, TINY, seed=2)
    assert not np.isin(other["seed"], short["seed"]).any()


def test_mix_and_rare_disease_sets():
    assert split_counts(10, {"NOR": 0.2, "HCM": 0.8}) == {"NOR": 2, "HCM": 8}
    plan = make_plan(30, TINY, mix=parse_mix("NOR=1,HCM=2", normalize=True))
    assert plan["diagnosis"].value_counts().to_dict() == {"HCM": 20, "NOR": 10}
    assert parse_mix("NOR=0.2,HCM=0.8") == pytest.approx({"NOR": 0.2, "HCM": 0.8})
    with pytest.raises(InputError, match="weights sum to 3, not 1"):
        parse_mix("NOR=1,HCM=2")
    rare = make_plan(9, TINY, diagnoses=["hcm", "RV"])
    assert set(rare["diagnosis"]) == {"HCM", "RV"}
    with pytest.raises(InputError, match="XYZ"):
        parse_mix("XYZ=1")
    with pytest.raises(InputError, match="unknown diagnoses"):
        make_plan(4, TINY, diagnoses=["FOO"])


def test_fixed_frame_count_rescales_es():
    plan = make_plan(20, TINY, frames=20)
    assert (plan["frames"] == 20).all() and plan["es_frame"].between(4, 12).all()


def test_explicit_plan_file_is_completed(tmp_path):
    path = tmp_path / "plan.csv"
    pd.DataFrame({"diagnosis": ["nor", "DCM"], "edv_ml": [120.0, 280.0], "ef_pct": [60.0, 20.0],
                  "n_slices": [8, 10], "frames": [25, 30]}).to_csv(path, index=False)
    plan = load_plan(path, TINY, seed=5)
    assert list(plan["diagnosis"]) == ["NOR", "DCM"]
    np.testing.assert_allclose(plan["esv_ml"], [48.0, 224.0])
    assert plan["seed"].is_unique and (plan["es_frame"] > 0).all()


def test_impossible_rows_are_rejected_with_their_row_numbers(tmp_path):
    path = tmp_path / "plan.csv"
    pd.DataFrame({"diagnosis": ["NOR", "XYZ", "HCM", "RV"], "edv_ml": [120, 100, 100, 100],
                  "esv_ml": [50, 40, 120, 40], "n_slices": [8, 8, 8, 40], "frames": [25, 25, 25, 25]}
                 ).to_csv(path, index=False)
    with pytest.raises(InputError) as err:
        load_plan(path, TINY)
    message = str(err.value)
    assert str(path) in message and "row 1" not in message
    assert re.search(r"row 2: unknown diagnosis 'XYZ'", message)
    assert re.search(r"row 3: ESV 120 ml", message)
    assert re.search(r"row 4: n_slices 40 outside", message)


def test_priors_from_a_table(tmp_path, shared_data):
    table = pd.read_csv(shared_data / "acdc_clinical.csv")
    hcm_only = table[table["pathology"] == "HCM"]
    hcm_only.to_csv(tmp_path / "hcm.csv", index=False)
    assert main(["plan", "--n", "5", "--priors", str(tmp_path / "hcm.csv"), "--out", str(tmp_path / "p.csv")]) == 0
    assert set(pd.read_csv(tmp_path / "p.csv")["diagnosis"]) == {"HCM"}
    with pytest.raises(InputError, match="no distribution"):
        make_plan(5, TINY, diagnoses=["DCM"], priors=ClinicalPriors.fit(hcm_only))
