"""Create a store, commit subjects one at a time (safe from many processes), finalise it.

Commit protocol: a subject's arrays are written first, then its row record `rows/<index>.json`;
the record is the commit. `finalize` turns the records into `metadata.parquet` and writes
`manifest.json` last, so a crashed writer leaves a store that every reader refuses as incomplete,
and a resumed writer knows exactly which subjects are done.
"""

from __future__ import annotations

import datetime as dt
import hashlib

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import zarr
from zarr.codecs import BloscCodec, Crc32cCodec

from factory import outputs
from factory.errors import StoreError
from factory.presets import Preset
from factory.record import Subject
from factory.store import layout
from factory.store.fs import filesystem, join, read_json, write_json
from factory.version import code_version
from factory.vocabulary import LABEL_MAP

COMPRESSORS = (BloscCodec(cname="zstd", clevel=3), Crc32cCodec())


def utc_now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


class StoreWriter:
    """Writes subjects into a store whose layout is fixed at creation (N subjects, T frames max)."""

    def __init__(self, url: str):
        self.url = str(url)
        self.fs, self.root = filesystem(self.url)
        self.group = zarr.open_group(self.url, mode="r+")
        self.attrs = dict(self.group.attrs)
        self.n_subjects = int(self.group["image"].shape[0])

    @classmethod
    def create(cls, url: str, *, n_subjects: int, preset: Preset, kind: str, max_frames: int | None = None,
               attrs: dict | None = None, overwrite: bool = False) -> StoreWriter:
        """Lay out an empty store; an existing path is refused unless `overwrite` and it holds a store."""
        fs, root = filesystem(str(url))
        outputs.check_output(url, overwrite=overwrite, accept=(outputs.STORE,))
        if fs.exists(root):
            fs.rm(root, recursive=True)
        t = max_frames or preset.max_frames
        z, h, w = preset.geometry.shape
        group_attrs = {
            "schema_version": layout.SCHEMA_VERSION,
            "kind": kind,
            "label_map": LABEL_MAP,
            "spacing_mm": list(preset.geometry.spacing_mm),
            "preset": preset.name,
            "geometry": [z, h, w],
            "max_frames": t,
            "array_layout": "N,T,Z,H,W",
            "frame_storage": layout.SHARD_PER_SUBJECT,
            "provenance": {"created_utc": utc_now(), "code_version": code_version()},
            **(attrs or {}),
        }
        layout.validate(group_attrs, "store-attributes", str(url))
        group = zarr.open_group(str(url), mode="w", zarr_format=3, attributes=group_attrs)
        for name, dtype in layout.FRAME_ARRAYS.items():
            # One shard per subject, one inner chunk per frame: the compressors (zstd, then crc32c) apply to
            # each inner chunk, so a flipped byte fails the checksum of its frame; zarr adds a crc32c to the
            # shard's index (stored at its end).
            group.create_array(name, shape=(n_subjects, t, z, h, w), shards=(1, t, z, h, w),
                               chunks=(1, 1, z, h, w), dtype=dtype, compressors=COMPRESSORS, fill_value=0,
                               dimension_names=("subject", "frame", "z", "y", "x"))
        sizes = {"T": t, "Z": z}
        for name, (dtype, axis) in layout.SUBJECT_ARRAYS.items():
            group.create_array(name, shape=(n_subjects, sizes[axis]), chunks=(1, sizes[axis]), dtype=dtype,
                               compressors=COMPRESSORS, fill_value=0,
                               dimension_names=("subject", "frame" if axis == "T" else "z"))
        fs.makedirs(join(root, layout.ROWS_DIR), exist_ok=True)
        return cls(str(url))

    def committed(self) -> set[int]:
        """Indices of the subjects whose commit record exists."""
        rows = join(self.root, layout.ROWS_DIR)
        if not self.fs.exists(rows):
            return set()
        return {int(p.rsplit("/", 1)[-1].split(".")[0]) for p in self.fs.ls(rows, detail=False)
                if p.endswith(".json")}

    def write_subject(self, index: int, subject: Subject, row: dict) -> None:
        """Write one subject's arrays, then commit its table row."""
        if not 0 <= index < self.n_subjects:
            raise StoreError(f"{self.url}: subject index {index} outside 0..{self.n_subjects - 1}")
        t_max, z, h, w = self.group["image"].shape[1:]
        t = subject.n_frames
        if subject.image.shape[1:] != (z, h, w) or t > t_max:
            raise StoreError(f"{self.url}: subject {subject.subject_id} has shape {subject.image.shape},"
                             f" the store holds at most ({t_max}, {z}, {h}, {w})")
        labeled = np.zeros(t_max, bool)
        labeled[:t] = subject.labeled
        phase = np.zeros(t_max, np.float32)
        phase[:t] = subject.phase
        # Every chunk of a real frame is written, even one equal to the fill value (an unlabeled frame's
        # mask): inside a shard too, so that `factory verify` can tell a deleted frame from a blank one.
        # Padding frames stay unwritten. Each array is written in one call, so a subject's shard is
        # assembled once and stored as one object, by its only writer (zarr first looks for an existing
        # shard to merge into: none for a new subject; a subject rewritten on resume replaces every real
        # frame of its earlier shard, which stores write whole, never half).
        arrays = {name: self.group[name].with_config({"write_empty_chunks": True}) for name in layout.ARRAY_NAMES}
        arrays["image"][index, :t] = np.clip(subject.image, -1.0, 1.0).astype(np.float16)
        arrays["mask"][index, :t] = np.where(subject.labeled[:, None, None, None], subject.mask, 0)  # untrusted dropped
        arrays["labeled"][index] = labeled
        arrays["phase"][index] = phase
        arrays["slice_mask"][index] = subject.slice_mask
        record = {"index": index, "subject_id": subject.subject_id, "n_frames": t,
                  "n_slices": subject.n_slices, "ed_frame": 0, "es_frame": subject.es_frame,
                  "n_labeled_frames": int(np.count_nonzero(subject.labeled)), **row}
        missing = [name for name, spec in layout.table_columns().items() if spec["required"] and name not in record]
        if missing:
            raise StoreError(f"{self.url}: row of subject {subject.subject_id} lacks required columns {missing}")
        write_json(self.fs, join(self.root, layout.row_path(index)), record)

    def finalize(self, extra_attrs: dict | None = None) -> dict:
        """Assemble the table from the commit records and write the manifest (last)."""
        missing = sorted(set(range(self.n_subjects)) - self.committed())
        if missing:
            raise StoreError(f"{self.url}: cannot finalise, {len(missing)} subjects not committed"
                             f" (first: {missing[:5]})")
        if extra_attrs:
            self.group.attrs.update(extra_attrs)
        records = [read_json(self.fs, join(self.root, layout.row_path(i))) for i in range(self.n_subjects)]
        table = to_table(records)
        path = join(self.root, layout.TABLE)
        pq.write_table(table, path, filesystem=self.fs)
        payload = self.fs.cat_file(path)  # the checksum is of the bytes as stored, which readers hash
        manifest = {
            "schema_version": layout.SCHEMA_VERSION,
            "kind": self.attrs["kind"],
            "n_subjects": self.n_subjects,
            "arrays": {name: {"shape": list(a.shape), "dtype": str(a.dtype), "chunks": list(a.chunks),
                              "shards": list(a.shards) if a.shards else None}
                       for name, a in ((n, self.group[n]) for n in layout.ARRAY_NAMES)},
            "table": {"path": layout.TABLE, "rows": table.num_rows,
                      "sha256": hashlib.sha256(payload).hexdigest()},
            "completed_utc": utc_now(),
        }
        layout.validate(manifest, "manifest", self.url)
        write_json(self.fs, join(self.root, layout.MANIFEST), manifest)
        return manifest


def to_table(records: list[dict]) -> pa.Table:
    """Rows (dicts) -> an Arrow table typed by the schema's column definitions, in array order."""
    columns = layout.table_columns()
    frame = pd.DataFrame(records).sort_values("index").drop(columns="index").reset_index(drop=True)
    order = [c for c in columns if c in frame] + sorted(c for c in frame if c not in columns)
    frame = frame[order]
    arrow_types = {"string": pa.string(), "int": pa.int64(), "float": pa.float64()}
    fields = []
    for name in frame.columns:
        spec = columns.get(name)
        if spec is None:
            fields.append(pa.field(name, pa.Table.from_pandas(frame[[name]]).schema.field(name).type))
        else:
            fields.append(pa.field(name, arrow_types[spec["type"]], nullable=spec.get("nullable", False)))
    return pa.Table.from_pandas(frame, schema=pa.schema(fields), preserve_index=False)
