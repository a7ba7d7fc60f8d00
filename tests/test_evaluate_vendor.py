"""The evaluation's vendor section: a vendor classifier trained on real frames judges synthetic subjects."""

from __future__ import annotations

import json

import numpy as np
import pytest

from factory.data.clinical import measure
from factory.data.phantom import generate_subject
from factory.data.phantom.subject import default_priors
from factory.data.preprocess import preprocess
from factory.evaluate.report import vendor_lines
from factory.data.noise import heart_region
from factory.evaluate.vendor import HISTOGRAM_BINS, vendor_fidelity, wasserstein
from factory.presets import get_preset
from factory.store.fs import json_safe
from factory.store.reader import open_store
from factory.store.writer import StoreWriter

N_FRAMES, ES_FRAME = 3, 1  # short phantom cycles: the test's cost is the phantom's rendering, per frame


class ShortCycles:
    """The shipped priors with every cycle cut to N_FRAMES frames (ES at ES_FRAME)."""

    def sample(self, diagnosis: str, rng: np.random.Generator) -> dict:
        return default_priors().sample(diagnosis, rng) | {"n_frames": N_FRAMES, "es_frame": ES_FRAME}


def phantom_subjects(vendors: str, seed: int) -> list:
    """Phantom subjects of the given vendors (one letter each), preprocessed to the tiny preset's geometry."""
    preset = get_preset("tiny")
    return [preprocess(generate_subject(k, seed * 1000 + k, "NOR", v, priors=ShortCycles()).to_record(), preset)
            for k, v in enumerate(vendors)]


def write(path, subjects: list, kind: str, requested: str | None = None, vendor: str | None = None) -> str:
    """A store of `subjects`; synthetic rows get `requested_vendor` = `requested` when given."""
    writer = StoreWriter.create(str(path), n_subjects=len(subjects), preset=get_preset("tiny"), kind=kind)
    for i, subject in enumerate(subjects):
        row = {"source": kind, "vendor": vendor or subject.meta["vendor"], "diagnosis": "NOR",
               **measure(subject.mask, subject.spacing_mm, subject.es_frame)}
        if requested is not None:
            row["requested_vendor"] = requested
        writer.write_subject(i, subject, row)
    writer.finalize()
    return str(path)


@pytest.fixture(scope="module")
def stores(tmp_path_factory) -> dict[str, str]:
    """A phantom cohort of vendors A and B (6 subjects each) and synthetic-kind stores of 4 unseen B subjects."""
    root = tmp_path_factory.mktemp("vendor")
    cohort = phantom_subjects("AB" * 6, seed=1)
    unseen = phantom_subjects("BBBB", seed=2)
    return {"cohort": write(root / "cohort.zarr", cohort, "cohort"),
            "as_b": write(root / "as_b.zarr", unseen, "synthetic", requested="B", vendor="synthetic"),
            "as_a": write(root / "as_a.zarr", unseen, "synthetic", requested="A", vendor="synthetic"),
            "old": write(root / "old.zarr", unseen, "synthetic", vendor="synthetic"),
            "only_a": write(root / "only_a.zarr", [s for s in cohort if s.meta["vendor"] == "A"], "cohort")}


def test_real_subjects_of_the_requested_vendor_are_recognised(stores):
    cohort = open_store(stores["cohort"])
    as_b = vendor_fidelity(open_store(stores["as_b"]), cohort, seed=0)
    assert as_b["classes"] == ["A", "B"] and as_b["requested_vendor_column"] == "requested_vendor"
    assert as_b["reference"]["n_held_out"] == 12, "every real subject is held out once"
    assert as_b["reference"]["accuracy"] > 0.8
    assert as_b["per_requested_vendor"]["B"] == {"n": 4, "accuracy": pytest.approx(1.0)}
    assert as_b["accuracy"] > 0.7
    realism = as_b["realism"]["B"]
    assert realism["n_real"] == 6 and realism["n_synthetic"] == 4
    assert realism["histogram_distance"] >= 0 and realism["histogram_distance_real_halves"] >= 0
    assert 0 < realism["noise"]["real"] < 0.1 and 0 < realism["sharpness"]["real"] < 2

    as_a = vendor_fidelity(open_store(stores["as_a"]), cohort, seed=0)
    assert as_a["per_requested_vendor"]["A"]["accuracy"] < 0.3, "B subjects requested as A are caught"
    # phantom vendor B is less noisy and blurrier than A: real B frames are far from real A in both
    wrong = as_a["realism"]["A"]
    assert abs(wrong["noise"]["difference"]) > 3 * abs(realism["noise"]["difference"])
    assert abs(wrong["sharpness"]["difference"]) > 3 * abs(realism["sharpness"]["difference"])
    assert as_a["reference"] == as_b["reference"], "the reference depends on the cohort and the seed only"
    assert vendor_fidelity(open_store(stores["as_a"]), cohort, seed=0) == as_a, "deterministic"


def test_confusion_counts_every_synthetic_subject_and_the_report_renders(stores, tmp_path):
    section = vendor_fidelity(open_store(stores["as_a"]), open_store(stores["cohort"]))
    confusion = section["confusion"]
    assert confusion["requested"] == ["A"] and confusion["predicted"] == ["A", "B"]
    assert np.sum(confusion["counts"]) == section["n_synthetic"] == 4
    json.dumps(json_safe(section), allow_nan=False)
    text = "\n".join(vendor_lines(section))
    assert "## Vendor faithfulness" in text and "| A |" in text


def test_a_store_without_requested_vendors_is_judged_against_every_real_vendor(stores):
    section = vendor_fidelity(open_store(stores["old"]), open_store(stores["cohort"]))
    assert section["requested_vendor_column"] == "vendor" and "names no requested vendor" in section["note"]
    assert section["per_requested_vendor"] == {} and section["confusion"]["requested"] == ["(none)"]
    assert np.sum(section["confusion"]["counts"]) == 4
    assert set(section["realism"]) == {"A", "B"}
    assert section["realism"]["B"]["n_synthetic"] == section["realism"]["A"]["n_synthetic"] == 4, "pooled"


def test_a_single_vendor_cohort_is_skipped_with_its_reason(stores):
    section = vendor_fidelity(open_store(stores["as_b"]), open_store(stores["only_a"]))
    assert set(section) == {"skipped"}
    assert "two vendors" in section["skipped"] and stores["only_a"] in section["skipped"]
    assert "Not computed" in "\n".join(vendor_lines(section))


def test_histogram_distance_is_the_shift_between_intensity_histograms():
    histogram = np.zeros(HISTOGRAM_BINS, np.int64)
    histogram[50:60] = 3
    assert wasserstein(histogram, histogram) == 0
    assert wasserstein(histogram, np.roll(histogram, 7)) == pytest.approx(7 * 2 / HISTOGRAM_BINS)
    assert np.isnan(wasserstein(histogram, np.zeros_like(histogram)))


def test_the_heart_region_is_central_and_leaves_out_padding_slices():
    image = np.zeros((4, 8, 12), np.float32)
    region = heart_region(image, np.array([True, True, True, False]))
    assert region.shape == (3, 4, 6)
