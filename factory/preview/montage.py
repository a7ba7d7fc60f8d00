"""`factory montage`: mid-ventricular ED/ES slices of phantom subjects beside real reference frames.

Both sides are shown the way the real frames were preprocessed (CineMA): 1 x 1 mm pixels, a
192 x 192 crop around the LV, intensities scaled to 0..255, and drawn with the same grey scale.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import ndimage

from factory.cli_args import positive_int
from factory.data.nifti import load_nifti, nifti_to_internal
from factory.data.readers import read_info_cfg
from factory.errors import InputError
from factory.outputs import check_output
from factory.vocabulary import LV

CROP = 192
Pair = tuple[str, np.ndarray, np.ndarray]  # title, ED slice, ES slice (0..255, CROP x CROP)


def _crop(image: np.ndarray, center: tuple[float, float]) -> np.ndarray:
    """CROP x CROP window around (row, col), zero-padded where it leaves the image."""
    half = CROP // 2
    padded = np.pad(image, half)
    r, c = (int(round(v)) + half for v in center)
    return padded[r - half:r + half, c - half:c + half]


def _scale(ed: np.ndarray, es: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Map both frames to 0..255 by the ED frame's 99.5th percentile (like uint8 preprocessing)."""
    top = max(float(np.percentile(ed, 99.5)), 1e-6)
    return tuple(np.clip(x / top * 255.0, 0.0, 255.0) for x in (ed, es))


def phantom_pair(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """ED and ES mid-ventricular slices of one phantom subject at 1 mm, centred on the LV."""
    info = read_info_cfg(folder / "Info.cfg")
    frames = []
    for number in (int(info["ED"]), int(info["ES"])):
        image, _, zooms = load_nifti(folder / f"{folder.name}_frame{number:02d}.nii.gz", ndims=(3,))
        mask, _, _ = load_nifti(folder / f"{folder.name}_frame{number:02d}_gt.nii.gz", ndims=(3,))
        frames.append((nifti_to_internal(image)[0], nifti_to_internal(mask)[0], zooms[0]))
    (ed, ed_mask, pixel), (es, _, _) = frames
    with_lv = np.flatnonzero((ed_mask == LV).any(axis=(1, 2)))
    if with_lv.size == 0:
        raise InputError(f"{folder}: the ED mask holds no LV")
    z = int(with_lv[len(with_lv) // 2])
    center = tuple(c * pixel for c in ndimage.center_of_mass(ed_mask[z] == LV))
    return _scale(*(_crop(ndimage.zoom(x[z], pixel, order=1), center) for x in (ed, es)))


def real_pairs(folder: Path) -> list[Pair]:
    """Mid slices of the `<name>_ed` / `<name>_es` reference frames (already 1 mm, 192 x 192)."""
    pairs = []
    for ed_path in sorted(folder.glob("*_ed.nii.gz")):
        es_path = ed_path.with_name(ed_path.name.replace("_ed.nii.gz", "_es.nii.gz"))
        if not es_path.is_file():
            continue
        ed, es = (nifti_to_internal(load_nifti(p, ndims=(3,))[0])[0] for p in (ed_path, es_path))
        z = ed.shape[0] // 2
        pairs.append((ed_path.name[: -len("_ed.nii.gz")], *_scale(ed[z], es[z])))
    return pairs


def phantom_pairs(root: Path, n_subjects: int) -> list[Pair]:
    """Up to `n_subjects` phantom subjects, visiting vendors in turn so each vendor appears."""
    table_path = root / "metadata.csv"
    if not table_path.is_file():
        raise InputError(f"{root}: no metadata.csv; is this a `factory phantom` output folder?")
    table = pd.read_csv(table_path)
    by_vendor = [list(group.itertuples()) for _, group in table.groupby("vendor", sort=True)]
    chosen = [rows[i] for i in range(max(map(len, by_vendor), default=0)) for rows in by_vendor if i < len(rows)]
    return [(f"phantom {row.subject_id} {row.vendor} {row.diagnosis}", *phantom_pair(root / row.subject_id))
            for row in chosen[:n_subjects]]


def draw(columns: list[list[Pair]], out: Path) -> Path:
    """One PNG: each column group shows ED | ES pairs, one pair per row, grey scale 0..255."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = [c for c in columns if c]
    n_rows = max(len(c) for c in columns)
    fig, axes = plt.subplots(n_rows, 2 * len(columns), figsize=(4 * len(columns) * 2, 4 * n_rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for g, pairs in enumerate(columns):
        for row, (title, ed, es) in enumerate(pairs):
            for k, (phase, image) in enumerate((("ED", ed), ("ES", es))):
                ax = axes[row, 2 * g + k]
                ax.imshow(image, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
                ax.set_title(f"{title} {phase}", fontsize=9)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=80)
    plt.close(fig)
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--phantom", type=Path, required=True, help="output folder of `factory phantom`")
    parser.add_argument("--real", type=Path, default=None, help="folder of real *_ed/*_es.nii.gz frames")
    parser.add_argument("--out", type=Path, required=True, help="PNG file to write (name ending in .png)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    parser.add_argument("--subjects", type=positive_int, default=3, help="phantom subjects to show (vendors in turn)")


def check_png_output(out: Path, overwrite: bool) -> None:
    """Refuse an --out that is not a .png file name, is a folder, lies under a file, or exists (unless overwrite)."""
    check_output(out, overwrite=overwrite, accept=(), is_file=True)
    if out.suffix.lower() != ".png":
        raise InputError(f"--out {out}: the montage is a PNG; give a file name ending in .png")


def run(args: argparse.Namespace) -> int:
    """Draw the montage into --out and print the path written."""
    check_png_output(args.out, args.overwrite)
    phantom = phantom_pairs(args.phantom, args.subjects)
    real = real_pairs(args.real) if args.real is not None and args.real.is_dir() else []
    if args.real is not None and not real:
        print(f"factory montage: no real frames in {args.real}; showing the phantom only")
    print(f"wrote {draw([phantom, real], args.out)}")
    return 0
