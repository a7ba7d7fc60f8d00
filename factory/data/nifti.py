"""NIfTI input/output: validated loading, deterministic saving, and the internal axis layout.

NIfTI voxel axes (i, j, k[, t]) are the reverse of the internal (t, k, j, i) = (T, Z, H, W) layout,
so converting is a full transpose (plus a T = 1 axis for a 3D volume); spacing follows the same
reversal: zooms (i, j, k) -> spacing_mm (z, y, x).
"""

from __future__ import annotations

import gzip
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.filebasedimages import ImageFileError
from nibabel.spatialimages import HeaderDataError

from factory.errors import InputError

NIFTI_SUFFIXES: tuple[str, ...] = (".nii.gz", ".nii")
_READ_ERRORS = (ImageFileError, HeaderDataError, OSError, EOFError, zlib.error, ValueError)
# nibabel silently "fixes" header problems below this level (e.g. a zero voxel size becomes 1 mm);
# from it up (zero/negative pixdim, bad magic, datatype, offsets) they raise instead.
_HEADER_ERROR_LEVEL = 30
# Voxel spacing (mm) a cine can have. Clinical in-plane pixels are 0.5-3 mm and slices 5-10 mm (ACDC:
# 0.70-1.95 mm, 5-10 mm); the bounds are generous, and what lies outside comes from a broken header and
# breaks preprocessing: sub-0.1 mm voxels stretch the crop window past int16 (MONAI's SpatialCrop), and
# very coarse ones blow up the resampled grid.
IN_PLANE_MM = (0.1, 10.0)
SLICE_MM = (0.1, 50.0)


def is_nifti(path: Path) -> bool:
    """True for a `.nii` or `.nii.gz` file name."""
    return path.name.lower().endswith(NIFTI_SUFFIXES)


def nifti_stem(path: Path) -> str:
    """File name without its `.nii` / `.nii.gz` suffix (the subject or frame id)."""
    name = path.name
    for suffix in NIFTI_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


@contextmanager
def _nibabel_silenced() -> Iterator[None]:
    """Mute nibabel's logger, which prints the header problems it then raises on (the error says it all)."""
    logger = nib.imageglobals.logger
    was_disabled, logger.disabled = logger.disabled, True
    try:
        yield
    finally:
        logger.disabled = was_disabled


def load_nifti(path: Path, ndims: tuple[int, ...] = (3, 4)) -> tuple[np.ndarray, np.ndarray, tuple[float, ...]]:
    """Read a NIfTI volume as float32 (i, j, k[, t]) with its affine and spatial zooms (i, j, k).

    Every way a file can be unusable (missing, truncated or corrupt, unexpected dimensionality,
    NaN/inf voxels, impossible voxel spacing) raises an `InputError` that names the file.
    Trailing singleton axes beyond the fourth (e.g. a 5D (i, j, k, t, 1) file) are dropped.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such NIfTI file")
    try:
        with nib.imageglobals.ErrorLevel(_HEADER_ERROR_LEVEL), _nibabel_silenced():
            image = nib.load(path)
        data = np.asarray(image.dataobj, dtype=np.float32)
        zooms = tuple(float(z) for z in image.header.get_zooms()[:3])
    except _READ_ERRORS as err:
        raise InputError(f"{path}: unreadable NIfTI (truncated, corrupt or invalid header): {err}") from None
    while data.ndim > 4 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim not in ndims:
        raise InputError(f"{path}: expected a {' or '.join(f'{n}D' for n in ndims)} image, "
                         f"got {data.ndim}D with shape {data.shape}")
    if not np.isfinite(data).all():
        raise InputError(f"{path}: contains {np.count_nonzero(~np.isfinite(data))} NaN/inf voxels")
    _check_spacing(zooms, path)
    return data, np.asarray(image.affine, dtype=np.float64), zooms


def _check_spacing(zooms: tuple[float, ...], path: Path) -> None:
    """Refuse NIfTI zooms (i, j, k) outside `IN_PLANE_MM` (i, j) and `SLICE_MM` (k): no cine has them."""
    bounds = (IN_PLANE_MM, IN_PLANE_MM, SLICE_MM)
    if len(zooms) < 3 or not all(low <= z <= high for z, (low, high) in zip(zooms, bounds)):
        given = " x ".join(f"{z:.3g}" for z in zooms)
        raise InputError(f"{path}: impossible voxel spacing {given} mm (i, j, k); expected in-plane "
                         f"{IN_PLANE_MM[0]:g}-{IN_PLANE_MM[1]:g} mm and slices {SLICE_MM[0]:g}-{SLICE_MM[1]:g} mm")


def nifti_to_internal(data: np.ndarray) -> np.ndarray:
    """(i, j, k[, t]) NIfTI voxel array -> (T, Z, H, W); a 3D volume becomes one frame."""
    internal = np.transpose(data)
    return internal[None] if data.ndim == 3 else internal


def internal_to_nifti(data: np.ndarray) -> np.ndarray:
    """(T, Z, H, W) or (Z, H, W) internal array -> (i, j, k, t) or (i, j, k) NIfTI voxel order.

    A view, not a copy: nibabel writes the Fortran-ordered view directly, which halves write time.
    """
    return np.transpose(data)


def zooms_to_spacing(zooms: tuple[float, ...]) -> tuple[float, float, float]:
    """NIfTI zooms (i, j, k) -> internal spacing_mm (z, y, x)."""
    i, j, k = zooms[:3]
    return (float(k), float(j), float(i))


def spacing_affine(spacing_mm: tuple[float, float, float]) -> np.ndarray:
    """Axis-aligned affine of the (i, j, k) voxel frame for an internal (z, y, x) spacing."""
    z, y, x = spacing_mm
    return np.diag([x, y, z, 1.0])


def save_nifti(array_tzyx: np.ndarray, spacing_mm: tuple[float, float, float], path: Path,
               affine: np.ndarray | None = None, compresslevel: int = 6) -> Path:
    """Write a (T, Z, H, W) or (Z, H, W) array as NIfTI, byte-identical for identical input.

    The dtype of the array is kept (float32 images, uint8 masks). The voxel frame is axis-aligned
    with the given spacing unless an `affine` (e.g. the native one) is given, which then defines the
    voxel size. `.nii.gz` is gzipped with a fixed mtime and no stored file name, so re-exporting the
    same data gives the same bytes.
    """
    path = Path(path)
    image = nib.Nifti1Image(internal_to_nifti(array_tzyx),
                            spacing_affine(spacing_mm) if affine is None else affine)
    image.header.set_xyzt_units("mm", "sec")
    payload = image.to_bytes()
    if path.name.lower().endswith(".gz"):
        payload = gzip.compress(payload, compresslevel=compresslevel, mtime=0)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(payload)
    return path
