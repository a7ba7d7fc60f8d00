"""`factory ingest`: folders in, a verified cohort store out; bad input leaves nothing behind."""

from __future__ import annotations

import numpy as np
import pytest

from factory.cli import main
from factory.store.reader import open_store
from factory.store.verify import verify_store

from test_readers import _bad_acdc, write_acdc


def test_ingest_acdc_and_real_frames(tmp_path, shared_data):
    src = tmp_path / "acdc"
    for k in (1, 2):
        write_acdc(src, pid=f"patient00{k}")
    out = tmp_path / "cohort.zarr"
    assert main(["ingest", "--src", str(src), "--src", str(shared_data / "real_frames"),
                 "--out", str(out), "--preset", "tiny"]) == 0
    assert verify_store(str(out)) == []
    store = open_store(str(out))
    table = store.table
    assert len(table) == 2 + 6
    real = table[table["subject_id"].str.contains("sax")]
    assert len(real) == 6 and (real["n_labeled_frames"] == 0).all() and (real["n_frames"] == 1).all()
    acdc = table[table["subject_id"].str.startswith("patient")]
    assert (acdc["n_labeled_frames"] == 2).all() and acdc["edv_ml"].notna().all()
    assert store.attrs["kind"] == "cohort" and store.attrs["spacing_mm"] == [10.0, 2.5, 2.5]


def test_unlabeled_sources_enter_without_labels(tmp_path):
    write_acdc(tmp_path / "a", pid="patient001")
    write_acdc(tmp_path / "b", pid="patient001")  # same id in another cohort: qualified by its folder
    out = tmp_path / "cohort.zarr"
    assert main(["ingest", "--src", str(tmp_path / "a"), "--unlabeled-src", str(tmp_path / "b"),
                 "--out", str(out)]) == 0
    store = open_store(str(out))
    table = store.table.set_index("subject_id")
    assert table.loc["patient001", "n_labeled_frames"] == 2
    assert table.loc["b/patient001", "n_labeled_frames"] == 0 and np.isnan(table.loc["b/patient001", "edv_ml"])
    assert not store.group["mask"][1].any()
    assert verify_store(str(out)) == []


@pytest.mark.parametrize("problem", ["truncated", "nan", "mask_shape", "labels", "no_ed"])
def test_bad_input_fails_clearly_and_leaves_no_store(tmp_path, capsys, problem):
    src = tmp_path / "src"
    write_acdc(src, pid="patient000")  # a good subject first: the failure comes mid-way
    name = _bad_acdc(src, problem)
    out = tmp_path / "cohort.zarr"
    assert main(["ingest", "--src", str(src), "--out", str(out)]) == 2
    assert name in capsys.readouterr().err
    assert not out.exists(), "a failed ingest must not leave a partial store behind"


def test_existing_output_is_refused_unless_overwrite(tmp_path, capsys):
    write_acdc(tmp_path / "a")
    out = tmp_path / "cohort.zarr"
    args = ["ingest", "--src", str(tmp_path / "a"), "--out", str(out)]
    assert main(args) == 0
    assert main(args) == 2 and "already exists" in capsys.readouterr().err
    assert verify_store(str(out)) == [], "the refused run must not touch the existing store"
    assert main([*args, "--overwrite"]) == 0
