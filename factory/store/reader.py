"""Open a store and read subjects, single frames or many frames at once from it, lazily.

Zarr arrays are opened on first use in the process that uses them, never inherited across a fork
(forked workers inheriting zarr's event loop deadlock), so a `Store` can be handed to DataLoader
workers or Ray tasks and pickled cheaply.
"""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Iterator, Sequence

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import zarr

from factory.errors import StoreError
from factory.record import Subject
from factory.store import layout
from factory.store.batch import BatchReader
from factory.store.fs import filesystem, join, read_json

FRAMES = tuple(layout.FRAME_ARRAYS)  # ("image", "mask")
READ_DTYPES = {"image": np.float32, "mask": np.uint8}  # frame arrays as read: images widened from float16


def frame_runs(pairs: np.ndarray) -> list[tuple[int, slice]]:
    """(subject, frame) pairs as runs of consecutive frames of one subject, in their order: (subject, frames)."""
    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    new = np.r_[True, (np.diff(pairs[:, 0]) != 0) | (np.diff(pairs[:, 1]) != 1)][:len(pairs)]
    starts = np.flatnonzero(new)
    stops = np.r_[starts[1:], len(pairs)]
    return [(int(pairs[a, 0]), slice(int(pairs[a, 1]), int(pairs[b - 1, 1]) + 1)) for a, b in zip(starts, stops)]


class Store:
    """A finished (or, with `require_complete=False`, in-progress) store."""

    def __init__(self, url: str, require_complete: bool = True):
        self.url = str(url)
        fs, root = filesystem(self.url)
        if not fs.exists(join(root, "zarr.json")):
            raise StoreError(f"{self.url}: not a store (no zarr.json at its root)")
        self.complete = fs.exists(join(root, layout.MANIFEST))
        if require_complete and not self.complete:
            raise StoreError(f"{self.url}: store is incomplete (no {layout.MANIFEST}); it was not finished"
                             " or is still being written")
        self.manifest = None
        if self.complete:
            self.manifest = read_document(fs, join(root, layout.MANIFEST), self.url)
            layout.validate(self.manifest, "manifest", f"{self.url}/{layout.MANIFEST}")
        self.attrs = read_document(fs, join(root, "zarr.json"), self.url).get("attributes") or {}
        layout.validate(self.attrs, "store-attributes", f"{self.url}/zarr.json")
        self._group = None
        self._arrays: dict[str, zarr.Array] = {}
        self._batch = BatchReader(self.url)
        self._pid: int | None = None
        self._table = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_group": None, "_arrays": {}, "_pid": None}

    @property
    def group(self) -> zarr.Group:
        """The root group, opened in the current process on first use (again in a forked child)."""
        self._open_here()
        return self._group

    def _open_here(self) -> None:
        """Open the group in this process on first use, and afresh in a forked child: the parent's handles
        belong to its event loops."""
        if self._group is None or self._pid != os.getpid():
            self._group, self._arrays = zarr.open_group(self.url, mode="r"), {}
            self._pid = os.getpid()

    def array(self, name: str) -> zarr.Array:
        """Array `name`, opened once per process (opening an array reads its metadata)."""
        self._open_here()
        if name not in self._arrays:
            self._arrays[name] = self._group[name]
        return self._arrays[name]

    @property
    def table(self) -> pd.DataFrame:
        """metadata.parquet (complete stores) or the committed rows so far (stores being written)."""
        if self._table is None:
            self._table = self.read_table() if self.complete else self.committed_rows()
        return self._table

    def read_table(self) -> pd.DataFrame:
        """metadata.parquet, refused unless its bytes are the ones the manifest recorded."""
        fs, root = filesystem(self.url)
        where = f"{self.url}/{layout.TABLE}"
        try:
            with fs.open(join(root, layout.TABLE), "rb") as f:
                payload = f.read()
        except FileNotFoundError:
            raise StoreError(f"{where}: missing from a store whose manifest lists it") from None
        if hashlib.sha256(payload).hexdigest() != self.manifest["table"]["sha256"]:
            raise StoreError(f"{where}: checksum differs from {layout.MANIFEST} (modified or corrupt table)")
        try:  # parse the bytes just hashed (`filesystem=` would read the file a second time, perhaps changed)
            return pq.read_table(io.BytesIO(payload)).to_pandas()
        except Exception as err:  # pyarrow raises several types for a damaged file
            raise StoreError(f"{where}: unreadable ({err})") from None

    def committed_rows(self) -> pd.DataFrame:
        """Rows of the subjects committed so far, with their array `index` (for following a writer)."""
        fs, root = filesystem(self.url)
        paths = sorted(fs.glob(join(root, layout.ROWS_DIR, "*.json")))
        rows = [read_json(fs, p) for p in paths]
        return pd.DataFrame(rows).set_index("index", drop=False) if rows else pd.DataFrame()

    @property
    def n_subjects(self) -> int:
        return int(self.group["image"].shape[0])

    @property
    def spacing_mm(self) -> tuple[float, float, float]:
        return tuple(self.attrs["spacing_mm"])

    @property
    def kind(self) -> str:
        return self.attrs["kind"]

    def read(self, name: str, index: int, frames: slice | int | None = None) -> np.ndarray:
        """Array `name` of subject `index` (optionally only `frames`); a chunk that fails to decode or
        its checksum becomes a StoreError naming the array, subject and frame."""
        return self._read([(index,) if frames is None else (index, frames)], (name,))[0][0]

    def unreadable(self, name: str, index: int, frames: slice | int | None, err: Exception) -> StoreError:
        """The error for a read of array `name` that failed with `err`, naming the subject and the first bad frame."""
        return StoreError(f"{self.url}: array {name!r}, {self.locate(name, index, frames)}: chunk unreadable"
                          f" ({type(err).__name__}: {err})")

    def locate(self, name: str, index: int, frames: slice | int | None) -> str:
        """`subject I (ID), frame T` for the first unreadable frame chunk of a read that failed."""
        subject = f"subject {index}"
        if self._table is not None and index in self._table.index:
            subject += f" ({self._table.loc[index, 'subject_id']})"
        if name not in layout.FRAME_ARRAYS:
            return subject
        n_frames = self.array(name).shape[1]
        span = range(n_frames)[frames] if isinstance(frames, slice) else (
            [frames] if frames is not None else range(n_frames))
        parts = self._batch.read([(name, (index, t)) for t in span])
        return next((f"{subject}, frame {t}" for t, part in zip(span, parts) if isinstance(part, Exception)), subject)

    def frame(self, index: int, t: int) -> tuple[np.ndarray, np.ndarray]:
        """One 3D frame: image float32 (Z, H, W) in [-1, 1] and mask uint8 (Z, H, W)."""
        return self.read("image", index, t).astype(np.float32), self.read("mask", index, t)

    def read_frames(self, pairs: Sequence[tuple[int, int]] | np.ndarray,
                    names: Sequence[str] = FRAMES) -> tuple[np.ndarray, ...]:
        """Many frames in one call, the batched `frame`: one (N, Z, H, W) array per name, row n from pair n.

        `pairs` are (subject, frame) rows in any order, repeats allowed; `names` picks the frame
        arrays, by default image (float32 in [-1, 1]) and mask (uint8) as `frame` returns them. Use it
        wherever more than one frame is read (training batches, streams, evaluation): all chunks are
        fetched and decoded concurrently in one round trip through zarr's asynchronous API (a run of
        consecutive frames of one subject is one zarr read). A chunk that fails to decode or its
        checksum is a StoreError naming the array, subject and frame.
        """
        return self._stacked(frame_runs(pairs), names, self.array("image").shape[2:])

    def read_slices(self, keys: Sequence[tuple[int, int, int]] | np.ndarray,
                    names: Sequence[str] = FRAMES) -> tuple[np.ndarray, ...]:
        """Many 2D slices in one call: one (N, H, W) array per name, row n from (subject, frame, slice) key n.

        As `read_frames` (same dtypes, one round trip, errors named), for slice-wise training.
        """
        selections = [(int(i), int(t), slice(int(z), int(z) + 1)) for i, t, z in np.asarray(keys).reshape(-1, 3)]
        return self._stacked(selections, names, self.array("image").shape[3:])

    def read_sequences(self, subjects: Sequence[int], names: Sequence[str] = FRAMES,
                       n_frames: Sequence[int] | None = None, per_read: int = 16) -> Iterator[tuple[np.ndarray, ...]]:
        """The real frames of each subject in turn: one (T, Z, H, W) array per name, as `read_frames` reads them.

        `per_read` subjects are fetched together (memory stays bounded on big stores). `n_frames`
        (per subject) defaults to the table's; pass it for a store still being written.
        """
        subjects = [int(i) for i in subjects]
        lengths = self.table.loc[subjects, "n_frames"] if n_frames is None else n_frames
        selections = [(i, slice(0, int(n))) for i, n in zip(subjects, lengths)]
        for start in range(0, len(selections), per_read):
            for arrays in zip(*self._read(selections[start:start + per_read], names)):
                yield tuple(array.astype(READ_DTYPES[name], copy=False) for name, array in zip(names, arrays))

    def _stacked(self, selections: list[tuple], names: Sequence[str],
                 row_shape: tuple[int, ...]) -> tuple[np.ndarray, ...]:
        """Per name, the arrays at `selections` concatenated along their first axis (images as float32)."""
        # a zero-row array of the output dtype first: no selection at all works, and images become float32
        return tuple(np.concatenate([np.empty((0, *row_shape), READ_DTYPES[name]), *parts])
                     for name, parts in zip(names, self._read(selections, names)))

    def _read(self, selections: list[tuple], names: Sequence[str]) -> list[list[np.ndarray]]:
        """Per name, array `name` at every (subject, frames, ...) selection, all fetched in one round trip."""
        reads = [(name, where) for name in names for where in selections]
        parts = self._batch.read(reads)
        for (name, where), part in zip(reads, parts):
            if isinstance(part, Exception):  # zarr raises codec-specific errors (ValueError for a crc32c mismatch)
                raise self.unreadable(name, where[0], where[1], part) from None
        return [parts[k * len(selections):(k + 1) * len(selections)] for k in range(len(names))]

    def subject(self, index: int) -> Subject:
        """Subject `index` with its padding frames removed."""
        row = self.table.loc[index]
        t = int(row["n_frames"])
        es = row["es_frame"]
        meta = {k: (None if isinstance(v, float) and np.isnan(v) else v) for k, v in row.items()}
        return Subject(
            subject_id=str(row["subject_id"]),
            image=self.read("image", index, slice(0, t)).astype(np.float32),
            mask=self.read("mask", index, slice(0, t)),
            labeled=self.read("labeled", index, slice(0, t)),
            spacing_mm=self.spacing_mm,
            es_frame=None if pd.isna(es) else int(es),
            slice_mask=self.read("slice_mask", index),
            phase=self.read("phase", index, slice(0, t)),
            meta=meta,
        )


def read_document(fs, path: str, url: str) -> dict:
    """A JSON document of the store at `url`; garbage is a StoreError naming the file."""
    try:
        document = read_json(fs, path)
    except FileNotFoundError:
        raise StoreError(f"{path}: missing") from None
    except (ValueError, UnicodeDecodeError) as err:
        raise StoreError(f"{url}: {path.rsplit('/', 1)[-1]} is not valid JSON ({err})") from None
    if not isinstance(document, dict):
        raise StoreError(f"{url}: {path.rsplit('/', 1)[-1]} is not a JSON object")
    return document


def open_store(url: str, require_complete: bool = True, kind: str | None = None) -> Store:
    """Open a store for reading; refuses an incomplete one unless asked not to, and one of another `kind`."""
    store = Store(url, require_complete=require_complete)
    if kind is not None and store.kind != kind:
        raise StoreError(f"{url}: is a {store.kind} store, expected a {kind} store here")
    return store
