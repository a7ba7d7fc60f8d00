"""Names, codecs and versioned schemas of a store: the contract every writer and reader shares.

A store is a Zarr v3 group with arrays `image` (N, T, Z, H, W) float16 in [-1, 1], `mask` (same,
uint8), `labeled` (N, T) bool, `phase` (N, T) float32 and `slice_mask` (N, Z) bool; a
`metadata.parquet` table with one row per subject in array order; per-subject commit records under
`rows/` while it is being written; and `manifest.json`, written last. Definitions: `schemas/`.

How the frame arrays are stored is the store attribute `frame_storage`: `SHARD_PER_SUBJECT` now,
`CHUNK_PER_FRAME` in older stores. Zarr reads either from each array's own metadata, so every reader
reads both; only `factory verify`, which looks at the stored objects themselves, tells them apart.
"""

from __future__ import annotations

import functools
import json
from importlib import resources

import jsonschema

from factory.errors import StoreError

SCHEMA_VERSION = "1"
TABLE = "metadata.parquet"
MANIFEST = "manifest.json"
ROWS_DIR = "rows"
# `factory/schemas` is a symlink to the repository's top-level `schemas/`: one copy, shipped in the wheel.
SCHEMA_DIR = resources.files("factory") / "schemas"

# Frame storage written now: each frame array is one Zarr v3 shard per subject, shape (1, T, Z, H, W), whose
# inner chunks are single frames, so a reader still fetches one 3D frame (a ranged read, located by the
# shard's index), concurrent writers of different subjects never share an object, and a subject is 6
# objects in all (2 shards, 3 per-subject chunks, its commit record).
SHARD_PER_SUBJECT = "shard-per-subject"
# Stores written before 2026-12-02, which have no `frame_storage` attribute: one object per frame.
CHUNK_PER_FRAME = "chunk-per-frame"

# name -> (dtype, per-subject shape symbolically).
FRAME_ARRAYS = {"image": "float16", "mask": "uint8"}
SUBJECT_ARRAYS = {"labeled": ("bool", "T"), "phase": ("float32", "T"), "slice_mask": ("bool", "Z")}
ARRAY_NAMES = (*FRAME_ARRAYS, *SUBJECT_ARRAYS)


@functools.cache
def load_schema(name: str) -> dict:
    """Load `schemas/<name>.v<SCHEMA_VERSION>.json`, a resource of the installed package."""
    path = SCHEMA_DIR / f"{name}.v{SCHEMA_VERSION}.json"
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise StoreError(f"schema {name} v{SCHEMA_VERSION} is missing from the installed package ({path}): "
                         "reinstall cine-factory from a complete checkout or wheel") from None


def validate(document: dict, schema_name: str, where: str) -> None:
    """Validate a JSON document against a schema; the error names the store and the failing field."""
    try:
        jsonschema.validate(document, load_schema(schema_name))
    except jsonschema.ValidationError as err:
        field = "/".join(str(p) for p in err.absolute_path) or "<root>"
        raise StoreError(f"{where}: {schema_name} field {field!r}: {err.message}") from None


def frame_storage(attrs: dict) -> str:
    """How the store with root attributes `attrs` keeps its frame arrays (stores without the attribute are older)."""
    return attrs.get("frame_storage", CHUNK_PER_FRAME)


def table_columns() -> dict[str, dict]:
    """Column definitions of metadata.parquet (name -> type, required, nullable)."""
    return load_schema("metadata-table")["columns"]


def row_path(index: int) -> str:
    """Relative path of the commit record of subject `index`."""
    return f"{ROWS_DIR}/{index:08d}.json"
