"""Local paths and fsspec URLs (s3://, memory://) behind one small interface."""

from __future__ import annotations

import json
import math

import fsspec
import numpy as np


def filesystem(url: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """The fsspec filesystem serving `url` and the path within it."""
    return fsspec.core.url_to_fs(str(url))


def join(root: str, *parts: str) -> str:
    return "/".join([root.rstrip("/"), *parts])


def json_safe(value):
    """`value` as plain JSON: numpy scalars and arrays, tuples and keys made native, non-finite floats as None.

    Every JSON this project writes (store metadata, reports) goes through it, so NaN is always null."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, np.ndarray):
        return json_safe(value.tolist())
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_json(fs: fsspec.AbstractFileSystem, path: str, document: dict) -> None:
    """Write JSON so that a reader never sees a partial file: a temporary name, then a move."""
    tmp = f"{path}.tmp"
    with fs.open(tmp, "w") as f:
        json.dump(json_safe(document), f, indent=1, sort_keys=True)
    fs.mv(tmp, path)


def read_json(fs: fsspec.AbstractFileSystem, path: str) -> dict:
    with fs.open(path, "r") as f:
        return json.load(f)
