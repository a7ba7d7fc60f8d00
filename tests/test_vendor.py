"""Target-domain generation: the vendor token, vendor plans and their refusals (issue #13)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from factory import cli
from factory.bundle import start_bundle, update_config
from factory.errors import InputError
from factory.models.conditioning import ClinicalNormalizer, vendor_ids, vendor_vocabulary
from factory.models.unets import AnatomyUNet, MotionUNet
from factory.presets import get_preset
from factory.sample.plan import assign_vendors, make_plan, vendor_weights

REPO = Path(__file__).resolve().parents[1]
TINY = get_preset("tiny")
VENDORS = ["A", "B", "C"]


def randomised(model: torch.nn.Module) -> torch.nn.Module:
    """`model` with its zero-initialised weights (MONAI's output and attention projections) drawn at random."""
    torch.manual_seed(0)
    with torch.no_grad():
        for parameter in model.parameters():
            if not parameter.any():
                parameter.normal_(std=0.1)
    return model.eval()


def test_the_vocabulary_is_the_cohorts_named_vendors():
    assert vendor_vocabulary(["B", "A", None, "unknown", "synthetic", "", "B", float("nan")]) == ["A", "B"]
    assert vendor_ids(["B", "", None], ["A", "B"]).tolist() == [1, 2, 2]  # no vendor: the null id
    with pytest.raises(InputError, match=r"unknown vendor \['X'\].*\['A', 'B'\]"):
        vendor_ids(["X"], ["A", "B"])


@pytest.mark.parametrize("unet", [AnatomyUNet, MotionUNet])
def test_the_vendor_token_changes_the_prediction_and_dropping_it_removes_it(unet):
    model = randomised(unet(TINY, n_vendors=len(VENDORS)))
    x = torch.randn(1, *TINY.latent_shape).expand(2, -1, -1, -1, -1)  # one sample twice, vendors 0 and 1
    z = TINY.geometry.n_slices
    extra = ({"z_ed": torch.randn(1, *TINY.latent_shape).expand(2, -1, -1, -1, -1), "phase": torch.tensor([50.0, 50.0])}
             if unet is MotionUNet else {})
    common = (x, torch.tensor([500, 500]), torch.ones(2, z, dtype=torch.bool), torch.tensor([0, 0]),
              torch.zeros(2, 5))
    with torch.no_grad():
        a, b = model(*common, vendor=torch.tensor([0, 1]), **extra)
        dropped = model(*common, vendor=torch.tensor([0, 1]), drop_vendor=torch.tensor([True, True]), **extra)
    assert (a - b).abs().max() > 1e-4
    torch.testing.assert_close(dropped[0], dropped[1], atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="vendor"):
        model(*common, **extra)


def test_the_vendor_token_changes_the_sampled_anatomy_for_the_same_seed():
    from factory.models.build import build_model
    from factory.sample.pipeline import CinePipeline, SamplerSettings

    table = pd.DataFrame({"edv_ml": [150.0, 200.0], "esv_ml": [60.0, 90.0], "ef_pct": [60.0, 55.0],
                          "myo_mass_g": [120.0, 140.0], "n_slices": [9.0, 10.0], "diagnosis": ["NOR", "DCM"]})
    mass_fit = {d: [0.5, 50.0] for d in ("NOR", "MINF", "DCM", "HCM", "RV")}
    models = {name: randomised(build_model(TINY, name, len(VENDORS))) for name in ("vae", "anatomy", "motion")}
    pipeline = CinePipeline(models["vae"], models["anatomy"], models["motion"], TINY, 1.0, 1.0,
                            ClinicalNormalizer().fit(table), mass_fit, SamplerSettings(steps=2), vendors=VENDORS)
    plan = make_plan(2, TINY, seed=3, diagnoses=["NOR"], frames=4)
    latents = {}
    for vendor in ("A", "B"):
        cond = pipeline.conditions(plan.assign(vendor=vendor))
        latents[vendor] = pipeline.denoise(pipeline.anatomy, pipeline.noise(list(plan["seed"]), 0), cond, 3.0, 2)
    assert (latents["A"] - latents["B"]).abs().max() > 1e-4
    with pytest.raises(InputError, match="unknown vendor"):
        pipeline.conditions(plan.assign(vendor="X"))


def test_vendor_plans_split_every_diagnosis_and_refuse_bad_mixes():
    plan = assign_vendors(make_plan(20, TINY, seed=0, balance="diagnosis"), vendor_weights("B,C", None, VENDORS))
    per_diagnosis = plan.groupby("diagnosis")["vendor"].value_counts().unstack()
    assert (per_diagnosis["B"] == 2).all() and (per_diagnosis["C"] == 2).all()
    weights = vendor_weights(None, "B=0.75,C=0.25", VENDORS)
    assert assign_vendors(make_plan(8, TINY, diagnoses=["NOR"]), weights)["vendor"].tolist().count("B") == 6
    with pytest.raises(InputError, match=r"sum to 0\.9.*not 1"):
        vendor_weights(None, "B=0.5,C=0.4", VENDORS)
    with pytest.raises(InputError, match=r"'X'.*\['A', 'B', 'C'\]"):
        vendor_weights("X", None, VENDORS)
    with pytest.raises(InputError, match="no vendor vocabulary"):
        vendor_weights("B", None, [])


@pytest.fixture(scope="module")
def vendor_bundle_config(tmp_path_factory) -> Path:
    """A bundle.json with a vendor vocabulary (no weights: the plan is refused before anything loads them)."""
    path = tmp_path_factory.mktemp("vendor_bundle")
    start_bundle(path, TINY, {"store": "test", "n_subjects": 40, "table_sha256": "0" * 64})
    update_config(path, {"vendors": VENDORS, "vendor_counts": {"A": 20, "B": 10, "C": 10}})
    return path


def generate_job():
    """jobs/generate.py as a module (the jobs folder is not a package)."""
    spec = importlib.util.spec_from_file_location("jobs_generate_vendor", REPO / "jobs" / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("flags, message", [
    (["--vendors", "B,X"], "unknown vendor ['X']; this bundle knows ['A', 'B', 'C']"),
    (["--vendor-mix", "B=0.5,C=0.6"], "weights sum to 1.1, not 1"),
    (["--vendor-mix", "B=0.5,Q=0.5"], "NAME in ['A', 'B', 'C']"),
])
@pytest.mark.parametrize("program", ["plan", "generate"])
def test_unknown_vendors_and_bad_mixes_are_refused_at_the_command_line(tmp_path, vendor_bundle_config, program,
                                                                       flags, message, capsys, monkeypatch):
    out = tmp_path / ("plan.csv" if program == "plan" else "syn.zarr")
    argv = ["--bundle", str(vendor_bundle_config), "--n", "4", "--out", str(out), *flags]
    if program == "plan":
        status = cli.main(["plan", *argv])
    else:
        job = generate_job()
        monkeypatch.setattr(job, "generate", lambda *a, **k: pytest.fail("a bad vendor request reached generation"))
        status = job.main(argv)
    err = capsys.readouterr().err
    assert status == 2 and message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert not out.exists()


def test_factory_plan_writes_the_vendor_column_and_defaults_to_the_cohorts_mix(tmp_path, vendor_bundle_config):
    out = tmp_path / "plan.csv"
    argv = ["plan", "--bundle", str(vendor_bundle_config), "--n", "8", "--diagnoses", "NOR", "--out", str(out)]
    assert cli.main(argv) == 0
    assert pd.read_csv(out)["vendor"].tolist().count("A") == 4  # A 20 : B 10 : C 10 of the training cohort
    assert cli.main([*argv, "--vendors", "C", "--overwrite"]) == 0
    assert set(pd.read_csv(out)["vendor"]) == {"C"}


def test_animation_plans_keep_each_source_subjects_anatomy_and_ask_for_a_drawn_ef():
    from factory.sample.plan import animation_plan, check_sources

    sources = pd.DataFrame({"subject_id": ["a", "b", "pool"], "diagnosis": ["NOR", "HCM", None],
                            "edv_ml": [150.0, 110.0, np.nan], "es_frame": [9.0, 8.0, np.nan],
                            "n_frames": [25, 20, 30], "n_slices": [9, 10, 8], "vendor": ["A", "B", "C"]})
    plan = animation_plan(sources, 5, TINY, seed=1)
    assert plan["source_subject"].tolist() == ["a", "b", "a", "b", "a"]  # the unlabeled pool study cannot be animated
    assert plan["edv_ml"].tolist() == [150.0, 110.0, 150.0, 110.0, 150.0]
    assert plan["vendor"].tolist()[:2] == ["A", "B"] and plan["frames"].tolist()[:2] == [25, 20]
    assert plan["ef_pct"].nunique() == 5  # one draw per row from its diagnosis' priors
    np.testing.assert_allclose(plan["esv_ml"], plan["edv_ml"] * (1 - plan["ef_pct"] / 100))
    with pytest.raises(InputError, match="give --from STORE"):
        check_sources(plan, None, "plan.csv")
    with pytest.raises(InputError, match=r"row 1: 'pool'"):
        check_sources(plan.assign(source_subject=["pool", "a", "a", "b", "a"]), sources, "plan.csv")
    with pytest.raises(InputError, match="no subject to animate"):
        animation_plan(sources.iloc[2:], 1, TINY)


def test_a_bundle_with_a_malformed_vendor_vocabulary_is_refused(tmp_path):
    from factory.bundle import read_config
    from factory.errors import BundleError

    start_bundle(tmp_path, TINY, {"store": "test", "n_subjects": 1, "table_sha256": "0" * 64})
    update_config(tmp_path, {"vendors": ["A", "A"]})
    with pytest.raises(BundleError, match=r"vendor vocabulary \['A', 'A'\]"):
        read_config(tmp_path)
