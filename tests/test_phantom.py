"""The built-in phantom cohort: ACDC layout, determinism, geometry, clinical values and physiology."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from factory.cli import main
from factory.data.clinical import CLINICAL_COLUMNS, label_volumes_ml, measure
from factory.data.phantom import generate_cohort, generate_subject
from factory.data.phantom.cohort import METADATA_COLUMNS
from factory.data.phantom.subject import sample_anatomy
from factory.data.readers import read_acdc_subject
from factory.preview.montage import real_pairs
from factory.vocabulary import DIAGNOSES, derive_seed

N_SUBJECTS = 10


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("phantom") / "cohort"
    assert main(["phantom", "--out", str(out), "--subjects", str(N_SUBJECTS), "--seed", "0"]) == 0
    return out


@pytest.fixture(scope="module")
def metadata(cohort) -> pd.DataFrame:
    return pd.read_csv(cohort / "metadata.csv")


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_writes_the_acdc_layout(cohort, metadata):
    assert sorted(p.name for p in cohort.iterdir()) == [".cine-factory.json", "metadata.csv"] + [f"patient{k:03d}" for k in range(1, 11)]
    assert list(metadata.columns) == list(METADATA_COLUMNS)
    assert list(metadata["diagnosis"]) == list(DIAGNOSES) * 2  # round-robin
    assert list(metadata["vendor"][:4]) == ["A", "B", "C", "A"]
    for row in metadata.itertuples():
        folder = cohort / row.subject_id
        info = dict(line.split(": ") for line in (folder / "Info.cfg").read_text().splitlines())
        assert info["ED"] == "1" and info["ES"] == str(row.es_frame + 1)
        assert info["Group"] == row.diagnosis and int(info["NbFrame"]) == row.n_frames
        assert float(info["Height"]) == pytest.approx(100 * row.height_m)
        assert float(info["Weight"]) == pytest.approx(row.weight_kg)
        expected = {f"{row.subject_id}_{suffix}.nii.gz" for suffix in (
            "4d", "4d_gt", "frame01", "frame01_gt", f"frame{row.es_frame + 1:02d}", f"frame{row.es_frame + 1:02d}_gt")}
        assert {p.name for p in folder.iterdir()} == expected | {"Info.cfg"}


def test_nifti_geometry_dtypes_and_labels(cohort, metadata):
    for row in metadata.head(3).itertuples():  # one subject per vendor
        stem = cohort / row.subject_id / row.subject_id
        image = nib.load(f"{stem}_4d.nii.gz")
        assert image.get_data_dtype() == np.int16
        assert image.shape[2:] == (row.n_slices, row.n_frames)
        assert image.header.get_zooms() == pytest.approx((row.spacing_x_mm, row.spacing_y_mm, 10.0, 1.0))
        assert np.diag(image.affine) == pytest.approx([row.spacing_x_mm, row.spacing_y_mm, 10.0, 1.0])
        assert 1.1 <= row.spacing_x_mm <= 2.0 and 180 <= min(image.shape[:2]) and max(image.shape[:2]) <= 256
        gt = nib.load(f"{stem}_4d_gt.nii.gz")
        assert gt.get_data_dtype() == np.uint8 and gt.shape == image.shape
        labels = np.asarray(gt.dataobj)
        assert set(np.unique(labels)) == {0, 1, 2, 3}
        es = nib.load(f"{stem}_frame{row.es_frame + 1:02d}_gt.nii.gz")
        assert es.header.get_zooms() == pytest.approx((row.spacing_x_mm, row.spacing_y_mm, 10.0))
        assert np.array_equal(np.asarray(es.dataobj), labels[..., row.es_frame])
        ed_image = np.asarray(nib.load(f"{stem}_frame01.nii.gz").dataobj)
        assert np.array_equal(ed_image, np.asarray(image.dataobj)[..., 0])


def test_clinical_values_match_the_written_masks(cohort, metadata):
    for row in metadata.itertuples():
        stem = cohort / row.subject_id / row.subject_id
        ed = np.asarray(nib.load(f"{stem}_frame01_gt.nii.gz").dataobj)
        es = np.asarray(nib.load(f"{stem}_frame{row.es_frame + 1:02d}_gt.nii.gz").dataobj)
        spacing = (row.spacing_z_mm, row.spacing_y_mm, row.spacing_x_mm)
        values = measure(np.stack([ed.T, es.T]), spacing, es_frame=1)
        for column in CLINICAL_COLUMNS:
            assert values[column] == pytest.approx(getattr(row, column), rel=0.01), (row.subject_id, column)


def test_the_project_reader_accepts_the_cohort(cohort, metadata):
    row = metadata.iloc[1]
    subject = read_acdc_subject(cohort / row.subject_id, row.to_dict())
    assert subject.meta["source"] == "phantom" and subject.meta["vendor"] == row.vendor
    assert subject.es_frame == row.es_frame and subject.meta["height_m"] == pytest.approx(row.height_m)
    assert subject.meta["edv_ml"] == pytest.approx(row.edv_ml, rel=1e-4)


def test_same_seed_gives_identical_files_whatever_the_cohort_size(cohort, tmp_path):
    again = generate_cohort(tmp_path / "again", 2, seed=0)
    for subject_id in again["subject_id"]:
        assert _files(tmp_path / "again" / subject_id) == _files(cohort / subject_id)
    other = generate_subject(0, derive_seed(1, 0), "NOR", "A", render_image=False)
    assert not np.array_equal(other.mask[0], generate_subject(0, derive_seed(0, 0), "NOR", "A", render_image=False).mask[0])


def test_refuses_a_used_output_folder_unless_overwriting(cohort, tmp_path, capsys):
    before = (cohort / "metadata.csv").read_bytes()
    assert main(["phantom", "--out", str(cohort), "--subjects", "1", "--seed", "0"]) == 2
    assert "not empty" in capsys.readouterr().err
    assert (cohort / "metadata.csv").read_bytes() == before
    used = tmp_path / "used"
    used.mkdir()
    (used / "stale.txt").write_text("x")
    assert main(["phantom", "--out", str(used), "--subjects", "1", "--seed", "0", "--vendors", "C",
                 "--overwrite"]) == 2, "--overwrite never deletes a folder of other files"
    assert "did not write" in capsys.readouterr().err and (used / "stale.txt").exists()
    earlier = tmp_path / "earlier"
    for n in (2, 1):  # an earlier phantom cohort is replaced
        assert main(["phantom", "--out", str(earlier), "--subjects", str(n), "--seed", "0", "--vendors", "C",
                     "--overwrite"]) == 0
    assert sorted(p.name for p in earlier.iterdir()) == [".cine-factory.json", "metadata.csv", "patient001"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["earlier", "used"], "no staging folder left behind"
    assert main(["phantom", "--out", str(tmp_path / "x"), "--subjects", "1", "--vendors", "Z"]) == 2


def test_image_contrast_is_bssfp_like(cohort, metadata):
    """Bright blood, dark myocardium, noisy background; vendors differ in pixel size."""
    for row in metadata.head(3).itertuples():
        stem = cohort / row.subject_id / row.subject_id
        image = np.asarray(nib.load(f"{stem}_frame01.nii.gz").dataobj, dtype=np.float32)
        labels = np.asarray(nib.load(f"{stem}_frame01_gt.nii.gz").dataobj)
        blood, muscle = np.median(image[labels == 3]), np.median(image[labels == 2])
        assert blood > 2.5 * muscle > 0, row.subject_id
        assert image[labels == 0].std() > 0.05 * blood
    assert metadata["spacing_x_mm"].head(3).nunique() == 3


@pytest.mark.parametrize("diagnosis", DIAGNOSES)
def test_motion_conserves_myocardium_and_reaches_es_at_the_recorded_frame(diagnosis):
    subject = generate_subject(3, derive_seed(5, DIAGNOSES.index(diagnosis)), diagnosis, "A", render_image=False)
    volumes = label_volumes_ml(subject.mask, subject.spacing_mm)
    assert int(np.argmin(volumes["lv"])) == subject.es_frame
    assert int(np.argmax(volumes["lv"])) == 0
    assert np.ptp(volumes["myo"]) / volumes["myo"].mean() < 0.03
    assert np.all(volumes["rv"][1:subject.es_frame + 1] < volumes["rv"][0])
    # Ejection then filling without jitter: the cavity shrinks, then grows back, monotonically.
    steps = np.diff(volumes["lv"])
    assert np.all(steps[:subject.es_frame] < 0) and np.all(steps[subject.es_frame:] >= 0)
    for column in ("edv_ml", "esv_ml", "rv_edv_ml", "rv_esv_ml"):
        assert subject.clinical[column] == pytest.approx(subject.targets[column], rel=0.02)


def test_subject_api_and_record():
    subject = generate_subject(4, 123, "HCM", "C")
    assert subject.subject_id == "patient005"
    assert subject.image.dtype == np.float32 and subject.image.shape == subject.mask.shape
    record = subject.to_record()
    assert record.es_frame == subject.es_frame and record.labeled.all()
    assert record.meta["diagnosis"] == "HCM" and record.meta["vendor"] == "C"


@pytest.fixture(scope="module")
def anatomy_cohort() -> pd.DataFrame:
    """Clinical values of 100 subjects (20 per diagnosis), measured from their ED and ES masks only."""
    rows = []
    for k in range(100):
        anatomy = sample_anatomy(derive_seed(0, k), DIAGNOSES[k % 5], "ABC"[k % 3])
        mask = anatomy.raster.full_labels(np.array([0, anatomy.es_frame]))
        rows.append({"diagnosis": anatomy.diagnosis, **measure(mask, anatomy.spacing_mm, es_frame=1)})
    return pd.DataFrame(rows)


@pytest.mark.slow
def test_per_diagnosis_means_are_within_one_sd_of_acdc(anatomy_cohort, shared_data):
    acdc = pd.read_csv(shared_data / "acdc_clinical.csv").groupby("pathology")
    phantom = anatomy_cohort.groupby("diagnosis")
    for column in ("edv_ml", "esv_ml", "ef_pct"):
        mean, sd = acdc[column].mean(), acdc[column].std()
        assert ((phantom[column].mean() - mean).abs() < sd).all(), column


@pytest.mark.slow
def test_diagnoses_carry_their_signatures(anatomy_cohort):
    means = anatomy_cohort.groupby("diagnosis").mean()
    mass_per_ml = means["myo_mass_g"] / means["edv_ml"]
    assert mass_per_ml["HCM"] == mass_per_ml.max() and mass_per_ml["DCM"] == mass_per_ml.min()
    assert means["rv_edv_ml"]["RV"] == means["rv_edv_ml"].max()
    assert means["rv_ef_pct"]["RV"] == means["rv_ef_pct"].min()
    assert means["ef_pct"]["DCM"] < means["ef_pct"]["MINF"] < means["ef_pct"]["NOR"] < means["ef_pct"]["HCM"]


def test_montage_shows_phantom_beside_real_frames(cohort, tmp_path, shared_data):
    out = tmp_path / "montage.png"
    assert main(["montage", "--phantom", str(cohort), "--real", str(shared_data / "real_frames"),
                 "--out", str(out), "--subjects", "3"]) == 0
    assert out.stat().st_size > 10_000
    assert len(real_pairs(shared_data / "real_frames")) == 3


def test_montage_without_real_frames(cohort, tmp_path):
    out = tmp_path / "montage.png"
    assert main(["montage", "--phantom", str(cohort), "--real", str(tmp_path / "absent"), "--out", str(out),
                 "--subjects", "1"]) == 0
    assert out.is_file()
