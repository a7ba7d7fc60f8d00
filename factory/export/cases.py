"""The subjects of one or more stores as export cases: a file-safe unique name and the real slices."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from factory.errors import InputError
from factory.record import Subject
from factory.store.reader import Store, open_store


@dataclass
class Case:
    """One subject to export, cropped to its real slices (padding slices are not exported)."""

    name: str
    store: Store
    index: int
    subject: Subject
    slices: slice

    @property
    def image(self) -> np.ndarray:
        """float32 (T, Z', H, W) in [-1, 1], real slices only."""
        return self.subject.image[:, self.slices]

    @property
    def mask(self) -> np.ndarray:
        """uint8 (T, Z', H, W), zeros in unlabeled frames."""
        return self.subject.mask[:, self.slices]

    def record(self) -> dict:
        """Provenance of the case for the export's CSV: store, subject index, slice span, table row."""
        labeled = np.flatnonzero(self.subject.labeled)
        return {"case": self.name, "store": self.store.url, "store_kind": self.store.kind, "index": self.index,
                "slice_start": self.slices.start, "slice_stop": self.slices.stop,
                "labeled_frames": " ".join(map(str, labeled)), **self.subject.meta}


def safe_name(subject_id: str) -> str:
    """A subject id usable in file names and nnU-Net case identifiers: letters, digits, '_', '-', '.'."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", subject_id).strip("-.") or "subject"


def real_slices(slice_mask: np.ndarray) -> slice:
    """The span from the first to the last real slice."""
    real = np.flatnonzero(slice_mask)
    return slice(int(real[0]), int(real[-1]) + 1) if len(real) else slice(0, len(slice_mask))


def open_stores(urls: list[str]) -> list[Store]:
    """Open every store to export first, so that a missing, incomplete or altered one fails before any output."""
    stores = [open_store(url) for url in urls]
    for store in stores:
        _ = store.table  # read now: a table whose checksum differs from the manifest is refused here
    return stores


def iter_cases(stores: list[Store]) -> Iterator[Case]:
    """Every subject of the stores, in store order; a repeated case name is an error."""
    seen: dict[str, str] = {}
    for store in stores:
        for index in range(store.n_subjects):
            subject = store.subject(index)
            name = safe_name(subject.subject_id)
            if name in seen:
                raise InputError(f"subject {subject.subject_id!r} of {store.url} has the same export name {name!r}"
                                 f" as a subject of {seen[name]}")
            seen[name] = store.url
            yield Case(name, store, index, subject, real_slices(subject.slice_mask))
