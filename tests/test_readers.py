"""Readers (ACDC, M&Ms, plain NIfTI), NIfTI I/O and preprocessing to canonical geometry."""

from __future__ import annotations

import gzip
import importlib.util
import math
import re
import struct
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from factory.data.nifti import load_nifti, nifti_to_internal, save_nifti, zooms_to_spacing
from factory.data.preprocess import preprocess
from factory.data.readers import count_subjects, detect_layout, find_subjects, read_cohort
from factory.errors import InputError
from factory.presets import get_preset

SPACING = (10.0, 3.0, 2.5)  # (z, y, x) mm: coarse pixels make the small test heart adult-sized
VOXEL_ML = 10.0 * 3.0 * 2.5 / 1000
SHAPE = (6, 40, 32)  # (Z, H, W)
N_FRAMES = 5
LV_ED_VOXELS = 4 * 10 * 8
LV_ES_VOXELS = 4 * 6 * 4


def heart(es: bool, shape=SHAPE, z0: int = 1, labels=(1, 2, 3)) -> np.ndarray:
    """(Z, H, W) blocky heart off the image centre: LV box (known size) inside a MYO shell, RV box.

    At the default spacing it passes the ingest gate at both phases (LV 24 / 7 ml, MYO >= 43 ml, RV 14 ml).
    """
    rv, myo, lv = labels
    mask = np.zeros(shape, np.uint8)
    zs = slice(z0, z0 + 4)
    mask[zs, 12:28, 6:20] = myo  # the wall thickens into the cavity at ES
    if es:
        mask[zs, 17:23, 12:16] = lv
    else:
        mask[zs, 15:25, 10:18] = lv
    mask[zs, 14:26, 20:24] = rv
    return mask


def cine(shape=SHAPE) -> np.ndarray:
    """(T, Z, H, W) noisy image whose frame t has mean intensity 100 * (t + 1)."""
    rng = np.random.default_rng(0)
    offsets = 100.0 * (np.arange(N_FRAMES) + 1)
    return (offsets[:, None, None, None] + rng.normal(0, 5, (N_FRAMES, *shape))).astype(np.float32)


def write_acdc(root: Path, pid: str = "patient001", ed: int = 2, es: int = 4, shape=SHAPE,
               spacing=SPACING, z0: int = 1) -> Path:
    """An ACDC-layout patient folder (ED, ES 1-based) with ED/ES ground truth."""
    folder = root / pid
    save_nifti(cine(shape=shape), spacing, folder / f"{pid}_4d.nii.gz")
    for frame, is_es in ((ed, False), (es, True)):
        save_nifti(heart(is_es, shape, z0), spacing, folder / f"{pid}_frame{frame:02d}_gt.nii.gz")
    (folder / "Info.cfg").write_text(
        f"ED: {ed}\nES: {es}\nGroup: HCM\nHeight: 170.0\nNbFrame: {N_FRAMES}\nWeight: 70.0\n")
    return folder


def write_mnms(root: Path, code: str = "A1B2C3", ed: int = 1, es: int = 3) -> None:
    """An M&Ms-layout subject (labels 1 LV, 2 MYO, 3 RV; ED/ES 0-based) and its metadata CSV."""
    gt = np.zeros((N_FRAMES, *SHAPE), np.uint8)
    gt[ed], gt[es] = heart(False, labels=(3, 2, 1)), heart(True, labels=(3, 2, 1))
    save_nifti(cine(), SPACING, root / code / f"{code}_sa.nii.gz")
    save_nifti(gt, SPACING, root / code / f"{code}_sa_gt.nii.gz")
    (root / "mnms_info.csv").write_text(
        "External code,VendorName,Vendor,Centre,ED,ES,Pathology,Height,Weight\n"
        f"{code},Philips,B,2,{ed},{es},ARV,180,80\n")


# ---------------------------------------------------------------- NIfTI I/O

def test_save_load_round_trip_is_deterministic(tmp_path):
    data = cine()
    first = save_nifti(data, SPACING, tmp_path / "a.nii.gz")
    second = save_nifti(data, SPACING, tmp_path / "sub" / "b.nii.gz")
    assert first.read_bytes() == second.read_bytes()
    array, affine, zooms = load_nifti(first)
    assert array.shape == (32, 40, 6, N_FRAMES)
    np.testing.assert_array_equal(nifti_to_internal(array), data)
    assert zooms_to_spacing(zooms) == SPACING
    mask = save_nifti(heart(False), SPACING, tmp_path / "m.nii.gz")
    assert nib.load(mask).get_data_dtype() == np.uint8
    assert nifti_to_internal(load_nifti(mask)[0]).shape == (1, *SHAPE)


# ---------------------------------------------------------------- readers

def test_acdc_layout_rolls_ed_to_frame_zero_and_measures(tmp_path):
    write_acdc(tmp_path, ed=2, es=4)
    assert detect_layout(tmp_path) == "acdc" and count_subjects(tmp_path) == 1
    (subject,) = read_cohort(tmp_path)
    assert subject.image.shape == (N_FRAMES, *SHAPE) and subject.image.dtype == np.float32
    assert subject.spacing_mm == SPACING and subject.affine.shape == (4, 4)
    assert subject.image[0].mean() == pytest.approx(200, abs=1)  # native frame 2 (1-based) is ED
    assert subject.es_frame == 2
    np.testing.assert_array_equal(subject.labeled, [True, False, True, False, False])
    assert subject.phase[subject.es_frame] == 100
    np.testing.assert_array_equal(subject.mask[0], heart(False))
    meta = subject.meta
    assert (meta["source"], meta["vendor"], meta["diagnosis"], meta["subject_id"]) == (
        "acdc", "Siemens", "HCM", "patient001")
    assert meta["edv_ml"] == pytest.approx(LV_ED_VOXELS * VOXEL_ML)
    assert meta["esv_ml"] == pytest.approx(LV_ES_VOXELS * VOXEL_ML)
    assert meta["ef_pct"] == pytest.approx(100 * (1 - LV_ES_VOXELS / LV_ED_VOXELS))
    assert meta["height_m"] == pytest.approx(1.7)


def test_acdc_metadata_csv_and_full_gt(tmp_path):
    folder = write_acdc(tmp_path, ed=1, es=3)
    (tmp_path / "metadata.csv").write_text("subject_id,vendor,diagnosis\npatient001,GE,HCM\n")
    full = np.stack([heart(t == 2) for t in range(N_FRAMES)])
    save_nifti(full, SPACING, folder / "patient001_4d_gt.nii.gz")
    (semi,) = read_cohort(tmp_path)
    assert semi.meta["vendor"] == "GE" and semi.labeled.sum() == 2
    (subject,) = read_cohort(tmp_path, full_gt=True)
    assert subject.labeled.all()
    np.testing.assert_array_equal(subject.mask, full)


def test_mnms_layout_remaps_labels(tmp_path):
    write_mnms(tmp_path, ed=1, es=3)
    assert detect_layout(tmp_path) == "mnms" and count_subjects(tmp_path) == 1
    (subject,) = read_cohort(tmp_path)
    assert subject.subject_id == "A1B2C3" and subject.es_frame == 2
    np.testing.assert_array_equal(subject.mask[0], heart(False))  # LV is 3 and RV 1 after the remap
    np.testing.assert_array_equal(subject.labeled, [True, False, True, False, False])
    assert subject.meta["vendor"] == "Philips" and subject.meta["diagnosis"] == "RV"
    assert subject.meta["edv_ml"] == pytest.approx(LV_ED_VOXELS * VOXEL_ML)


def test_plain_folder_is_an_unlabeled_pool(tmp_path):
    save_nifti(cine()[0], SPACING, tmp_path / "frame.nii.gz")
    save_nifti(cine(), SPACING, tmp_path / "seq.nii")
    assert detect_layout(tmp_path) == "nifti" and count_subjects(tmp_path) == 2
    frame, seq = read_cohort(tmp_path)
    assert (frame.subject_id, frame.n_frames, seq.subject_id, seq.n_frames) == ("frame", 1, "seq", N_FRAMES)
    for subject in (frame, seq):
        assert not subject.labeled.any() and subject.es_frame is None
        assert math.isnan(subject.meta["edv_ml"]) and subject.meta["vendor"] == "unknown"


# ---------------------------------------------------------------- bad input

def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _set_zooms(path: Path, zooms: tuple[float, float, float]) -> None:
    """Write raw pixdim[1..3] (i, j, k) into a .nii.gz header: nibabel alone would refuse or 'fix' them."""
    header = bytearray(gzip.decompress(path.read_bytes()))
    header[80:92] = struct.pack("<3f", *zooms)
    path.write_bytes(gzip.compress(bytes(header)))


# (i, j, k) zooms no cine has; "tiny" once overflowed int16 in preprocessing (MONAI's crop window)
BAD_ZOOMS = {"spacing_zero": (0.0, 3.0, 10.0), "spacing_negative": (-2.5, 3.0, 10.0),
             "spacing_nan": (math.nan, 3.0, 10.0), "spacing_tiny": (1e-6, 1e-6, 10.0),
             "spacing_huge": (40.0, 40.0, 10.0), "slices_thick": (2.5, 3.0, 80.0)}
# problems of the image file that every reader refuses, and the (lower-case) phrase that says so
IMAGE_PROBLEMS = {"nan": "nan/inf voxels", "constant": "image is constant", "constant_frame": "frame 3 (0-based)",
                  **{name: "spacing" if name in ("spacing_nan", "spacing_tiny", "spacing_huge", "slices_thick")
                     else "pixdim" for name in BAD_ZOOMS}}


def _bad_acdc(tmp_path: Path, problem: str, pid: str = "patient001") -> str:
    """Write an ACDC subject `pid` with one `problem`; return the name of the file (or subject folder) at fault."""
    folder = write_acdc(tmp_path, pid=pid)
    image, gt = folder / f"{pid}_4d.nii.gz", folder / f"{pid}_frame02_gt.nii.gz"
    if problem in BAD_ZOOMS:
        _set_zooms(image, BAD_ZOOMS[problem])
        return image.name
    if problem in ("constant", "constant_frame"):
        data = cine()
        data[3 if problem == "constant_frame" else slice(None)] = 7.0
        save_nifti(data, SPACING, image)
        return image.name
    if problem in ("empty_mask", "swapped_labels"):  # refused by ingest's gate, not by the reader
        save_nifti(np.zeros(SHAPE, np.uint8) if problem == "empty_mask" else heart(False, labels=(1, 3, 2)),
                   SPACING, gt)
        return folder.name
    if problem == "truncated":
        _truncate(image)
        return image.name
    if problem == "no_4d":
        image.unlink()
        return image.name
    if problem == "nan":
        data = cine()
        data[1, 2, 3, 4] = np.nan
        save_nifti(data, SPACING, image)
        return image.name
    if problem == "mask_shape":
        save_nifti(heart(False)[:, :, :30], SPACING, gt)
        return gt.name
    if problem == "labels":
        save_nifti(heart(False) * 2, SPACING, gt)
        return gt.name
    (folder / "Info.cfg").write_text({"no_ed": "ES: 4\nGroup: NOR\n", "es_range": "ED: 1\nES: 9\n"}[problem])
    return "Info.cfg"


@pytest.mark.parametrize("problem", ["truncated", "no_4d", "mask_shape", "labels", "no_ed", "es_range",
                                     *IMAGE_PROBLEMS])
def test_bad_acdc_input_names_the_file(tmp_path, problem):
    name = _bad_acdc(tmp_path, problem)
    with pytest.raises(InputError, match=re.escape(name)) as refused:
        list(read_cohort(tmp_path))
    assert IMAGE_PROBLEMS.get(problem, "") in str(refused.value).lower()


def test_subjects_are_found_before_and_read_one_by_one(tmp_path):
    write_acdc(tmp_path, pid="patient000")
    _bad_acdc(tmp_path, "constant")  # patient001
    first, second = find_subjects(tmp_path)
    assert (first.subject_id, second.subject_id) == ("patient000", "patient001")
    assert first.read().subject_id == "patient000"
    with pytest.raises(InputError, match="constant"):
        second.read()


@pytest.mark.parametrize("problem", ["2d", "zero_spacing", "truncated"])
def test_bad_plain_nifti_names_the_file(tmp_path, problem):
    path = tmp_path / "bad.nii.gz"
    if problem == "2d":
        nib.save(nib.Nifti1Image(np.zeros((8, 8), np.float32), np.eye(4)), path)
    elif problem == "zero_spacing":
        save_nifti(cine()[0], SPACING, path)
        _set_zooms(path, (2.5, 0.0, 10.0))  # pixdim[2]: nibabel alone would quietly make it 1 mm
    else:
        save_nifti(cine(), SPACING, path)
        _truncate(path)
    with pytest.raises(InputError, match=re.escape(path.name)):
        list(read_cohort(tmp_path))


# ---------------------------------------------------------------- preprocessing

def _cavity_centroid(mask: np.ndarray) -> np.ndarray:
    return np.argwhere(np.isin(mask, (1, 3)))[:, 1:].mean(axis=0)


def test_preprocess_resamples_thick_slices_and_centres_the_heart(tmp_path):
    preset = get_preset("tiny")
    write_acdc(tmp_path, shape=(16, 40, 32), spacing=(5.0, 1.5, 1.25), z0=4)  # 80 mm of 5 mm slices
    (raw,) = read_cohort(tmp_path)
    subject = preprocess(raw, preset)
    assert subject.image.shape == subject.mask.shape == (N_FRAMES, *preset.geometry.shape)
    assert subject.image.dtype == np.float32 and subject.mask.dtype == np.uint8
    assert subject.spacing_mm == preset.geometry.spacing_mm and subject.affine is None
    assert subject.image.min() >= -1 and subject.image.max() <= 1
    assert subject.meta["n_slices"] == subject.n_slices == 8
    np.testing.assert_array_equal(subject.slice_mask, [False] * 2 + [True] * 8 + [False] * 2)
    np.testing.assert_array_equal(subject.labeled, raw.labeled)
    assert subject.es_frame == raw.es_frame and set(np.unique(subject.mask)) == {0, 1, 2, 3}
    np.testing.assert_allclose(_cavity_centroid(subject.mask[0]), [31.5, 31.5], atol=1)
    assert subject.meta["edv_ml"] == raw.meta["edv_ml"]  # measured at native resolution
    lv_ml = np.count_nonzero(subject.mask[0] == 3) * preset.geometry.voxel_ml
    assert lv_ml == pytest.approx(raw.meta["edv_ml"], rel=0.25)
    assert subject.meta["native_spacing_mm"] == "5x1.5x1.25"


def test_preprocess_keeps_the_heart_slices_of_a_long_stack(tmp_path):
    preset = get_preset("tiny")
    write_acdc(tmp_path, shape=(20, 40, 32), z0=6)  # heart in slices 6..9 of 20
    subject = preprocess(next(read_cohort(tmp_path)), preset)
    assert subject.slice_mask.all() and subject.meta["n_slices"] == 12
    heart_slices = np.flatnonzero(subject.mask[0].any(axis=(1, 2)))
    np.testing.assert_array_equal(heart_slices, [4, 5, 6, 7])


def test_preprocess_unlabeled_is_centred_on_the_image(tmp_path):
    image = np.random.default_rng(0).normal(100, 5, (1, 4, 100, 120)).astype(np.float32)
    image[0, :, 44:56, 54:66] = 1000.0  # a bright square at the image centre
    save_nifti(image, (10.0, 1.0, 1.0), tmp_path / "dot.nii.gz")
    subject = preprocess(next(read_cohort(tmp_path)), get_preset("tiny"))
    bright = np.argwhere(subject.image[0, 5] > 0.5)[:, -2:].mean(axis=0)
    np.testing.assert_allclose(bright, [31.5, 31.5], atol=1)
    np.testing.assert_array_equal(subject.slice_mask, [False] * 4 + [True] * 4 + [False] * 4)


def test_real_frames_read_and_preprocess(shared_data):
    frames = shared_data / "real_frames"
    assert count_subjects(frames) == 6
    for raw in read_cohort(frames):
        assert raw.n_frames == 1 and raw.spacing_mm == (10.0, 1.0, 1.0) and raw.image.shape[2:] == (192, 192)
        subject = preprocess(raw, get_preset("tiny"))
        assert subject.image.shape == (1, 12, 64, 64)
        assert subject.image.min() == -1 and subject.image.max() == 1
        assert subject.n_slices == min(raw.image.shape[1], 12)


@pytest.mark.skipif(importlib.util.find_spec("factory.data.phantom.cohort") is None, reason="no phantom writer")
def test_reads_a_phantom_cohort(tmp_path):
    from factory.data.phantom.cohort import generate_cohort

    table = generate_cohort(tmp_path / "cohort", n_subjects=2, seed=0).set_index("subject_id")
    assert count_subjects(tmp_path / "cohort") == 2
    for raw in read_cohort(tmp_path / "cohort"):
        row = table.loc[raw.subject_id]
        assert (raw.meta["source"], raw.meta["vendor"], raw.meta["diagnosis"]) == (
            "phantom", row["vendor"], row["diagnosis"])
        assert raw.es_frame == row["es_frame"] and raw.labeled.sum() == 2
        assert raw.meta["edv_ml"] == pytest.approx(row["edv_ml"], rel=1e-4)
        assert raw.meta["esv_ml"] == pytest.approx(row["esv_ml"], rel=1e-4)
        subject = preprocess(raw, get_preset("tiny"))
        assert subject.image.shape[1:] == (12, 64, 64) and subject.n_slices == min(row["n_slices"], 12)
