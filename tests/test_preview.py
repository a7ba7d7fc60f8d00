"""Preview: per-subject GIFs and montages, and the dataset report, for synthetic and cohort stores."""

from __future__ import annotations

import imageio.v3 as iio
import pytest

from factory.cli import main
from factory.errors import StoreError
from factory.preview.cli import preview
from factory.preview.report import pearson
from factory.store.reader import open_store

from store_builders import write_store


@pytest.mark.parametrize("kind", ["synthetic", "cohort"])
def test_preview_writes_gifs_montages_and_report(tmp_path, kind):
    url = write_store(tmp_path / "s.zarr", n=5, kind=kind)
    out = tmp_path / "preview"
    assert main(["preview", url, "--out", str(out), "--subjects", "3"]) == 0
    gifs = sorted((out / "subjects").glob("*.gif"))
    assert len(gifs) == 3 and len(list((out / "subjects").glob("*_montage.png"))) == 3
    table = open_store(url).table.set_index("subject_id")
    frames = iio.imread(gifs[0], index=None)
    assert frames.shape == (table.loc[gifs[0].stem, "n_frames"], 192, 192, 3)
    montage = iio.imread(out / "subjects" / f"{gifs[0].stem}_montage.png")
    assert montage.shape[0] == 10 * 65  # 10 real slices, one white line after each
    report = (out / "report.md").read_text()
    for figure in ("diagnosis_counts.png", "lv_volume_curves.png", *(f"subjects/{g.name}" for g in gifs)):
        assert f"({figure})" in report and (out / figure).exists(), figure
    if kind == "synthetic":
        assert "Requested vs measured" in report and (out / "controllability.png").exists()
        assert "gate_failed" in report and (out / "gate_attempts.png").exists()
    else:
        assert "Measured clinical values" in report and "Quality gate" not in report


def test_preview_of_a_store_without_subjects_is_refused(tmp_path):
    url = write_store(tmp_path / "s.zarr", n=0, finalize=False)
    with pytest.raises(StoreError, match="no subject committed"):
        preview(open_store(url, require_complete=False), tmp_path / "out")


def test_pearson():
    assert pearson([1, 2, 3, 4], [2, 4, 6, 8.5])[0] == pytest.approx(0.998, abs=1e-3)
    r, n = pearson([1, 2, float("nan")], [1, 2, 3])
    assert n == 2 and r != r
