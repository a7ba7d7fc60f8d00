"""The downstream protocol at toy size, without Ray: cohort split and arms, batches, augmentations, early stopping,
pseudo-labels, statistics, label regimes, the classifier two-sample test, and the command line's refusals."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from factory.errors import InputError
from factory.evaluate import segmenter
from factory.evaluate.arms import PoolSubject, draw
from factory.evaluate.augmentation import standard_augmentation, strong_augmentation
from factory.evaluate.downstream import DownstreamSpec, plan_downstream
from factory.evaluate.generator import check_regime, generator_training
from factory.evaluate.pseudo_labels import pseudo_labels
from factory.evaluate.statistics import summarize
from factory.evaluate.two_sample import classifier_two_sample_test
from factory.presets import get_preset
from factory.store.reader import open_store
from factory.store.writer import StoreWriter

from store_builders import job, scarce_inputs, subject_and_row, vae_bundle, write_store


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, str]:
    return scarce_inputs(tmp_path_factory.mktemp("downstream"))


def plan_for(inputs: dict[str, str], **settings):
    generator = generator_training(open_store(inputs["synthetic"]), open_store(inputs["cohort"]), inputs["bundle"])
    return plan_downstream(inputs["cohort"], inputs["synthetic"], inputs["test"], DownstreamSpec(**settings),
                           generator, seed=0)


def test_cohort_split_pools_and_test_frames(inputs):
    plan = plan_for(inputs)
    experiment, split = plan.experiment, plan.cohort_split
    assert len(split["train_subjects"]) == 5 and len(split["validation_subjects"]) == 1, "6 labeled vendor-A subjects"
    assert not set(split["train_subjects"]) & set(split["validation_subjects"])
    cohort = open_store(inputs["cohort"]).table
    assert set(cohort.loc[[s.index for s in experiment.real], "vendor"]) == {"A"}
    assert {i for i, _ in experiment.validation} <= set(cohort.index[cohort["vendor"] == "A"])
    assert experiment.n_extra == 4, "N = min(5 real, 6 synthetic that passed the gate, 4 unlabeled)"
    assert experiment.extra_share == pytest.approx(4 / 9)
    assert [s.pseudo_row for s in experiment.pseudo] == [0, *np.cumsum([len(s.frames) for s in experiment.pseudo])[:-1]]
    assert all(s.frames == tuple(range(int(cohort.loc[s.index, "n_frames"]))) for s in experiment.pseudo)
    main, extra = experiment.pools("strong")
    assert len(extra) == 4 and all(s.strong for s in extra) and {s.index for s in extra} <= {s.index for s in main}
    assert len(experiment.pools("both")[1]) == 8 and experiment.pools("real")[1] == []
    assert experiment.pools("synthetic-only")[0] == list(experiment.synthetic)
    test = open_store(inputs["test"]).table
    assert set(test.loc[[i for i, _ in experiment.test_frames], "vendor"]) == {"B"}, "never the training vendor"
    assert set(plan.subject_vendor) == {"B"} and len(plan.frame_subject) == len(experiment.test_frames)


def test_batches_take_the_extra_share():
    main = [PoolSubject("m", k, (0, 2)) for k in range(3)]
    extra = [PoolSubject("x", k, (1,)) for k in range(2)]
    samples = draw(main, extra, 0.25, 4000, np.random.default_rng(0))
    assert np.mean([s.store == "x" for s, _ in samples]) == pytest.approx(0.25, abs=0.03)
    assert all(t in s.frames for s, t in samples)
    assert all(s.store == "m" for s, _ in draw(main, [], 0.25, 100, np.random.default_rng(0)))


def test_augmentations_keep_labels_and_range(inputs):
    image, label = open_store(inputs["cohort"]).frame(1, 0)
    sample = {"image": image.astype(np.float32), "label": label.astype(np.float32)}
    standard = [standard_augmentation(3)({**sample}) for _ in range(2)]
    again = standard_augmentation(3)({**sample})
    assert np.array_equal(np.asarray(standard[0]["image"]), np.asarray(again["image"])), "seeded"
    for out in standard:
        assert out["image"].shape == image.shape and set(np.unique(np.asarray(out["label"]))) <= {0, 1, 2, 3}
        assert -1 <= float(out["image"].min()) and float(out["image"].max()) <= 1
    strong = strong_augmentation(0)({**sample})
    assert np.array_equal(np.asarray(strong["label"]), label), "appearance only: the mask is untouched"
    assert not np.allclose(np.asarray(strong["image"]), image, atol=0.05)


def test_training_keeps_the_best_validation_step(inputs, monkeypatch):
    scripted, snapshots = iter([0.2, 0.5, 0.4, 0.3, 0.9]), []

    def validation(net, experiment, store):
        snapshots.append({k: v.clone() for k, v in net.state_dict().items()})
        return next(scripted)

    monkeypatch.setattr(segmenter, "validation_dice", validation)
    plan = plan_for(inputs, steps=20, val_every=2, patience=2, batch_size=2)
    net, record = segmenter.train(plan.experiment, "strong", seed=0)
    assert record["best_step"] == 4 and record["steps_run"] == 8, "two validations without gain stop it"
    assert [v["step"] for v in record["validation"]] == [2, 4, 6, 8]
    assert all(torch.equal(v, snapshots[1][k]) for k, v in net.state_dict().items()), "the step-4 weights"


def test_pseudo_labels_cover_every_frame_and_no_padding_slice(inputs):
    store = open_store(inputs["cohort"])
    masks = pseudo_labels(inputs["bundle"], inputs["cohort"], [12, 13])
    assert masks.shape == (sum(store.subject(i).n_frames for i in (12, 13)), *store.group["image"].shape[2:])
    assert masks.dtype == np.uint8 and masks.max() <= 3
    assert not masks[:, -2:].any(), "the builder's two padding slices stay background"


def test_statistics_of_known_paired_differences():
    frame_subject = np.repeat(np.arange(4), 2)
    vendors = np.array(["B", "B", "C", "C"])
    rng = np.random.default_rng(0)
    results = []
    for seed in range(3):
        real = 0.8 + rng.normal(0, 0.01, (8, 3))
        gain = np.where(vendors[frame_subject] == "B", 0.1, 0.2)[:, None]
        for arm, dice in (("real", real), ("synthetic", real + gain)):
            results.append({"arm": arm, "seed": seed, "dice": dice, "hd95": 10 - 10 * (dice - 0.8),
                            "training": {"best_step": 100 * (seed + 1), "steps_run": 400}})
    section = summarize(results, frame_subject, vendors, n_boot=200, seed=0)
    assert set(section["paired_differences"]) == {"synthetic - real"}
    difference = section["paired_differences"]["synthetic - real"]
    for group, expected in (("all", 0.15), ("B", 0.1), ("C", 0.2)):
        cell = difference["dice"][group]["mean"]
        assert cell["mean"] == pytest.approx(expected) and cell["n_seeds"] == 3
        for low, high in (cell["ci95_test_subjects"], cell["ci95_seeds"]):
            assert low <= expected + 1e-9 and expected - 1e-9 <= high
    assert difference["hd95"]["all"]["LV"]["mean"] == pytest.approx(-1.5)
    real = section["arms"]["real"]
    assert real["letter"] == "a" and real["steps"]["best_step"]["mean"] == pytest.approx(200)
    assert set(real["dice"]) == {"all", "B", "C"} and len(real["seeds"]) == 3
    one_seed = summarize([r for r in results if r["seed"] == 0], frame_subject, vendors, n_boot=50, seed=0)
    assert all(math.isnan(v) for v in one_seed["paired_differences"]["synthetic - real"]["dice"]["all"]["mean"]
               ["ci95_seeds"])


def test_label_regimes(inputs, tmp_path):
    generator = generator_training(open_store(inputs["synthetic"]), open_store(inputs["cohort"]), inputs["bundle"])
    assert generator["cohort_is_training_cohort"] and generator["labeled_subjects"] == {"A": 6, "B": 6}
    check_regime("scarce", generator)
    many = write_store(tmp_path / "many.zarr", n=22)
    generator = generator_training(open_store(inputs["synthetic"]), open_store(many),
                                   vae_bundle(tmp_path / "many_bundle", many))
    with pytest.raises(InputError, match="at most 20 labeled subjects.*saw 22"):
        check_regime("scarce", generator)
    check_regime("full", generator)
    other = generator_training(open_store(inputs["synthetic"]), open_store(many), inputs["bundle"])
    assert other["labeled_subjects"] is None
    with pytest.raises(InputError, match="cannot tell .* not the generator's training cohort"):
        check_regime("scarce", other)
    unnamed = generator_training(open_store(inputs["synthetic"]), open_store(inputs["cohort"]))
    with pytest.raises(InputError, match="names no model bundle"):
        check_regime("scarce", unnamed)


def negated_store(path) -> str:
    """A synthetic-kind store of the builder's subjects with negated images: trivially told apart from real ones."""
    writer = StoreWriter.create(str(path), n_subjects=8, preset=get_preset("tiny"), kind="synthetic")
    for i in range(8):
        subject, row = subject_and_row(i, "synthetic", "neg")
        subject.image[:] = -subject.image
        writer.write_subject(i, subject, row)
    writer.finalize()
    return str(path)


def test_two_sample_test_tells_negated_images_apart(inputs, tmp_path):
    section = classifier_two_sample_test(open_store(negated_store(tmp_path / "neg.zarr")),
                                         open_store(inputs["cohort"]), open_store(inputs["test"]), steps=15, seed=0,
                                         n_boot=100)
    assert set(section["per_vendor"]) == {"A", "B"}
    for result in section["per_vendor"].values():
        assert result["auc"] > 0.9 and result["n_subjects_per_side"] == 4
        assert result["real"].startswith("cohort store"), "the 3-subject test store is too small per vendor"
        low, high = result["auc_ci95"]
        assert low <= result["auc"] <= high


def run_cli(argv: list[str], capsys) -> tuple[int, str]:
    status = job("evaluate").main(argv)
    return status, capsys.readouterr().err.strip()


def test_command_line_refusals(inputs, tmp_path, capsys):
    many = write_store(tmp_path / "many.zarr", n=22)
    many_bundle = vae_bundle(tmp_path / "many_bundle", many)
    (tmp_path / "empty").mkdir()
    base = ["--synthetic", inputs["synthetic"], "--test", inputs["test"], "--out", str(tmp_path / "eval")]
    cases = [
        (["--cohort", inputs["cohort"], "--regime", "scarce"], "--regime: only with --downstream"),
        (["--cohort", many, "--bundle", many_bundle, "--downstream", "--regime", "scarce"],
         "--regime scarce allows a generator that saw at most 20 labeled subjects"),
        (["--cohort", inputs["cohort"], "--downstream", "--regime", "scarce"], "names no model bundle"),
        (["--cohort", inputs["cohort"], "--bundle", str(tmp_path / "empty"), "--downstream"], "is not a model bundle"),
        (["--cohort", inputs["cohort"], "--downstream"], "arm pseudo needs the generator's bundle"),
        (["--cohort", inputs["cohort"], "--bundle", inputs["bundle"], "--downstream", "--n-extra", "2",
          "--arms", "real,synthetic-only", "--train-vendor", "C"], "0 labeled vendor-C subjects"),
    ]
    for argv, message in cases:
        status, err = run_cli(base + argv, capsys)
        assert status == 2 and message in err and len(err.splitlines()) == 1, (argv, err)
    assert not (tmp_path / "eval").exists(), "refused before any work"
    with pytest.raises(SystemExit) as exit_info:
        job("evaluate").main(base + ["--cohort", inputs["cohort"], "--downstream", "--extra-share", "1"])
    assert exit_info.value.code == 2 and "between 0 and 1" in capsys.readouterr().err
