"""Export output folders: refuse to clobber, build in a temporary sibling, move into place at the end."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from factory.errors import StoreError


def check_free(target: Path, overwrite: bool) -> None:
    """Refuse an existing non-empty `target` (a file, or a folder with entries) unless `overwrite`."""
    if target.exists() and not overwrite and (not target.is_dir() or any(target.iterdir())):
        raise StoreError(f"{target}: output path already exists and is not empty (use --overwrite to replace it)")


@contextmanager
def staged_dir(target: Path | str, overwrite: bool = False) -> Iterator[Path]:
    """Yield an empty temporary folder beside `target` that replaces `target` when the block succeeds.

    A failed or interrupted export leaves `target` as it was and removes the temporary folder, so a
    reader never sees a half-written export under the final name.
    """
    target = Path(target)
    check_free(target, overwrite)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent))
    try:
        yield staging
        check_free(target, overwrite)
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()
        staging.rename(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
