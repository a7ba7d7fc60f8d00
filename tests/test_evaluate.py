"""The evaluation job: metrics on known inputs, and a toy end-to-end run with the downstream experiment."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest

from factory.errors import StoreError
from factory.evaluate.classifier import SoftmaxClassifier, cross_validated_accuracy
from factory.evaluate.coherence import subject_coherence
from factory.evaluate.features import mean_wall_thickness_mm
from factory.evaluate.overlap import dice, hd95
from factory.reporting.stats import bootstrap_ci, frechet_distance, mae, pearson
from factory.data.clinical import label_volumes_ml
from factory.record import cycle_phase

from store_builders import job, scarce_inputs, write_store

SPACING = (10.0, 2.5, 2.5)


def test_pearson_and_mae_of_identical_columns():
    x = np.array([3.0, 1.0, 4.0, 1.5, 9.0])
    assert pearson(x, x) == (pytest.approx(1.0), 5)
    assert pearson(x, -2 * x + 1)[0] == pytest.approx(-1.0)
    assert mae(x, x + 2) == pytest.approx(2.0)
    assert math.isnan(pearson([1.0, 2.0], [1.0, 2.0])[0])


def test_bootstrap_interval_contains_the_estimate_and_is_seeded():
    rng = np.random.default_rng(0)
    x = rng.normal(size=50)
    y = x + rng.normal(scale=0.5, size=50)
    low, high = bootstrap_ci(lambda a, b: pearson(a, b)[0], x, y, n_boot=300, seed=1)
    assert low < pearson(x, y)[0] < high
    assert bootstrap_ci(np.mean, x, n_boot=300, seed=1) == bootstrap_ci(np.mean, x, n_boot=300, seed=1)


def test_bootstrap_leaves_out_undefined_replicates():
    x, y = np.array([1.0, 2.0, 3.0, 4.0]), np.array([1.0, 2.5, 2.9, 4.2])
    r = lambda a, b: pearson(a, b)[0]  # noqa: E731
    low, high = bootstrap_ci(r, x, y, n_boot=200, seed=0)  # some resamples repeat rows until r is undefined
    assert 0.5 < low <= high == pytest.approx(1.0)
    assert all(math.isnan(v) for v in bootstrap_ci(r, [1.0, 1.0, 1.0], [1.0, 2.0, 3.0], n_boot=50))
    assert all(math.isnan(v) for v in bootstrap_ci(np.mean, [1.0], n_boot=50))


def test_frechet_distance_of_a_set_with_itself_and_of_shifted_gaussians():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(4000, 4))
    shift = np.array([1.0, -2.0, 0.5, 0.0])
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    assert frechet_distance(a, a + shift) == pytest.approx(np.sum(shift ** 2), rel=1e-6)
    b = rng.normal(size=(4000, 4)) + shift  # independent sample: equal up to sampling error
    assert frechet_distance(a, b) == pytest.approx(np.sum(shift ** 2), abs=0.1)


def cube(offset: int = 0) -> np.ndarray:
    """A (1, 12, 16, 16) LV (label 3) cube of 6 x 6 x 6 voxels, shifted by `offset` columns."""
    mask = np.zeros((1, 12, 16, 16), np.uint8)
    mask[0, 2:8, 4:10, 4 + offset:10 + offset] = 3
    return mask


def test_dice_and_hd95_of_a_shifted_cube():
    # Shift by 2 columns (2 x 2.5 mm): overlap 6 x 6 x 4 -> Dice 2 * 144 / 432; the shifted faces lie
    # 2 voxels from the original ones and make up more than 5 % of the surface -> HD95 = 5 mm.
    assert dice(cube(2), cube())[0, 2] == pytest.approx(2 / 3)
    assert hd95(cube(2), cube(), SPACING)[0, 2] == pytest.approx(5.0)
    assert np.isnan(dice(cube(2), cube())[0, 0]), "RV absent from the truth: no score"
    # A structure missing from the prediction scores the field-of-view diagonal.
    diagonal = math.sqrt((12 * 10.0) ** 2 + 2 * (16 * 2.5) ** 2)
    assert hd95(np.zeros_like(cube()), cube(), SPACING)[0, 2] == pytest.approx(diagonal)


def test_wall_thickness_of_a_ring():
    yy, xx = np.mgrid[:64, :64]
    radius = np.hypot(yy - 32, xx - 32)
    ring = np.where(radius < 8, 3, np.where(radius < 12, 2, 0)).astype(np.uint8)
    mask = np.stack([ring, ring])  # two slices
    assert mean_wall_thickness_mm(mask, SPACING) == pytest.approx(4 * 2.5, rel=0.1)


def test_classifier_separates_clusters():
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(0, 1, (30, 3)), rng.normal(5, 1, (30, 3))])
    labels = np.array(["NOR"] * 30 + ["DCM"] * 30)
    x[0, 1] = np.nan  # missing values are imputed
    assert (SoftmaxClassifier().fit(x, labels).predict(x) == labels).mean() > 0.95
    assert cross_validated_accuracy(x, labels) > 0.9


def test_coherence_of_a_smooth_contracting_sequence():
    n_frames, es = 10, 4
    phase = cycle_phase(n_frames, es)
    mask = np.zeros((n_frames, 6, 64, 64), np.uint8)
    for t in range(n_frames):
        half = 12 - round(8 * math.sin(math.pi * phase[t] / 200))  # smallest at phase 100
        mask[t, 1:5, 32 - half - 2:32 + half + 2, 32 - half - 2:32 + half + 2] = 2
        mask[t, 1:5, 32 - half:32 + half, 32 - half:32 + half] = 3
    measures = subject_coherence(mask, label_volumes_ml(mask, SPACING), phase, SPACING)
    assert measures["es_frame_error"] == 0 and measures["es_phase_error"] == 0
    assert 0.5 < measures["frame_dice_LV"] <= 1.0
    assert measures["smoothness_LV"] < 0.2
    assert math.isnan(measures["smoothness_RV"]), "no RV at all"


@pytest.fixture(scope="module")
def toy_stores(tmp_path_factory) -> dict[str, str]:
    """Cohort (vendors A and B, ED/ES labeled), held-out test store and synthetic store, tiny preset."""
    root = tmp_path_factory.mktemp("stores")
    return {"cohort": write_store(root / "cohort.zarr", n=12),
            "test": write_store(root / "test.zarr", n=6, prefix="t"),
            "synthetic": write_store(root / "syn.zarr", n=8, kind="synthetic", prefix="syn")}


@pytest.fixture(scope="module")
def local_ray():
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False)
    yield
    ray.shutdown()


def numbers_and_nulls(value, parent: dict | None = None, key: str = "") -> tuple[list, list[tuple[str, dict]]]:
    """Every number in a JSON document, and every null as (its key, the object holding it)."""
    if isinstance(value, dict):
        found = [numbers_and_nulls(v, value, k) for k, v in value.items()]
    elif isinstance(value, list):
        found = [numbers_and_nulls(v, parent, key) for v in value]
    elif value is None:
        return [], [(key, parent)]
    else:
        return ([value] if isinstance(value, (int, float)) and not isinstance(value, bool) else []), []
    return [n for f in found for n in f[0]], [n for f in found for n in f[1]]


def undefined_statistic(key: str, holder: dict) -> bool:
    """Nulls the report may hold: an SD of one value, a Pearson r (and its interval) of fewer than 3 pairs."""
    return (key == "sd" and holder["n"] == 1) or (key.startswith("pearson_r") and holder["n"] < 3)


@pytest.mark.slow
def test_toy_evaluation_end_to_end(tmp_path, local_ray):
    stores = scarce_inputs(tmp_path)  # 12 labeled cohort subjects: a generator of the scarce regime
    main = job("evaluate").main
    out = tmp_path / "eval"
    argv = ["--synthetic", stores["synthetic"], "--cohort", stores["cohort"], "--test", stores["test"],
            "--out", str(out), "--extractor-steps", "2", "--c2st-steps", "2", "--bootstrap", "50"]
    downstream = ["--downstream", "--regime", "scarce", "--bundle", stores["bundle"], "--seeds", "2", "--steps", "4",
                  "--val-every", "2", "--patience", "1", "--batch-size", "2"]
    assert main(argv + downstream) == 0
    assert not (tmp_path / ".eval.runs").exists(), "the finished runs are removed once the report holds them"
    text = (out / "report.json").read_text()
    report = json.loads(text, parse_constant=lambda c: pytest.fail(f"non-finite {c} in report.json"))
    assert {"controllability", "coherence", "downstream"} <= set(report)
    values, nulls = numbers_and_nulls(report)
    assert len(values) > 100 and all(math.isfinite(n) for n in values)
    assert all(undefined_statistic(key, holder) for key, holder in nulls), [key for key, _ in nulls]

    control = report["controllability"]
    assert set(control["targets"]) == {"edv_ml", "esv_ml", "ef_pct"}
    assert -1 <= control["targets"]["edv_ml"]["overall"]["pearson_r"] <= 1
    assert control["gate"]["gate_failed"] == 2  # subjects 0 and 5 of the synthetic builder
    faith = control["diagnosis_faithfulness"]
    assert 0 <= faith["accuracy"] <= 1 and np.sum(faith["confusion"]) == 8

    fvd = report["coherence"]["fvd"]
    assert fvd["metric"] == "FVD (cohort-trained extractor)"
    assert fvd["real_vs_real"] >= 0 and fvd["real_vs_synthetic"] >= 0
    c2st = report["coherence"]["c2st"]["per_vendor"]
    assert set(c2st) == {"A", "B"} and all(0 <= r["auc"] <= 1 for r in c2st.values())
    masks = report["coherence"]["masks"]
    assert masks["synthetic"]["n_subjects"] == 8 and masks["real"]["n_subjects"] == 0
    assert 0 <= masks["synthetic"]["gate_pass_share"]["mean"] <= 1
    assert report["generator"]["labeled_subjects"] == {"A": 6, "B": 6}

    down = report["downstream"]
    assert set(down["arms"]) == {"real", "strong", "synthetic", "both", "synthetic-only", "pseudo"}
    for arm in down["arms"].values():
        assert 0 <= arm["dice"]["all"]["mean"]["mean"] <= 1 and arm["hd95"]["all"]["mean"]["mean"] > 0
        assert set(arm["dice"]) == {"all", "B"} and len(arm["seeds"]) == 2
        assert all(s["training"]["best_step"] in (2, 4) for s in arm["seeds"])
    assert set(down["paired_differences"]) == {"synthetic - real", "synthetic - strong", "both - strong",
                                               "synthetic - pseudo"}
    assert down["protocol"]["n_extra"] == 4  # 5 training subjects, 6 synthetic that passed the gate, 4 unlabeled
    assert down["cohort_split"]["regime"] == "scarce" and len(down["cohort_split"]["pseudo_subjects"]) == 4
    assert "held-out test store" in down["protocol"]["test"]
    assert down["protocol"]["note"] == "2 seed(s): the protocol asks for at least 3"

    markdown = (out / "report.md").read_text()
    for heading in ("## Controllability", "## Temporal coherence and realism", "### Classifier two-sample test",
                    "## Downstream cross-vendor", "Paired difference synthetic - strong"):
        assert heading in markdown
    for figure in re.findall(r"\]\(([^)]+\.png)\)", markdown):
        assert (out / figure).is_file(), figure

    assert main(argv) == 2, "a non-empty --out is refused"


@pytest.mark.slow
def test_an_interrupted_downstream_experiment_resumes_with_its_finished_runs(tmp_path, local_ray, capsys):
    from factory.evaluate.downstream import DownstreamSpec, downstream, plan_downstream
    from factory.evaluate.finished_runs import FinishedRuns
    from factory.evaluate.generator import generator_training
    from factory.store.reader import open_store

    stores = scarce_inputs(tmp_path)
    generator = generator_training(open_store(stores["synthetic"]), open_store(stores["cohort"]), stores["bundle"])

    def run(resume: bool, steps: int = 2, n_extra: int | None = None) -> tuple[dict, str]:
        spec = DownstreamSpec(arms=("real", "synthetic"), seeds=1, steps=steps, val_every=1, patience=1, batch_size=2,
                              n_extra=n_extra)
        plan = plan_downstream(stores["cohort"], stores["synthetic"], stores["test"], spec, generator, seed=0)
        finished = FinishedRuns(tmp_path / "eval")
        if not resume:  # what evaluate() does first
            finished.discard()
        section = downstream(plan, 20, 0, finished)
        return section, capsys.readouterr().out

    first, printed = run(resume=False)
    folder = FinishedRuns(tmp_path / "eval").folder
    assert printed.count("] arm ") == 2 and sorted(p.name for p in folder.iterdir()) == [
        "real-seed0.json", "synthetic-seed0.json"], "each finished run is saved as it finishes"
    (folder / "synthetic-seed0.json").unlink()  # interrupted while the synthetic arm trained
    again, printed = run(resume=True)
    assert "1 of 2 runs reused" in printed and printed.count("] arm ") == 1, "only the unfinished run is trained"
    same = [json.dumps(section["arms"], sort_keys=True, default=str) for section in (first, again)]
    assert same[0] == same[1] and "resumed" in again["protocol"], "the same numbers as the uninterrupted run"
    _, printed = run(resume=True, n_extra=2)
    assert "1 of 2 runs reused" in printed and "arm synthetic seed 0 done" in printed, "N changes only the synthetic arm"
    _, printed = run(resume=True, steps=3)
    assert "reused" not in printed and printed.count("] arm ") == 2, "another budget: nothing is reused"
    _, printed = run(resume=False)
    assert "discarding the finished work" in printed and printed.count("] arm ") == 2


def test_a_finished_report_section_is_reused_only_under_its_key(tmp_path, toy_stores, capsys):
    from factory.evaluate.finished_runs import FinishedRuns, section_key

    finished, calls = FinishedRuns(tmp_path / "eval"), []

    def compute() -> dict:
        calls.append(1)
        return {"value": np.float32(0.25), "interval": np.array([0.1, np.nan]), "note": "n"}

    key = section_key("fvd", [toy_stores["cohort"], toy_stores["synthetic"]], {"steps": 3, "seed": 0})
    first = finished.section("fvd", key, compute)
    again = finished.section("fvd", key, compute)
    assert len(calls) == 1 and "fvd: reused" in capsys.readouterr().out, "saved once, then reused"
    assert again["value"] == 0.25 and again["interval"][0] == 0.1 and np.isnan(again["interval"][1]), "NaN stays NaN"
    assert float(first["value"]) == again["value"]
    for other in (section_key("fvd", [toy_stores["cohort"], toy_stores["synthetic"]], {"steps": 4, "seed": 0}),
                  section_key("fvd", [toy_stores["cohort"], toy_stores["test"]], {"steps": 3, "seed": 0}),
                  section_key("c2st", [toy_stores["cohort"], toy_stores["synthetic"]], {"steps": 3, "seed": 0})):
        assert other != key, "another setting, store or section is another key"
    finished.section("fvd", "another key", compute)
    assert len(calls) == 2, "a section saved under another key is computed again"
    finished.discard()
    assert not finished.folder.exists() and "discarding" in capsys.readouterr().out


def test_an_interrupted_evaluation_resumes_with_its_finished_sections(tmp_path, toy_stores, monkeypatch, capsys):
    import factory.evaluate.job as evaluation
    from factory.evaluate.finished_runs import runs_folder

    main, out = job("evaluate").main, tmp_path / "eval"
    argv = ["--synthetic", toy_stores["synthetic"], "--cohort", toy_stores["cohort"], "--test", toy_stores["test"],
            "--extractor-steps", "2", "--c2st-steps", "2", "--bootstrap", "20"]

    def killed(*args, **kwargs):
        raise RuntimeError("killed")

    monkeypatch.setattr(evaluation, "vendor_fidelity", killed)  # killed after FVD and the two-sample test
    with pytest.raises(RuntimeError):
        main(argv + ["--out", str(out)])
    monkeypatch.undo()
    assert sorted(p.name for p in runs_folder(out).iterdir()) == ["section-c2st.json", "section-fvd.json"]
    capsys.readouterr()
    assert main(argv + ["--out", str(out), "--resume"]) == 0
    printed = capsys.readouterr().out
    assert "fvd: reused" in printed and "c2st: reused" in printed and "vendor: reused" not in printed
    assert not runs_folder(out).exists(), "removed once the report holds them"
    assert main(argv + ["--out", str(tmp_path / "fresh")]) == 0
    resumed, fresh = (json.loads((tmp_path / name / "report.json").read_text())["coherence"] for name in ("eval", "fresh"))
    assert resumed == fresh, "a resumed evaluation reports what an uninterrupted one does"


def test_fvd_with_a_torchscript_extractor(tmp_path, toy_stores):
    import torch

    from factory.evaluate.video import fvd
    from factory.store.reader import open_store

    class MeanPool(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.mean(dim=(3, 4)).flatten(1)

    path = tmp_path / "extractor.pt"
    torch.jit.script(MeanPool()).save(str(path))
    result = fvd(open_store(toy_stores["cohort"]), open_store(toy_stores["synthetic"]), i3d=str(path))
    assert result["metric"] == "FVD (TorchScript extractor)" and result["n_reference"] == 6
    assert math.isfinite(result["real_vs_real"]) and math.isfinite(result["real_vs_synthetic"])


def test_downstream_falls_back_to_the_cohort_and_says_so(toy_stores):
    from factory.evaluate.downstream import held_out_set
    from factory.store.reader import open_store

    store, subjects, note = held_out_set(open_store(toy_stores["cohort"]), None, "A")
    assert store.url == toy_stores["cohort"] and len(subjects) == 6
    assert note.startswith("no --test store was given")


def test_output_directory_rules(tmp_path):
    from factory.evaluate.job import KIND
    from factory.outputs import check_output, replacing

    (tmp_path / "keep.txt").write_text("x")
    with pytest.raises(StoreError, match="only replaces an earlier evaluation"):
        check_output(str(tmp_path), overwrite=True, accept=(KIND,))
    assert (tmp_path / "keep.txt").exists(), "--overwrite replaces only an earlier evaluation"
    earlier = tmp_path / "eval"
    with replacing(earlier, KIND, overwrite=False) as staging:
        (staging / "report.json").write_text("{}")
    with pytest.raises(StoreError, match="--overwrite"):
        check_output(str(earlier), overwrite=False, accept=(KIND,))
    with pytest.raises(RuntimeError), replacing(earlier, KIND, overwrite=True) as staging:
        raise RuntimeError("evaluation failed half-way")
    assert (earlier / "report.json").read_text() == "{}", "a failed evaluation leaves the earlier one as it was"
    with replacing(earlier, KIND, overwrite=True) as staging:
        (staging / "report.md").write_text("# new")
    assert sorted(p.name for p in earlier.iterdir()) == [".cine-factory.json", "report.md"]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == [], "no staging folder left behind"


@pytest.mark.parametrize("swap, expected", [("synthetic", "expected a synthetic store"),
                                             ("cohort", "expected a cohort store")])
def test_store_kinds_must_match_their_role(toy_stores, tmp_path, swap, expected):
    from factory.evaluate.job import EvaluationSpec, evaluate

    stores = dict(toy_stores)
    stores[swap] = toy_stores["cohort" if swap == "synthetic" else "synthetic"]
    spec = EvaluationSpec(synthetic=stores["synthetic"], cohort=stores["cohort"], out=str(tmp_path / "eval"))
    with pytest.raises(StoreError, match=expected):
        evaluate(spec)
    assert not (tmp_path / "eval").exists()
