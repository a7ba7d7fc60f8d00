"""Open a store and read subjects or single frames from it, lazily.

Zarr arrays are opened on first use in the process that uses them, never inherited across a fork
(forked workers inheriting zarr's event loop deadlock), so a `Store` can be handed to DataLoader
workers or Ray tasks and pickled cheaply.
"""

from __future__ import annotations

import hashlib
import io

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import zarr

from factory.errors import StoreError
from factory.record import Subject
from factory.store import layout
from factory.store.fs import filesystem, join, read_json


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
        self._table = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_group": None}

    @property
    def group(self) -> zarr.Group:
        """The root group, opened in the current process on first use."""
        if self._group is None:
            self._group = zarr.open_group(self.url, mode="r")
        return self._group

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
        try:
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
        where = (index,) if frames is None else (index, frames)
        try:
            return self.group[name][where]
        except Exception as err:  # zarr raises codec-specific errors (ValueError for a crc32c mismatch)
            raise StoreError(f"{self.url}: array {name!r}, {self.locate(name, index, frames)}: chunk unreadable"
                             f" ({type(err).__name__}: {err})") from None

    def locate(self, name: str, index: int, frames: slice | int | None) -> str:
        """`subject I (ID), frame T` for the first unreadable frame chunk of a read that failed."""
        subject = f"subject {index}"
        if self._table is not None and index in self._table.index:
            subject += f" ({self._table.loc[index, 'subject_id']})"
        if name not in layout.FRAME_ARRAYS:
            return subject
        array = self.group[name]
        span = range(array.shape[1])[frames] if isinstance(frames, slice) else (
            [frames] if frames is not None else range(array.shape[1]))
        for t in span:
            try:
                array[index, t]
            except Exception:
                return f"{subject}, frame {t}"
        return subject

    def frame(self, index: int, t: int) -> tuple[np.ndarray, np.ndarray]:
        """One 3D frame: image float32 (Z, H, W) in [-1, 1] and mask uint8 (Z, H, W)."""
        return self.read("image", index, t).astype(np.float32), self.read("mask", index, t)

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
