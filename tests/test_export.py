"""Export: 4D NIfTI round trip, nnU-Net v2 raw dataset (layout, dataset.json, nnU-Net's own check), refusals."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from factory.cli import main
from factory.errors import StoreError
from factory.export.nifti import export_nifti
from factory.export.nnunet import export_nnunet
from factory.store.reader import open_store
from factory.store.verify import verify_store

from store_builders import write_store


@pytest.fixture(scope="module")
def stores(tmp_path_factory) -> tuple[str, str]:
    root = tmp_path_factory.mktemp("stores")
    return write_store(root / "cohort.zarr", n=3), write_store(root / "synthetic.zarr", n=2, kind="synthetic",
                                                               prefix="syn")


def test_nifti_round_trip(stores, tmp_path):
    cohort, _ = stores
    out = export_nifti([cohort], tmp_path / "nifti")
    store = open_store(cohort)
    table = pd.read_csv(out / "metadata.csv")
    assert list(table["case"]) == list(store.table["subject_id"])
    for row in table.itertuples():
        subject = store.subject(row.index)
        real = slice(row.slice_start, row.slice_stop)
        assert real == slice(0, 10), "the two padding slices are dropped"
        image, label = nib.load(out / row.image_file), nib.load(out / row.label_file)
        assert image.get_data_dtype() == np.float32 and label.get_data_dtype() == np.uint8
        assert image.shape == (64, 64, 10, subject.n_frames)
        np.testing.assert_array_equal(np.asarray(image.dataobj).T, subject.image[:, real])  # float16 values
        np.testing.assert_array_equal(np.asarray(label.dataobj).T, subject.mask[:, real])
        np.testing.assert_allclose(image.affine, np.diag([2.5, 2.5, 10.0, 1.0]))
        np.testing.assert_allclose(image.header.get_zooms()[:3], (2.5, 2.5, 10.0))
        assert row.labeled_frames == "0 2"


def test_nnunet_dataset(stores, tmp_path):
    cohort, synthetic = stores
    assert main(["export", cohort, synthetic, "--format", "nnunet", "--out", str(tmp_path),
                 "--dataset-id", "7", "--dataset-name", "Cine"]) == 0
    folder = tmp_path / "Dataset007_Cine"
    spec = json.loads((folder / "dataset.json").read_text())
    n_labeled = sum(int(open_store(s).table["n_labeled_frames"].sum()) for s in stores)
    assert spec["channel_names"] == {"0": "cineMRI"} and spec["file_ending"] == ".nii.gz"
    assert spec["labels"] == {"background": 0, "RV": 1, "MYO": 2, "LV": 3}
    assert spec["numTraining"] == n_labeled
    cases = pd.read_csv(folder / "cases.csv")
    assert len(cases) == n_labeled and set(cases["store_kind"]) == {"cohort", "synthetic"}
    labels = sorted(p.name for p in (folder / "labelsTr").iterdir())
    images = sorted(p.name for p in (folder / "imagesTr").iterdir())
    assert labels == sorted(f"{c}.nii.gz" for c in cases["case"])
    assert images == sorted(f"{c}_0000.nii.gz" for c in cases["case"])
    first = cases.iloc[0]
    volume = nib.load(folder / "labelsTr" / f"{first.case}.nii.gz")
    assert volume.shape == (64, 64, 10)
    expected = open_store(cohort).frame(int(first["index"]), int(first.frame))[1][:10]
    np.testing.assert_array_equal(np.asarray(volume.dataobj).T, expected)


def test_nnunet_integrity_check(stores, tmp_path):
    """nnU-Net's own check; nnunetv2 is an optional extra (its plain install replaces the pinned torch)."""
    verify = pytest.importorskip("nnunetv2.experiment_planning.verify_dataset_integrity",
                                 reason="nnunetv2 is not installed (optional extra `nnunet`: its plain install "
                                        "replaces the pinned torch 2.13 with a newer build)")
    folder = export_nnunet(list(stores), tmp_path)
    verify.verify_dataset_integrity(str(folder), num_processes=1)  # raises on any problem


def test_existing_output_and_missing_store_are_refused(stores, tmp_path):
    cohort, _ = stores
    out = tmp_path / "taken"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(StoreError, match="taken"):
        export_nifti([cohort], out)
    assert main(["export", cohort, "--format", "nifti", "--out", str(out)]) == 2
    assert (out / "keep.txt").exists()
    with pytest.raises(StoreError, match="did not write"):  # --overwrite never deletes a user's folder
        export_nifti([cohort], out, overwrite=True)
    assert (out / "keep.txt").exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    export_nifti([cohort], empty)  # an existing empty folder is fine
    export_nifti([cohort], empty, overwrite=True)  # and an earlier export may be replaced
    assert (empty / "metadata.csv").exists()
    with pytest.raises(StoreError, match="missing.zarr"):
        export_nnunet([str(tmp_path / "missing.zarr")], tmp_path / "nn")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "taken"], "no partial output left behind"


@pytest.mark.parametrize("where", ["itself", "inside", "around"])
def test_export_onto_its_own_input_is_refused(stores, where):
    cohort, synthetic = stores
    out = {"itself": cohort, "inside": f"{cohort}/nifti", "around": str(Path(cohort).parent)}[where]
    before = sorted(p.relative_to(cohort) for p in Path(cohort).rglob("*"))
    assert main(["export", cohort, synthetic, "--format", "nifti", "--out", out, "--overwrite"]) == 2
    assert sorted(p.relative_to(cohort) for p in Path(cohort).rglob("*")) == before, "the input store is intact"
    assert verify_store(cohort) == []


def test_export_refuses_a_store_whose_table_was_altered(tmp_path):
    cohort = write_store(tmp_path / "cohort.zarr", n=2)
    with open(Path(cohort) / "metadata.parquet", "ab") as f:
        f.write(b"\0")
    with pytest.raises(StoreError, match="checksum differs"):
        export_nifti([cohort], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_incomplete_store_is_refused(tmp_path):
    url = write_store(tmp_path / "partial.zarr", n=2, finalize=False)
    with pytest.raises(StoreError, match="incomplete"):
        export_nifti([url], tmp_path / "out")
    assert not Path(tmp_path / "out").exists()
