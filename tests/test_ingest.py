"""`factory ingest`: folders in, a verified cohort store out; bad input is refused by name, nothing is destroyed."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from factory.cli import main
from factory.store.reader import open_store
from factory.store.verify import verify_store

from test_readers import IMAGE_PROBLEMS, _bad_acdc, write_acdc

# problems refused at ingest -> the (lower-case) phrase of the message; mask ones are the ingest gate's
PROBLEMS = {"truncated": "unreadable", "mask_shape": "mask shape", "labels": "labels must be", "no_ed": "ed frame",
            **IMAGE_PROBLEMS, "empty_mask": "mask is empty", "swapped_labels": "not enclosed by myocardium"}


def ingest(*args: str | Path) -> int:
    return main(["ingest", *map(str, args)])


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` with its content, to show that a refused command left it as it was."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def assert_refused(capsys, out: Path, *phrases: str) -> None:
    """The command failed cleanly (one-line error naming the problem) and left no store, staged or final."""
    err = capsys.readouterr().err
    assert "Traceback" not in err
    for phrase in phrases:
        assert phrase.lower() in err.lower(), err
    assert not out.exists() and not list(out.parent.glob(f".{out.name}*")), "a refused ingest leaves no store"


def test_ingest_acdc_and_real_frames(tmp_path, shared_data):
    src = tmp_path / "acdc"
    for k in (1, 2):
        write_acdc(src, pid=f"patient00{k}")
    out = tmp_path / "cohort.zarr"
    assert ingest("--src", src, "--src", shared_data / "real_frames", "--out", out, "--preset", "tiny") == 0
    assert verify_store(str(out)) == []
    store = open_store(str(out))
    table = store.table
    assert len(table) == 2 + 6
    real = table[table["subject_id"].str.contains("sax")]
    assert len(real) == 6 and (real["n_labeled_frames"] == 0).all() and (real["n_frames"] == 1).all()
    acdc = table[table["subject_id"].str.startswith("patient")]
    assert (acdc["n_labeled_frames"] == 2).all() and acdc["edv_ml"].notna().all()
    assert store.attrs["kind"] == "cohort" and store.attrs["spacing_mm"] == [10.0, 2.5, 2.5]
    assert store.attrs["skipped"] == []


@pytest.mark.skipif(importlib.util.find_spec("factory.data.phantom.cohort") is None, reason="no phantom writer")
def test_every_phantom_frame_passes_the_ingest_gate(tmp_path):
    from factory.data.phantom.cohort import generate_cohort

    generate_cohort(tmp_path / "phantom", n_subjects=2, seed=0)
    out = tmp_path / "cohort.zarr"
    assert ingest("--src", tmp_path / "phantom", "--full-gt", "--out", out) == 0  # every frame labeled and gated
    assert verify_store(str(out)) == [] and open_store(str(out)).table["n_labeled_frames"].gt(2).all()


def test_unlabeled_sources_enter_without_labels(tmp_path):
    write_acdc(tmp_path / "a", pid="patient001")
    write_acdc(tmp_path / "b", pid="patient001")  # same id in another cohort: qualified by its folder
    _bad_acdc(tmp_path / "c", "empty_mask")  # an unlabeled pool's masks are dropped, not gated
    out = tmp_path / "cohort.zarr"
    assert ingest("--src", tmp_path / "a", "--unlabeled-src", tmp_path / "b", "--unlabeled-src", tmp_path / "c",
                  "--out", out) == 0
    store = open_store(str(out))
    table = store.table.set_index("subject_id")
    assert table.loc["patient001", "n_labeled_frames"] == 2
    assert table.loc["b/patient001", "n_labeled_frames"] == 0 and np.isnan(table.loc["b/patient001", "edv_ml"])
    assert table.loc["c/patient001", "n_labeled_frames"] == 0
    assert not store.group["mask"][1:].any()
    assert verify_store(str(out)) == []


# ---------------------------------------------------------------- outputs: never destroy data

def test_overwrite_never_replaces_a_folder_of_other_files(tmp_path, capsys):
    write_acdc(tmp_path / "a")
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("a user's file")
    assert ingest("--src", tmp_path / "a", "--out", out, "--overwrite") == 2
    err = capsys.readouterr().err
    assert "did not write" in err and "Traceback" not in err
    assert (out / "notes.txt").read_text() == "a user's file" and snapshot(out) == {"notes.txt": b"a user's file"}


@pytest.mark.parametrize("where, relation", [(".", "is"), ("cohort.zarr", "lies inside"), ("..", "contains")])
def test_output_overlapping_a_source_is_refused_and_the_source_kept(tmp_path, capsys, where, relation):
    src = tmp_path / "data" / "acdc"
    write_acdc(src)
    before = snapshot(src)
    out = src / where
    assert ingest("--src", src, "--out", out, "--overwrite") == 2
    err = capsys.readouterr().err
    assert relation in err and "Traceback" not in err
    assert snapshot(src) == before and not (src / "cohort.zarr").exists()


def test_existing_store_is_refused_unless_overwrite_which_replaces_it(tmp_path, capsys):
    write_acdc(tmp_path / "a")
    for k in (1, 2):
        write_acdc(tmp_path / "b", pid=f"patient00{k}")
    out = tmp_path / "cohort.zarr"
    assert ingest("--src", tmp_path / "a", "--out", out) == 0
    assert ingest("--src", tmp_path / "b", "--out", out) == 2 and "already exists" in capsys.readouterr().err
    assert verify_store(str(out)) == [] and open_store(str(out)).n_subjects == 1, "the refused run left it alone"
    assert ingest("--src", tmp_path / "b", "--out", out, "--overwrite") == 0
    assert verify_store(str(out)) == [] and open_store(str(out)).n_subjects == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b", "cohort.zarr"], "no staging or old copy left"


def test_failed_overwrite_keeps_the_old_store(tmp_path, capsys):
    write_acdc(tmp_path / "a")
    out = tmp_path / "cohort.zarr"
    assert ingest("--src", tmp_path / "a", "--out", out) == 0
    _bad_acdc(tmp_path / "b", "constant")
    assert ingest("--src", tmp_path / "b", "--out", out, "--overwrite") == 2
    assert "constant" in capsys.readouterr().err
    assert verify_store(str(out)) == [] and open_store(str(out)).n_subjects == 1
    assert not list(tmp_path.glob(".cohort.zarr*"))


# ---------------------------------------------------------------- sources and subject ids

@pytest.mark.parametrize("option", ["--src", "--unlabeled-src"])
def test_the_same_source_twice_is_refused(tmp_path, capsys, option):
    write_acdc(tmp_path / "a")
    out = tmp_path / "cohort.zarr"
    assert ingest("--src", tmp_path / "a", option, f"{tmp_path}/../{tmp_path.name}/a", "--out", out) == 2
    assert_refused(capsys, out, "given twice")


def test_ids_the_folder_name_cannot_tell_apart_are_refused(tmp_path, capsys):
    sources = [tmp_path / parent / "cohort" for parent in ("x", "y", "z")]
    for src in sources:
        write_acdc(src, pid="patient001")  # the third would be cohort/patient001 too, like the second
    out = tmp_path / "cohort.zarr"
    assert ingest(*[arg for src in sources for arg in ("--src", src)], "--out", out) == 2
    assert_refused(capsys, out, str(sources[2]), str(sources[0]), "'patient001'", "rename")


# ---------------------------------------------------------------- bad subjects

@pytest.mark.parametrize("problem", PROBLEMS)
def test_bad_subject_is_refused_naming_the_file(tmp_path, capsys, problem):
    src = tmp_path / "src"
    write_acdc(src, pid="patient000")  # a good subject first: the failure comes mid-way
    name = _bad_acdc(src, problem)
    out = tmp_path / "cohort.zarr"
    assert ingest("--src", src, "--out", out) == 2
    assert_refused(capsys, out, name, PROBLEMS[problem])


def test_skip_bad_keeps_the_good_subjects_and_records_why(tmp_path, capsys):
    src = tmp_path / "src"
    write_acdc(src, pid="patient000")
    _bad_acdc(src, "constant", pid="patient001")  # a blank image
    _bad_acdc(src, "empty_mask", pid="patient002")
    write_acdc(src, pid="patient003")
    out = tmp_path / "cohort.zarr"
    assert ingest("--src", src, "--out", out, "--skip-bad") == 0
    err = capsys.readouterr().err
    assert "skipped patient001: " in err and "skipped patient002: " in err and "Traceback" not in err
    assert verify_store(str(out)) == []
    store = open_store(str(out))
    assert store.n_subjects == 2 and store.table["subject_id"].tolist() == ["patient000", "patient003"]
    skipped = store.attrs["skipped"]
    assert [(s["source"], s["subject"]) for s in skipped] == [(str(src), "patient001"), (str(src), "patient002")]
    assert "constant" in skipped[0]["reason"] and "mask is empty" in skipped[1]["reason"]


def test_skip_bad_with_no_good_subject_is_refused(tmp_path, capsys):
    _bad_acdc(tmp_path / "src", "constant")
    out = tmp_path / "cohort.zarr"
    assert ingest("--src", tmp_path / "src", "--out", out, "--skip-bad") == 2
    assert_refused(capsys, out, "all 1 subjects were refused", "constant")
