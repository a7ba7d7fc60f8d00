"""`factory verify STORE`: integrity check of a store; lists every problem found, exits non-zero on any.

Every chunk a committed subject must have is listed (a deleted chunk would silently read as zeros):
in a store of per-subject shards, its shard of each frame array, and every real frame in that shard's
index. Every chunk is read one at a time, which exercises the crc32c checksum codec, so on-disk
corruption is reported with the array, subject and frame it belongs to.
"""

from __future__ import annotations

import argparse

import numpy as np
import zarr

from factory.errors import FactoryError, StoreError
from factory.store import layout, shards
from factory.store.fs import filesystem, join
from factory.store.reader import Store, open_store
from factory.vocabulary import N_LABELS


def check_layout(store: Store) -> list[str]:
    """Manifest, table checksum, array names, dtypes and shapes agree with each other and the attributes."""
    problems = []
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
        elif name in layout.FRAME_ARRAYS and not stored_as_declared(store, array):
            problems.append(f"array {name!r} is not stored as the store's frame_storage"
                            f" {layout.frame_storage(store.attrs)!r} says"
                            f" (chunks {array.chunks}, shards {array.shards})")
    if problems:
        return problems
    try:
        table = store.table  # refuses a table whose checksum differs from the manifest
    except FactoryError as err:
        return [str(err)]
    if len(table) != n:
        problems.append(f"{layout.TABLE} has {len(table)} rows for {n} subjects")
    missing = [c for c, spec in layout.table_columns().items() if spec["required"] and c not in table]
    if missing:
        problems.append(f"{layout.TABLE} lacks required columns {missing}")
    if "subject_id" in table and table["subject_id"].duplicated().any():
        problems.append(f"{layout.TABLE}: duplicate subject_id values")
    return problems


def stored_as_declared(store: Store, array: zarr.Array) -> bool:
    """Whether frame array `array` has one chunk per frame, in one shard per subject where the store says so."""
    t, z, h, w = array.shape[1:]
    if array.chunks != (1, 1, z, h, w):
        return False
    if layout.frame_storage(store.attrs) == layout.CHUNK_PER_FRAME:
        return array.shards is None
    return array.shards == (1, t, z, h, w) and shards.is_frame_shard(array.metadata.to_dict())


def chunk_keys(store: Store) -> dict[str, set[str]]:
    """The chunk keys present on storage, per array (`c/<subject>/<frame>/0/0/0` for frame arrays,
    `c/<subject>/0/0/0/0` for the shards of a store of per-subject shards)."""
    fs, root = filesystem(store.url)
    keys = {}
    for name in layout.ARRAY_NAMES:
        prefix = join(root, name, "c")
        found = fs.find(prefix) if fs.exists(prefix) else []
        keys[name] = {path[len(prefix) - 1:] for path in found}
    return keys


def missing_chunks(store: Store, index: int, n_frames: int, present: dict[str, set[str]]) -> list[str]:
    """Chunks that subject `index` must have (every real frame, every per-subject array) but lacks."""
    missing = []
    sharded = layout.frame_storage(store.attrs) == layout.SHARD_PER_SUBJECT
    for name in layout.ARRAY_NAMES:
        array = store.group[name]
        if sharded and name in layout.FRAME_ARRAYS:
            missing += missing_from_shard(store, name, index, n_frames, present[name])
            continue
        frames = range(n_frames) if name in layout.FRAME_ARRAYS else [None]
        for t in frames:
            coords = (index,) + ((t,) if t is not None else ()) + (0,) * (array.ndim - 1 - (t is not None))
            if array.metadata.encode_chunk_key(coords) not in present[name]:
                missing.append(f"{name}/{array.metadata.encode_chunk_key(coords)}")
    return missing


def missing_from_shard(store: Store, name: str, index: int, n_frames: int, present: set[str]) -> list[str]:
    """`name/<shard> (frames 0-T)` if subject `index`'s shard of frame array `name` is missing, else
    `name/<shard> frame T` for each real frame its index does not list; an unreadable index is a StoreError."""
    array = store.group[name]
    key = array.metadata.encode_chunk_key((index, 0, 0, 0, 0))
    if key not in present:
        return [f"{name}/{key} (frames 0-{n_frames - 1})"]
    fs, root = filesystem(store.url)
    n_chunks = array.shards[1]
    try:
        index_pairs = shards.parse_index(fs.cat_file(join(root, name, key), start=-shards.index_nbytes(n_chunks)),
                                         n_chunks)
    except ValueError as err:
        raise StoreError(f"array {name!r}, shard {name}/{key}: {err}") from None
    return [f"{name}/{key} frame {t}" for t in range(n_frames) if index_pairs[t, 0] == shards.EMPTY]


def read_subject(store: Store, index: int, n_frames: int) -> dict[str, np.ndarray]:
    """Every array of one subject, read chunk by chunk (a checksum failure names its frame)."""
    arrays = {name: np.stack([store.read(name, index, t) for t in range(n_frames)])
              for name in layout.FRAME_ARRAYS}
    return arrays | {name: store.read(name, index) for name in layout.SUBJECT_ARRAYS}


def check_subject(store: Store, index: int, present: dict[str, set[str]]) -> list[str]:
    """Every chunk of one subject exists and decodes, labels are the vocabulary's, metadata matches the arrays."""
    row = store.table.iloc[index]
    name = f"subject {index} ({row['subject_id']})"
    t = int(row["n_frames"])
    if not 1 <= t <= store.group["image"].shape[1]:
        return [f"{name}: n_frames={t} outside 1..{store.group['image'].shape[1]}"]
    try:
        missing = missing_chunks(store, index, t, present)
    except FactoryError as err:
        return [f"{name}: {err}"]
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        return [f"{name}: missing chunk(s) {shown} (deleted? they would read as zeros)"]
    try:
        arrays = read_subject(store, index, t)
    except FactoryError as err:
        return [str(err)]
    image, mask, labeled = arrays["image"], arrays["mask"], arrays["labeled"]
    phase, slice_mask = arrays["phase"], arrays["slice_mask"]
    problems = []
    if not np.isfinite(image).all() or np.abs(image).max() > 1.0:
        problems.append(f"{name}: image values outside [-1, 1] or not finite")
    if mask.max() >= N_LABELS:
        problems.append(f"{name}: mask labels {sorted(int(v) for v in np.unique(mask) if v >= N_LABELS)}"
                        f" outside 0..{N_LABELS - 1}")
    if labeled[t:].any() or int(labeled.sum()) != int(row["n_labeled_frames"]):
        problems.append(f"{name}: labeled frames disagree with n_frames / n_labeled_frames")
    if mask[~labeled[:t]].any():
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
    present = chunk_keys(store)
    for index in range(store.n_subjects):
        problems += check_subject(store, index, present)
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
