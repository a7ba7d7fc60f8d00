"""`factory verify STORE`: integrity check of a store; lists every problem found, exits non-zero on any.

Reading every chunk exercises the crc32c checksum codec, so on-disk corruption is reported with the
subject it belongs to.
"""

from __future__ import annotations

import argparse
import hashlib

import numpy as np

from factory.errors import FactoryError
from factory.store import layout
from factory.store.fs import filesystem, join
from factory.store.reader import Store, open_store


def check_layout(store: Store) -> list[str]:
    """Manifest, table checksum, array names, dtypes and shapes agree with each other and the attributes."""
    problems = []
    layout.validate(store.manifest, "manifest", store.url)
    fs, root = filesystem(store.url)
    with fs.open(join(root, layout.TABLE), "rb") as f:
        if hashlib.sha256(f.read()).hexdigest() != store.manifest["table"]["sha256"]:
            problems.append(f"{layout.TABLE}: checksum differs from the manifest (modified or corrupt)")
    n = store.manifest["n_subjects"]
    t = store.attrs["max_frames"]
    z, h, w = store.attrs["geometry"]
    expected = {"image": ((n, t, z, h, w), "float16"), "mask": ((n, t, z, h, w), "uint8"),
                "labeled": ((n, t), "bool"), "phase": ((n, t), "float32"), "slice_mask": ((n, z), "bool")}
    for name, (shape, dtype) in expected.items():
        if name not in store.group:
            problems.append(f"array {name!r} is missing")
            continue
        array = store.group[name]
        if tuple(array.shape) != shape or str(array.dtype) != dtype:
            problems.append(f"array {name!r} is {array.dtype}{tuple(array.shape)}, expected {dtype}{shape}")
    try:
        table = store.table
    except Exception as err:  # pyarrow raises several types for a damaged file
        return problems + [f"{layout.TABLE}: unreadable ({err})"]
    if len(table) != n:
        problems.append(f"{layout.TABLE} has {len(table)} rows for {n} subjects")
    missing = [c for c, spec in layout.table_columns().items() if spec["required"] and c not in table]
    if missing:
        problems.append(f"{layout.TABLE} lacks required columns {missing}")
    if "subject_id" in table and table["subject_id"].duplicated().any():
        problems.append(f"{layout.TABLE}: duplicate subject_id values")
    return problems


def check_subject(store: Store, index: int) -> list[str]:
    """Every chunk of one subject decodes, labels are in 0..3, metadata matches the arrays."""
    row = store.table.iloc[index]
    name = f"subject {index} ({row['subject_id']})"
    try:
        image = store.group["image"][index]
        mask = store.group["mask"][index]
        labeled = store.group["labeled"][index]
        phase = store.group["phase"][index]
        slice_mask = store.group["slice_mask"][index]
    except Exception as err:  # zarr raises codec-specific errors on checksum mismatch
        return [f"{name}: unreadable chunk ({type(err).__name__}: {err})"]
    problems = []
    t = int(row["n_frames"])
    if not 1 <= t <= image.shape[0]:
        return [f"{name}: n_frames={t} outside 1..{image.shape[0]}"]
    if not np.isfinite(image[:t]).all() or np.abs(image[:t]).max() > 1.0:
        problems.append(f"{name}: image values outside [-1, 1] or not finite")
    if mask.max() > 3:
        problems.append(f"{name}: mask labels {sorted(set(np.unique(mask)) - {0, 1, 2, 3})} outside 0..3")
    if labeled[t:].any() or int(labeled.sum()) != int(row["n_labeled_frames"]):
        problems.append(f"{name}: labeled frames disagree with n_frames / n_labeled_frames")
    if mask[:t][~labeled[:t]].any():
        problems.append(f"{name}: unlabeled frames carry mask voxels")
    if int(slice_mask.sum()) != int(row["n_slices"]):
        problems.append(f"{name}: slice_mask has {int(slice_mask.sum())} slices, table says {row['n_slices']}")
    if phase[0] != 0:
        problems.append(f"{name}: frame 0 is not ED (phase {phase[0]})")
    es = row["es_frame"]
    if es == es and es is not None and not 0 < int(es) < t:
        problems.append(f"{name}: es_frame {es} outside 1..{t - 1}")
    return problems


def verify_store(url: str) -> list[str]:
    """All problems found in the store at `url` (an empty list means it is sound)."""
    try:
        store = open_store(url)
        problems = check_layout(store)
    except FactoryError as err:
        return [str(err)]
    if problems:
        return problems
    for index in range(store.n_subjects):
        problems += check_subject(store, index)
    return problems


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("store", help="store path or URL")


def run(args: argparse.Namespace) -> int:
    problems = verify_store(args.store)
    if problems:
        print(f"{args.store}: {len(problems)} problem(s)")
        for problem in problems:
            print(f"  - {problem}")
        return 1
    store = open_store(args.store)
    print(f"{args.store}: OK ({store.n_subjects} subjects, kind {store.kind}, preset {store.attrs['preset']})")
    return 0
