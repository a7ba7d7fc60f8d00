"""The hand-off of generated subjects into a store through Ray Data: one row per subject in native columns
(arrays, numbers, strings), and a Datasink that commits each row's subject into an existing store.

A batch holds the store index, the subject id, the arrays of `ARRAY_COLUMNS` (the image already in the
store's dtype), the ES frame, and every metadata-table column of the subject as a column of its own;
`subject_columns` builds it where subjects are made, `column_subjects` turns it back into what
`StoreWriter.write_subject` takes, with nothing recomputed.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import ray.data
from ray.data.block import BlockAccessor

from factory.errors import StoreError
from factory.record import Subject
from factory.store.layout import FRAME_ARRAYS
from factory.store.writer import StoreWriter

ARRAY_COLUMNS = ("image", "mask", "labeled", "phase", "slice_mask")
RESERVED = ("index", "subject_id", "es_frame", *ARRAY_COLUMNS)  # columns that are not metadata-table columns


def _objects(values: list) -> np.ndarray:
    """A 1-D object array of `values` (arrays of different shapes stay one cell each, never stacked)."""
    column = np.empty(len(values), dtype=object)
    for k, value in enumerate(values):
        column[k] = value
    return column


def subject_columns(indices: list[int], subjects: list[Subject], rows: list[dict]) -> dict[str, np.ndarray]:
    """A Ray Data batch of subjects: store index, id, arrays, ES frame and every key of their table rows."""
    keys = list(dict.fromkeys(k for row in rows for k in row))
    clash = sorted(set(keys) & set(RESERVED))
    if clash:
        raise StoreError(f"metadata columns {clash} would overwrite the subject's own columns")
    image_dtype = FRAME_ARRAYS["image"]
    return {
        "index": np.array(indices, dtype=np.int64),
        "subject_id": np.array([s.subject_id for s in subjects], dtype=object),
        "es_frame": np.array([s.es_frame for s in subjects], dtype=np.int64),
        "image": _objects([s.image.astype(image_dtype) for s in subjects]),
        **{name: _objects([getattr(s, name) for s in subjects]) for name in ARRAY_COLUMNS[1:]},
        **{k: np.array([row.get(k) for row in rows]) for k in keys},
    }


def column_subjects(block, spacing_mm: tuple[float, float, float]) -> Iterator[tuple[int, Subject, dict]]:
    """The (store index, subject, table row) of every row of a Ray Data block of `subject_columns` batches; the
    row holds plain Python values (None where a value is missing), as the JSON commit record needs."""
    accessor = BlockAccessor.for_block(block)
    columns = accessor.to_numpy(["index", "subject_id", "es_frame", *ARRAY_COLUMNS])
    table = accessor.to_arrow()
    rows = table.select([k for k in table.column_names if k not in RESERVED]).to_pylist()
    for k, row in enumerate(rows):
        image, mask, labeled, phase, slice_mask = (np.asarray(columns[name][k]) for name in ARRAY_COLUMNS)
        subject = Subject(str(columns["subject_id"][k]), image, mask, labeled, spacing_mm, int(columns["es_frame"][k]),
                          slice_mask=slice_mask, phase=phase)
        yield int(columns["index"][k]), subject, row


class ZarrDatasink(ray.data.Datasink):
    """Commits generated subjects into an existing store; each subject is written by one task only."""

    def __init__(self, url: str):
        self.url = url

    @property
    def supports_distributed_writes(self) -> bool:
        return True

    def write(self, blocks, ctx) -> int:
        """Write every subject of `blocks` (batches of `subject_columns`); returns how many."""
        writer = StoreWriter(self.url)
        spacing = tuple(writer.attrs["spacing_mm"])
        written = 0
        for block in blocks:
            for index, subject, row in column_subjects(block, spacing):
                writer.write_subject(index, subject, row)
                written += 1
        return written
