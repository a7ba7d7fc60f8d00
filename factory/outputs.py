"""Output paths: never clobber what cine-factory did not write, never write onto an input, replace atomically.

Every command that writes a folder (a store, an export, a bundle, a report) goes through this module:
`check_output` refuses an output that is, contains or lies inside one of the command's inputs, sits
under a file, or already holds something that `--overwrite` may not replace (only outputs this project
wrote and recognises: a store, a bundle, or a folder carrying the `MARKER` file of its kind). Folders
are built beside the target (`staging_path`) and swapped in at the end (`swap`), so a failed command
leaves the old output as it was and a reader never sees a half-written one under the final name.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import fsspec

from factory.errors import StoreError
from factory.version import code_version

MARKER = ".cine-factory.json"  # names the kind of an output folder that is neither a store nor a bundle
STORE, BUNDLE = "store", "bundle"


def _fs(url: str) -> tuple[fsspec.AbstractFileSystem, str]:
    return fsspec.core.url_to_fs(str(url))


def is_local(url: str | Path) -> bool:
    return "://" not in str(url) or str(url).startswith("file://")


def _local(url: str | Path) -> Path:
    return Path(os.path.realpath(str(url).removeprefix("file://")))


def _read_json(fs: fsspec.AbstractFileSystem, path: str) -> dict | None:
    try:
        with fs.open(path, "r") as f:
            document = json.load(f)
    except (OSError, ValueError):
        return None
    return document if isinstance(document, dict) else None


def recognise(url: str | Path) -> str | None:
    """What cine-factory output lives at `url`: "store", "bundle", a marker's kind, or None (anything else)."""
    fs, root = _fs(str(url))
    if not fs.isdir(root):
        return None
    attributes = (_read_json(fs, f"{root}/zarr.json") or {}).get("attributes") or {}
    if "schema_version" in attributes and "kind" in attributes:
        return STORE
    if "format_version" in (_read_json(fs, f"{root}/bundle.json") or {}):
        return BUNDLE
    return (_read_json(fs, f"{root}/{MARKER}") or {}).get("kind")


def _relation(out: str, other: str) -> str | None:
    """How output `out` relates to input `other`: "is", "lies inside", "contains", or None (disjoint)."""
    if is_local(out) != is_local(other):
        return None
    a, b = ((str(_local(out)), str(_local(other))) if is_local(out)
            else (str(out).rstrip("/"), str(other).rstrip("/")))
    if a == b:
        return "is"
    if a.startswith(b.rstrip("/") + "/"):
        return "lies inside"
    if b.startswith(a.rstrip("/") + "/"):
        return "contains"
    return None


def check_output(url: str | Path, *, overwrite: bool, accept: Iterable[str], inputs: Iterable[str | Path] = (),
                 is_file: bool = False, hint: str = "use --overwrite to replace it") -> None:
    """Refuse `url` as an output unless it is free, or `overwrite` is set and it holds an output of a kind in `accept`.

    Also refuses an output that is, contains or lies inside one of `inputs`, and one whose parent
    path runs through an existing file. `is_file`: the output is a single file, not a folder.
    `hint`: what the message for a used path tells the user to do.
    """
    url, accept = str(url), tuple(accept)
    for source in inputs:
        relation = _relation(url, str(source))
        if relation:
            raise StoreError(f"{url}: output path {relation} the input {source}; choose another output path")
    fs, root = _fs(url)
    if is_local(url):
        for parent in _local(url).parents:
            if parent.exists() and not parent.is_dir():
                raise StoreError(f"{url}: cannot write there, {parent} is a file")
    if not fs.exists(root):
        return
    if is_file:
        if fs.isdir(root):
            raise StoreError(f"{url}: is a folder; give a file name for the output")
        if not overwrite:
            raise StoreError(f"{url}: file already exists ({hint})")
        return
    if not fs.isdir(root):
        raise StoreError(f"{url}: output path exists and is a file, not a folder")
    if not fs.ls(root, detail=False):
        return
    if not overwrite:
        raise StoreError(f"{url}: output path already exists and is not empty ({hint})")
    found = recognise(url)
    if found not in accept:
        what = f"a {found}" if found else "files cine-factory did not write"
        raise StoreError(f"{url}: --overwrite only replaces an earlier {' or '.join(accept) or 'output'} written by"
                         f" cine-factory, and this path holds {what}; remove it yourself or choose another output path")


def hidden_sibling(url: str | Path, suffix: str) -> str:
    """`data/out` -> `data/.out.<suffix>`: a fixed hidden path beside an output, where a job keeps its unfinished work."""
    url = str(url).rstrip("/")
    parent, _, name = url.rpartition("/")
    return f"{parent}/.{name}.{suffix}" if parent else f".{name}.{suffix}"


def staging_path(url: str | Path) -> str:
    """The sibling a replacement of `url` is built in (fixed, so an interrupted job can find and resume it)."""
    return hidden_sibling(url, "partial")


def remove(url: str | Path) -> None:
    """Delete a folder this module staged (or a stale one) if it exists."""
    fs, root = _fs(str(url))
    if fs.exists(root):
        fs.rm(root, recursive=True)


def swap(staging: str | Path, target: str | Path) -> None:
    """Move a finished `staging` folder to `target`, replacing what is there.

    Local paths: the old target is renamed aside first and deleted after the new one is in place, so
    `target` is the old or the new complete output except between two renames, where a crash leaves the
    old one complete as `.<name>.old-<id>` beside it. Object stores have no rename: there the old output
    is deleted, then the new one copied over.
    """
    staging, target = str(staging), str(target)
    if is_local(target):
        old = _local(target)
        trash = old.with_name(f".{old.name}.old-{uuid.uuid4().hex[:8]}")
        if old.exists():
            os.rename(old, trash)
        os.rename(_local(staging), old)
        shutil.rmtree(trash, ignore_errors=True)
        return
    fs, root = _fs(target)
    if fs.exists(root):
        fs.rm(root, recursive=True)
    fs.mv(_fs(staging)[1], root, recursive=True)


def write_marker(folder: str | Path, kind: str) -> None:
    """Mark `folder` as a cine-factory output of `kind`, so a later `--overwrite` may replace it."""
    fs, root = _fs(str(folder))
    with fs.open(f"{root}/{MARKER}", "w") as f:
        json.dump({"kind": kind, "created_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                   "code_version": code_version()}, f)


@contextmanager
def replacing(url: str | Path, kind: str, *, overwrite: bool, inputs: Iterable[str | Path] = (),
              mark: bool = True) -> Iterator[Path]:
    """Yield an empty local staging folder that replaces the output folder `url` when the block succeeds.

    `kind` is what the folder holds (marked with `MARKER` unless `mark` is False: stores and bundles
    identify themselves); `--overwrite` may only replace an earlier output of the same kind.
    """
    inputs = tuple(inputs)
    check_output(url, overwrite=overwrite, accept=(kind,), inputs=inputs)
    staging = Path(staging_path(_local(url)))
    remove(staging)  # left by an interrupted earlier run
    staging.mkdir(parents=True)
    try:
        yield staging
        if mark:
            write_marker(staging, kind)
        check_output(url, overwrite=overwrite, accept=(kind,), inputs=inputs)  # nothing appeared meanwhile
        swap(staging, url)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
