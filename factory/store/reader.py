"""Open a store and read subjects or single frames from it, lazily.

Zarr arrays are opened on first use in the process that uses them, never inherited across a fork
(forked workers inheriting zarr's event loop deadlock), so a `Store` can be handed to DataLoader
workers or Ray tasks and pickled cheaply.
"""

from __future__ import annotations

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
        self.manifest = read_json(fs, join(root, layout.MANIFEST)) if self.complete else None
        self.attrs = dict(zarr.open_group(self.url, mode="r").attrs)
        layout.validate(self.attrs, "store-attributes", self.url)
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
        fs, root = filesystem(self.url)
        with fs.open(join(root, layout.TABLE), "rb") as f:
            return pq.read_table(io.BytesIO(f.read())).to_pandas()

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

    def frame(self, index: int, t: int) -> tuple[np.ndarray, np.ndarray]:
        """One 3D frame: image float32 (Z, H, W) in [-1, 1] and mask uint8 (Z, H, W)."""
        return (self.group["image"][index, t].astype(np.float32), self.group["mask"][index, t])

    def subject(self, index: int) -> Subject:
        """Subject `index` with its padding frames removed."""
        row = self.table.loc[index]
        t = int(row["n_frames"])
        es = row["es_frame"]
        meta = {k: (None if isinstance(v, float) and np.isnan(v) else v) for k, v in row.items()}
        return Subject(
            subject_id=str(row["subject_id"]),
            image=self.group["image"][index, :t].astype(np.float32),
            mask=self.group["mask"][index, :t],
            labeled=self.group["labeled"][index, :t],
            spacing_mm=self.spacing_mm,
            es_frame=None if pd.isna(es) else int(es),
            slice_mask=self.group["slice_mask"][index],
            phase=self.group["phase"][index, :t],
            meta=meta,
        )


def open_store(url: str, require_complete: bool = True) -> Store:
    """Open a store for reading; refuses an incomplete one unless asked not to."""
    return Store(url, require_complete=require_complete)
