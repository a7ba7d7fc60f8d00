"""Every bad command-line value is refused at the edge: exit 2, one error line naming it, no traceback, no Ray.

The entry points run in-process: `factory.cli.main` for the factory subcommands and `main(argv)` of
jobs/generate.py, jobs/train.py and jobs/evaluate.py. Whatever would start Ray or do real work is
replaced by a function that fails the test, so a value that slips past the edge cannot go unnoticed.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from factory import cli
from factory.errors import FactoryError
from factory.presets import get_preset
from factory.train.config import stage_config

from store_builders import job

GOOD_PLAN = {"diagnosis": ["NOR", "HCM"], "edv_ml": [120.0, 150.0], "ef_pct": [60.0, 70.0],
             "n_slices": [8, 9], "frames": [25, 30]}


def entry(name: str):
    """The `main(argv)` of an entry point: "factory", or a job's name."""
    return cli.main if name == "factory" else job(name).main


def reached_the_work(*args, **kwargs):
    raise AssertionError("a bad value got past the argument checks into the real work")


@pytest.fixture(autouse=True)
def no_work(monkeypatch):
    """Fail any case that would start Ray, generate, train or evaluate."""
    import ray

    import factory.evaluate.cli

    monkeypatch.setattr(ray, "init", reached_the_work)
    monkeypatch.setattr(factory.evaluate.cli, "evaluate", reached_the_work)
    monkeypatch.setattr(job("generate"), "generate", reached_the_work)
    monkeypatch.setattr(job("train"), "train", reached_the_work)


def fill(argv: list[str], tmp: Path) -> list[str]:
    return [a.replace("{tmp}", str(tmp)) for a in argv]


PLAN = ["plan", "--out", "{tmp}/plan.csv"]
GENERATE = ["--out", "{tmp}/syn.zarr", "--n", "2"]
EVALUATE = ["--synthetic", "{tmp}/syn.zarr", "--cohort", "{tmp}/cohort.zarr", "--out", "{tmp}/eval"]
TRAIN = ["--cohort", "{tmp}/cohort.zarr", "--out", "{tmp}/bundle"]

# (entry point, argv, strings the error must contain): refused by argparse with a usage error.
USAGE_ERRORS = [
    ("factory", [*PLAN, "--n", "0"], ["--n", "'0'", ">= 1"]),
    ("factory", [*PLAN, "--n", "1.5"], ["--n", "'1.5'", "integer"]),
    ("factory", [*PLAN, "--n", "3", "--seed", "-1"], ["--seed", "'-1'", ">= 0"]),
    ("generate", [*GENERATE, "--gate-attempts", "0"], ["--gate-attempts", "'0'"]),
    ("generate", [*GENERATE, "--guidance", "-1"], ["--guidance", "'-1'", ">= 0"]),
    ("generate", [*GENERATE, "--guidance", "nan"], ["--guidance", "'nan'"]),
    ("generate", [*GENERATE, "--motion-guidance", "-2"], ["--motion-guidance", "'-2'", ">= 0"]),
    ("generate", [*GENERATE, "--tolerance-attempts", "0"], ["--tolerance-attempts", "'0'"]),
    ("factory", [*PLAN, "--n", "3", "--steps", "4"], ["unrecognized arguments: --steps"]),  # a plan does not sample
    ("factory", [*PLAN, "--n", "3", "--preset", "huge"], ["--preset", "'huge'", "tiny"]),
    ("factory", ["preview", "{tmp}/s.zarr", "--out", "{tmp}/p", "--subjects", "0"], ["--subjects", "'0'"]),
    ("factory", ["montage", "--phantom", "{tmp}", "--out", "{tmp}/m.png", "--subjects", "0"], ["--subjects", "'0'"]),
    ("factory", ["phantom", "--out", "{tmp}/ph", "--subjects", "0"], ["--subjects", "'0'"]),
    ("factory", ["phantom", "--out", "{tmp}/ph", "--subjects", "2", "--seed", "-3"], ["--seed", "'-3'"]),
    ("factory", ["evaluate", *EVALUATE, "--seeds", "0"], ["--seeds", "'0'"]),
    ("generate", [*GENERATE, "--workers", "0"], ["--workers", "'0'"]),
    ("generate", [*GENERATE, "--workers", "3-2"], ["--workers", "'3-2'", "MIN <= MAX"]),
    ("generate", [*GENERATE, "--workers", "0-2"], ["--workers", "'0-2'"]),
    ("generate", [*GENERATE, "--workers", "2-x"], ["--workers", "'2-x'"]),
    ("generate", [*GENERATE, "--batch-size", "0"], ["--batch-size", "'0'"]),
    ("generate", [*GENERATE, "--cpus-per-worker", "0"], ["--cpus-per-worker", "'0'", "> 0"]),
    ("generate", [*GENERATE, "--gpus-per-worker", "-1"], ["--gpus-per-worker", "'-1'"]),
    ("generate", [*GENERATE, "--steps", "0"], ["--steps", "'0'"]),
    ("generate", [*GENERATE, "--preset", "tiny"], ["--preset"]),  # the bundle decides the preset
    ("evaluate", [*EVALUATE, "--seeds", "0"], ["--seeds", "'0'"]),
    ("evaluate", [*EVALUATE, "--steps", "0"], ["--steps", "'0'"]),
    ("evaluate", [*EVALUATE, "--batch-size", "0"], ["--batch-size", "'0'"]),
    ("evaluate", [*EVALUATE, "--extractor-steps", "0"], ["--extractor-steps", "'0'"]),
    ("evaluate", [*EVALUATE, "--bootstrap", "0"], ["--bootstrap", "'0'"]),
    ("evaluate", [*EVALUATE, "--seed", "-1"], ["--seed", "'-1'"]),
    ("evaluate", [*EVALUATE, "--n-extra", "0"], ["--n-extra", "'0'"]),
    ("evaluate", [*EVALUATE, "--arms", "real,bogus"], ["--arms", "bogus", "synthetic"]),
    ("evaluate", [*EVALUATE, "--arms", ","], ["--arms", "no arms"]),
    ("train", [*TRAIN, "--steps", "0"], ["--steps", "'0'"]),
    ("train", [*TRAIN, "--workers", "0"], ["--workers", "'0'"]),
    ("train", [*TRAIN, "--batch-size", "0"], ["--batch-size", "'0'"]),
    ("train", [*TRAIN, "--checkpoint-every", "0"], ["--checkpoint-every", "'0'"]),
    ("train", [*TRAIN, "--seed", "-1"], ["--seed", "'-1'"]),
    ("train", [*TRAIN, "--max-failures", "-1"], ["--max-failures", "'-1'"]),
    ("train", [*TRAIN, "--preset", "huge"], ["--preset", "'huge'", "paper", "tiny"]),
]


@pytest.mark.parametrize(("name", "argv", "needles"), USAGE_ERRORS,
                         ids=[f"{n}:{' '.join(a[-2:])}" for n, a, _ in USAGE_ERRORS])
def test_bad_values_are_usage_errors(name, argv, needles, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        entry(name)(fill(argv, tmp_path))
    assert exit_info.value.code == 2
    out, err = capsys.readouterr()
    error = err.strip().splitlines()[-1]
    assert "error:" in error and all(n in error for n in needles), err
    assert "Traceback" not in out + err


def plan_file(tmp: Path, name: str = "bad.csv", **changes) -> str:
    """A two-row plan CSV in `tmp`, its columns changed by `changes` (column -> values)."""
    path = tmp / name
    pd.DataFrame({**GOOD_PLAN, **changes}).to_csv(path, index=False)
    return str(path)


def assert_one_line_refusal(main, argv: list[str], needles: list[str], capsys) -> None:
    """`main(argv)` returns 2 and prints one error line holding every needle, and no traceback."""
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert len(err.strip().splitlines()) == 1, err
    assert "error:" in err and all(n in err for n in needles), err
    assert "Traceback" not in out + err


# (entry point, argv, strings the error must contain): refused by the command itself (a FactoryError).
# In {tmp}: a_file (a file), empty.csv (a plan with no rows), bad.csv (a plan with a non-numeric EDV).
ONE_LINE_ERRORS = [
    ("factory", [*PLAN, "--n", "3", "--frames", "0"], ["--frames 0", "2..35"]),
    ("factory", [*PLAN, "--n", "3", "--frames", "36"], ["--frames 36", "2..35"]),
    ("factory", [*PLAN, "--n", "3", "--mix", "NOR=0.5,HCM=0.4"], ["--mix", "sum to 0.9, not 1", "--normalize"]),
    ("factory", [*PLAN, "--n", "3", "--mix", "NOR=0.5,NOR=0.5"], ["--mix", "twice"]),
    ("factory", [*PLAN, "--n", "3", "--mix", "NOR=inf"], ["--mix", "'NOR=inf'", "finite"]),
    ("factory", ["plan", "--n", "3", "--out", "{tmp}"], ["{tmp}", "is a folder"]),
    ("factory", ["plan", "--n", "3", "--out", "{tmp}/a_file/plan.csv"], ["a_file", "is a file"]),
    ("factory", ["plan", "--n", "3", "--out", "{tmp}/a_file"], ["a_file", "already exists", "--overwrite"]),
    ("factory", ["plan", "--plan", "{tmp}/empty.csv", "--out", "{tmp}/p.csv"], ["empty.csv", "no rows"]),
    ("factory", ["montage", "--phantom", "{tmp}", "--out", "{tmp}"], ["{tmp}", "is a folder"]),
    ("factory", ["montage", "--phantom", "{tmp}", "--out", "{tmp}/m.jpg"], ["m.jpg", ".png"]),
    ("factory", ["montage", "--phantom", "{tmp}", "--out", "{tmp}/a_file/m.png"], ["a_file", "is a file"]),
    ("factory", ["montage", "--phantom", "{tmp}", "--out", "{tmp}/a_file"], ["a_file", "already exists"]),
    ("factory", ["phantom", "--out", "{tmp}/ph", "--subjects", "2", "--vendors", "A,Z"], ["vendors", "'Z'", "'C'"]),
    ("factory", ["evaluate", *EVALUATE, "--i3d", "{tmp}/i3d.pt"], ["--i3d", "i3d.pt", "no such file"]),
    ("evaluate", [*EVALUATE, "--i3d", "{tmp}/i3d.pt"], ["--i3d", "i3d.pt", "no such file"]),
    ("generate", [*GENERATE, "--frames", "0"], ["--frames 0"]),
    ("generate", [*GENERATE, "--mix", "NOR=2"], ["--mix", "sum to 2"]),
    ("generate", ["--out", "{tmp}/syn.zarr", "--plan", "{tmp}/bad.csv"], ["bad.csv", "row 2", "edv_ml 'abc'"]),
    ("generate", [*GENERATE, "--tolerance", "ef=-1"], ["--tolerance", "'ef=-1'", "> 0"]),
    ("generate", [*GENERATE, "--tolerance", "mass=3"], ["--tolerance", "'mass=3'", "NAME=LIMIT"]),
    ("generate", [*GENERATE, "--noise-from", "{tmp}/none.zarr"], ["none.zarr"]),
]


@pytest.mark.parametrize(("name", "argv", "needles"), ONE_LINE_ERRORS,
                         ids=[f"{n}:{' '.join(a[-2:])}" for n, a, _ in ONE_LINE_ERRORS])
def test_bad_values_are_one_line_errors(name, argv, needles, tmp_path, capsys):
    (tmp_path / "a_file").write_text("not a folder")
    pd.DataFrame(columns=list(GOOD_PLAN)).to_csv(tmp_path / "empty.csv", index=False)
    plan_file(tmp_path, edv_ml=[120.0, "abc"])
    assert_one_line_refusal(entry(name), fill(argv, tmp_path), fill(needles, tmp_path), capsys)
    assert not (tmp_path / "plan.csv").exists() and not (tmp_path / "p.csv").exists()


IMPOSSIBLE_PLANS = {  # what is wrong -> (changed columns, strings the error must contain)
    "non-numeric": ({"edv_ml": [120.0, "abc"]}, ["row 2", "edv_ml", "'abc'"]),
    "infinite": ({"ef_pct": [60.0, float("inf")]}, ["row 2", "ef_pct", "not a finite number"]),
    "fractional slices": ({"n_slices": [8.5, 9]}, ["row 1", "n_slices 8.5", "integer"]),
    "fractional frames": ({"frames": [25, 30.5]}, ["row 2", "frames 30.5", "integer"]),
    "fractional es_frame": ({"es_frame": [9.5, 11]}, ["row 1", "es_frame 9.5", "integer"]),
    "fractional seed": ({"seed": [1.5, 2]}, ["row 1", "seed 1.5", "integer"]),
    "negative seed": ({"seed": [-4, 2]}, ["row 1", "seed -4"]),
    "tiny EDV": ({"edv_ml": [0.01, 150.0]}, ["row 1", "EDV 0.01 ml"]),
    "huge EDV": ({"edv_ml": [120.0, 5000.0]}, ["row 2", "EDV 5000 ml"]),
    "ESV above EDV": ({"esv_ml": [130.0, 50.0]}, ["row 1", "ESV 130 ml"]),
    "EF of 99 %": ({"ef_pct": [99.0, 60.0]}, ["row 1", "EF 99 %"]),
}


@pytest.mark.parametrize(("changes", "needles"), IMPOSSIBLE_PLANS.values(), ids=IMPOSSIBLE_PLANS)
def test_impossible_plan_files_are_refused_by_row_and_column(changes, needles, tmp_path, capsys):
    argv = ["plan", "--plan", plan_file(tmp_path, **changes), "--out", str(tmp_path / "p.csv")]
    assert_one_line_refusal(cli.main, argv, ["bad.csv", *needles], capsys)
    assert not (tmp_path / "p.csv").exists()


def test_a_valid_plan_is_still_written(tmp_path, capsys):
    out = tmp_path / "sub" / "plan.csv"
    argv = ["plan", "--n", "6", "--mix", "NOR=1,HCM=3", "--normalize", "--frames", "2", "--seed", "4", "--out", str(out)]
    assert cli.main(argv) == 0
    plan = pd.read_csv(out)
    assert len(plan) == 6 and plan["diagnosis"].value_counts().to_dict() == {"HCM": 4, "NOR": 2}
    assert (plan["frames"] == 2).all() and (plan["es_frame"] == 1).all()
    assert f"to {out}" in capsys.readouterr().out
    assert cli.main(argv) == 2, "an existing plan is kept without --overwrite"
    assert cli.main([*argv, "--overwrite"]) == 0
    assert cli.main(["plan", "--plan", plan_file(tmp_path, "good.csv"), "--out", str(tmp_path / "p.parquet")]) == 0
    assert len(pd.read_parquet(tmp_path / "p.parquet")) == 2


def test_unknown_presets_are_input_errors():
    with pytest.raises(FactoryError, match=r"unknown preset 'huge'; choose one of \['paper', 'tiny'\]"):
        get_preset("huge")
    with pytest.raises(FactoryError, match="unknown preset 'huge'"):
        stage_config("vae", "huge", cohort="c.zarr", bundle="b", work="w")
    assert stage_config("vae", "paper", cohort="c.zarr", bundle="b", work="w").steps == 100_000


def test_factory_errors_are_one_line_with_each_entry_points_prefix(monkeypatch, tmp_path, capsys):
    """The one handler (errors.exit_status) prefixes the line with the command; train's Ray start is inside it."""
    import ray

    from factory.errors import StoreError

    def refuse(options):
        raise StoreError(f"{options.cohort}: no such store")

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kwargs: None)
    monkeypatch.setattr(job("train"), "train", refuse)
    cases = [(cli.main, ["plan", "--n", "3", "--out", "{tmp}"], "factory plan: error: "),
             (job("generate").main, ["--bundle", "{tmp}/none", *GENERATE], "generate: error: {tmp}/none"),
             (job("evaluate").main, [*EVALUATE, "--i3d", "{tmp}/i3d.pt"], "evaluate: error: "),
             (job("train").main, TRAIN, "train: error: {tmp}/cohort.zarr: no such store")]
    for main, argv, prefix in cases:
        assert main(fill(argv, tmp_path)) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and err.startswith(fill([prefix], tmp_path)[0]), err
