"""Many zarr reads in one round trip: the batched read path under `Store.read_frames` and the latent sampler.

Every (array, selection) read of a batch is fetched and decoded concurrently by zarr's public
asynchronous API, on fsspec's IO loop with array handles of its own (an object-store filesystem is
bound to the event loop that opened it, and zarr's own loop has no public entry point). Handles are
opened per process, so a reader survives pickling into Ray workers and forked DataLoader workers.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Sequence

import fsspec.asyn
import numpy as np
import zarr
import zarr.api.asynchronous

Read = tuple[str, tuple]  # (array path in the group, basic selection such as (subject, slice(0, T)))


class BatchReader:
    """Reads of the arrays of one zarr group, many at a time."""

    def __init__(self, url: str) -> None:
        self.url = str(url)
        self._arrays: dict[str, zarr.AsyncArray] = {}
        self._pid: int | None = None

    def __getstate__(self) -> dict:
        return {"url": self.url, "_arrays": {}, "_pid": None}

    def read(self, reads: Sequence[Read]) -> list[np.ndarray | Exception]:
        """The array of every read, in order; a read that fails (decode, checksum) is its exception, not raised."""
        if self._pid != os.getpid():  # the parent's handles belong to its event loops
            self._arrays, self._pid = {}, os.getpid()
        return fsspec.asyn.sync(fsspec.asyn.get_loop(), self._fetch, list(reads))

    def read_all(self, reads: Sequence[Read]) -> list[np.ndarray]:
        """As `read`, raising the first failure (for stores whose errors need no naming, such as the latent store)."""
        parts = self.read(reads)
        for part in parts:
            if isinstance(part, Exception):
                raise part
        return parts

    async def _fetch(self, reads: list[Read]) -> list[np.ndarray | Exception]:
        for name in {name for name, _ in reads} - set(self._arrays):
            self._arrays[name] = await zarr.api.asynchronous.open_array(store=self.url, path=name, mode="r")
        return await asyncio.gather(*(self._arrays[name].getitem(where) for name, where in reads),
                                    return_exceptions=True)
