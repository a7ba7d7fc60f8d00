"""Readers of real cohorts: ACDC, M&Ms and plain NIfTI folders -> `Subject`s in native geometry.

Every reader returns raw float32 intensities at the native spacing with the NIfTI affine set, the
cycle rolled so that frame 0 is ED, masks in the project's labels (1 RV, 2 MYO, 3 LV) and the
clinical values measured at native resolution (NaN when ED or ES is unlabeled). Anything malformed
(unreadable, NaN/inf or constant image frames, impossible voxel spacing, bad labels) raises an
`InputError` that names the file at fault.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd

from factory.data.clinical import empty_measurement, measure
from factory.data.nifti import (NIFTI_SUFFIXES, is_nifti, load_nifti, nifti_stem, nifti_to_internal,
                                zooms_to_spacing)
from factory.errors import InputError
from factory.record import Subject
from factory.vocabulary import BACKGROUND, LV, MYO, N_LABELS, RV

LAYOUTS: tuple[str, ...] = ("acdc", "mnms", "nifti")
# M&Ms labels (1 LV, 2 MYO, 3 RV) -> ours (1 RV, 2 MYO, 3 LV): index by the M&Ms label.
MNMS_TO_ACDC_LABELS = np.array([BACKGROUND, LV, MYO, RV], dtype=np.uint8)
# M&Ms pathology codes that have an ACDC diagnostic group; others are kept as given.
MNMS_TO_ACDC_DIAGNOSIS = {"NOR": "NOR", "HCM": "HCM", "DCM": "DCM", "ARV": "RV"}
MNMS_ID_COLUMN = "External code"


# ---------------------------------------------------------------- discovery

def _acdc_folders(root: Path) -> list[Path]:
    return sorted(p.parent for p in root.rglob("Info.cfg"))


def _mnms_images(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*_sa.nii*") if is_nifti(p) and nifti_stem(p).endswith("_sa"))


def _mnms_code(image_path: Path) -> str:
    """The subject code of an M&Ms `<code>_sa.nii.gz` (its id in the metadata CSV)."""
    return nifti_stem(image_path)[: -len("_sa")]


def _nifti_files(root: Path) -> list[Path]:
    if root.is_file():
        return [root]
    return sorted(p for p in root.iterdir() if is_nifti(p) and not nifti_stem(p).endswith("_gt"))


_FINDERS = {"acdc": _acdc_folders, "mnms": _mnms_images, "nifti": _nifti_files}


def detect_layout(src: Path) -> str:
    """Name the layout of a cohort folder (or single NIfTI file): 'acdc', 'mnms' or 'nifti'."""
    src = Path(src)
    if src.is_file() and is_nifti(src):
        return "nifti"
    if not src.is_dir():
        raise InputError(f"{src}: no such cohort folder or NIfTI file")
    for layout in LAYOUTS:
        if _FINDERS[layout](src):
            return layout
    raise InputError(f"{src}: no ACDC (Info.cfg), M&Ms (*_sa.nii.gz) or NIfTI files found")


def _resolve(src: Path, layout: str) -> str:
    """The layout to read `src` with: the requested one, or the detected one for 'auto'."""
    if layout == "auto":
        return detect_layout(src)
    if layout not in LAYOUTS:
        raise InputError(f"unknown cohort layout {layout!r}; choose 'auto' or one of {list(LAYOUTS)}")
    return layout


def count_subjects(src: Path, layout: str = "auto") -> int:
    """Number of subjects `read_cohort` will yield, without reading any image."""
    src = Path(src)
    return len(_FINDERS[_resolve(src, layout)](src))


class SubjectFile(NamedTuple):
    """A subject found in a cohort, not read yet: its id, and `read()` that reads (or refuses) it alone."""
    subject_id: str
    read: Callable[[], Subject]


def find_subjects(src: Path, layout: str = "auto", *, full_gt: bool = False, source: str | None = None,
                  vendor: str | None = None) -> list[SubjectFile]:
    """The subjects of a cohort folder, unread, in reading order (ids known before any image is read).

    `source` / `vendor` replace the layout's defaults (ACDC: 'acdc' / 'Siemens'; M&Ms: 'mnms' /
    'unknown'; NIfTI: 'nifti' / 'unknown'); the cohort's own metadata (an ACDC-layout
    `metadata.csv`, the M&Ms CSV's VendorName) still takes precedence.
    `full_gt` uses an ACDC `*_4d_gt` full-cycle mask when present (every frame labeled).
    """
    src = Path(src)
    layout = _resolve(src, layout)
    paths = _FINDERS[layout](src)
    if layout == "acdc":
        table = _read_table([p for p in [src / "metadata.csv"] if p.is_file()], "subject_id")
        return [SubjectFile(folder.name, partial(read_acdc_subject, folder, table.get(folder.name, {}),
                                                 full_gt=full_gt, source=source or "acdc",
                                                 vendor=vendor or "Siemens"))
                for folder in paths]
    if layout == "mnms":
        table = _read_table(sorted(src.glob("*.csv")), MNMS_ID_COLUMN)
        if not table:
            raise InputError(f"{src}: M&Ms layout needs a metadata CSV with an {MNMS_ID_COLUMN!r} column")
        return [SubjectFile(_mnms_code(path), partial(read_mnms_subject, path, table, source=source or "mnms",
                                                      vendor=vendor or "unknown"))
                for path in paths]
    return [SubjectFile(nifti_stem(path), partial(read_nifti_subject, path, source=source or "nifti",
                                                  vendor=vendor or "unknown"))
            for path in paths]


def read_cohort(src: Path, layout: str = "auto", *, full_gt: bool = False, source: str | None = None,
                vendor: str | None = None) -> Iterator[Subject]:
    """Yield the subjects of a cohort folder one at a time (memory flat in the cohort size).

    Arguments as for `find_subjects`; the first malformed subject raises its `InputError`.
    """
    for found in find_subjects(src, layout, full_gt=full_gt, source=source, vendor=vendor):
        yield found.read()


# ---------------------------------------------------------------- shared helpers

def _read_table(paths: list[Path], id_column: str) -> dict[str, dict]:
    """Rows of those metadata CSVs that have an `id_column`, keyed by subject id; blanks dropped.

    Each row also records its CSV under '_table', so that errors about its values can name it.
    """
    rows: dict[str, dict] = {}
    for path in paths:
        try:
            frame = pd.read_csv(path, dtype={id_column: str})
        except (OSError, ValueError) as err:
            raise InputError(f"{path}: cannot read metadata CSV: {err}") from None
        if id_column not in frame.columns:
            continue
        for row in frame.to_dict("records"):
            values = {key: value for key, value in row.items() if not pd.isna(value)}
            rows[str(row[id_column]).strip()] = values | {"_table": path}
    return rows


def _find_nifti(folder: Path, stem: str) -> Path | None:
    """`folder/stem.nii.gz` or `folder/stem.nii`, whichever exists (None if neither)."""
    candidates = (folder / f"{stem}{suffix}" for suffix in NIFTI_SUFFIXES)
    return next((path for path in candidates if path.is_file()), None)


def _load_image(path: Path, ndims: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray, tuple[float, ...]]:
    """`load_nifti` for a cine image, refusing a constant image or frame: nothing to learn, no contrast to scale."""
    image, affine, zooms = load_nifti(path, ndims=ndims)
    low, high = (np.atleast_1d(reduce(image, axis=(0, 1, 2))) for reduce in (np.min, np.max))
    if low.min() == high.max():
        raise InputError(f"{path}: image is constant (every voxel is {low[0]:g})")
    flat = np.flatnonzero(low == high)
    if flat.size:
        raise InputError(f"{path}: frame {flat[0]} (0-based) of {low.size} is constant (every voxel is "
                         f"{low[flat[0]]:g})")
    return image, affine, zooms


def _load_labels(path: Path, image_shape: tuple[int, ...], image_path: Path) -> np.ndarray:
    """Read a label volume that must match the image's voxel grid and hold integers 0..3."""
    labels, _, _ = load_nifti(path, ndims=(len(image_shape),))
    if labels.shape != image_shape:
        raise InputError(f"{path}: mask shape {labels.shape} != image shape {image_shape} of {image_path}")
    values = np.unique(labels)
    bad = values[(values < 0) | (values >= N_LABELS) | (values != np.round(values))]
    if bad.size:
        raise InputError(f"{path}: labels must be integers 0..{N_LABELS - 1}, found {bad[:5].tolist()}")
    return labels.astype(np.uint8)


def _check_cycle(ed: int, es: int, n_frames: int, where: Path) -> None:
    """ED and ES (0-based) must be two different frames of the sequence; `where` gave them."""
    if not (0 <= ed < n_frames and 0 <= es < n_frames and ed != es):
        raise InputError(f"{where}: ED/ES frames ({ed}, {es}; 0-based) must be distinct frames of a "
                         f"{n_frames}-frame cycle")


def _float(row: dict, key: str) -> float:
    """An optional numeric field (e.g. height, weight); NaN when absent or malformed."""
    try:
        return float(row.get(key, np.nan))
    except ValueError:
        return float("nan")


def _build(subject_id: str, image: np.ndarray, mask: np.ndarray, labeled: np.ndarray,
           zooms: tuple[float, ...], affine: np.ndarray, ed: int, es: int | None, meta: dict) -> Subject:
    """Convert NIfTI-ordered arrays to a `Subject`: roll ED to frame 0, measure clinical values."""
    image, mask = nifti_to_internal(image), nifti_to_internal(mask)
    image, mask, labeled = (np.roll(a, -ed, axis=0) for a in (image, mask, labeled))
    es_frame = None if es is None else (es - ed) % image.shape[0]
    spacing = zooms_to_spacing(zooms)
    clinical = (measure(mask, spacing, es_frame) if es_frame is not None and labeled[0] and labeled[es_frame]
                else empty_measurement())
    return Subject(subject_id=subject_id, image=np.ascontiguousarray(image),
                   mask=np.ascontiguousarray(mask), labeled=labeled, spacing_mm=spacing, es_frame=es_frame,
                   affine=affine, meta={"subject_id": subject_id, "ed_frame_native": ed, **meta, **clinical})


# ---------------------------------------------------------------- ACDC

def read_info_cfg(path: Path) -> dict[str, str]:
    """Parse an ACDC Info.cfg ('Key: value' lines) and check that it gives ED and ES."""
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(f"{path}: cannot read: {err}") from None
    info = {key.strip(): value.strip() for key, sep, value in (line.partition(":") for line in lines) if sep}
    for key in ("ED", "ES"):
        if not info.get(key, "").isdigit():
            raise InputError(f"{path}: {key} frame missing or not a positive integer (got {info.get(key)!r})")
    return info


def read_acdc_subject(folder: Path, row: dict | None = None, *, full_gt: bool = False, source: str = "acdc",
                      vendor: str = "Siemens") -> Subject:
    """One ACDC-layout patient folder; `row` is its metadata.csv row (vendor, source, diagnosis)."""
    row = row or {}
    folder = Path(folder)
    pid = folder.name
    info_path = folder / "Info.cfg"
    info = read_info_cfg(info_path)
    image_path = _find_nifti(folder, f"{pid}_4d")
    if image_path is None:
        raise InputError(f"{folder}: missing the cine sequence {pid}_4d.nii.gz")
    image, affine, zooms = _load_image(image_path, ndims=(4,))
    n_frames = image.shape[3]
    ed, es = int(info["ED"]) - 1, int(info["ES"]) - 1
    _check_cycle(ed, es, n_frames, info_path)
    full_path = _find_nifti(folder, f"{pid}_4d_gt") if full_gt else None
    if full_path is not None:
        mask = _load_labels(full_path, image.shape, image_path)
        labeled = np.ones(n_frames, dtype=bool)
    else:
        mask = np.zeros(image.shape, dtype=np.uint8)
        labeled = np.zeros(n_frames, dtype=bool)
        for frame in (ed, es):
            gt_path = _find_nifti(folder, f"{pid}_frame{frame + 1:02d}_gt")
            if gt_path is not None:
                mask[..., frame] = _load_labels(gt_path, image.shape[:3], image_path)
                labeled[frame] = True
    meta = {"source": row.get("source", source), "vendor": row.get("vendor", vendor),
            "diagnosis": info.get("Group", row.get("diagnosis")), "origin": str(folder),
            "height_m": _float(info, "Height") / 100, "weight_kg": _float(info, "Weight")}
    return _build(pid, image, mask, labeled, zooms, affine, ed, es, meta)


# ---------------------------------------------------------------- M&Ms

def read_mnms_subject(image_path: Path, table: dict[str, dict], *, source: str = "mnms",
                      vendor: str = "unknown") -> Subject:
    """One M&Ms `<code>_sa.nii.gz` with its optional `_sa_gt` and its row of the metadata CSV."""
    image_path = Path(image_path)
    code = _mnms_code(image_path)
    row = table.get(code)
    if row is None:
        raise InputError(f"{image_path}: subject {code!r} has no row in the M&Ms metadata CSV")
    image, affine, zooms = _load_image(image_path, ndims=(4,))
    n_frames = image.shape[3]
    try:
        ed, es = int(row["ED"]), int(row["ES"])
    except (KeyError, ValueError):
        raise InputError(f"{row['_table']}: subject {code!r} needs integer ED and ES columns") from None
    _check_cycle(ed, es, n_frames, row["_table"])
    gt_path = _find_nifti(image_path.parent, f"{code}_sa_gt")
    labeled = np.zeros(n_frames, dtype=bool)
    if gt_path is None:
        mask = np.zeros(image.shape, dtype=np.uint8)
    else:
        mask = MNMS_TO_ACDC_LABELS[_load_labels(gt_path, image.shape, image_path)]
        labeled[[ed, es]] = True
    pathology = str(row.get("Pathology", "")) or None
    meta = {"source": source, "vendor": row.get("VendorName", vendor), "vendor_code": row.get("Vendor"),
            "centre": row.get("Centre"), "pathology": pathology,
            "diagnosis": MNMS_TO_ACDC_DIAGNOSIS.get(pathology, pathology), "origin": str(image_path),
            "height_m": _float(row, "Height") / 100, "weight_kg": _float(row, "Weight")}
    return _build(code, image, mask, labeled, zooms, affine, ed, es, meta)


# ---------------------------------------------------------------- plain NIfTI

def read_nifti_subject(path: Path, *, source: str = "nifti", vendor: str = "unknown") -> Subject:
    """One unlabeled 3D (one frame) or 4D NIfTI file; its phase in the cycle is unknown."""
    path = Path(path)
    image, affine, zooms = _load_image(path, ndims=(3, 4))
    n_frames = image.shape[3] if image.ndim == 4 else 1
    meta = {"source": source, "vendor": vendor, "diagnosis": None, "origin": str(path)}
    return _build(nifti_stem(path), image, np.zeros(image.shape, dtype=np.uint8),
                  np.zeros(n_frames, dtype=bool), zooms, affine, 0, None, meta)
