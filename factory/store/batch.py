"""Many zarr reads in one round trip: the read path under every `Store` read and the latent sampler.

Every (array, selection) read of a batch is fetched and decoded concurrently by zarr's public
asynchronous API, on fsspec's IO loop with array handles of its own (an object-store filesystem is
bound to the event loop that opened it, and zarr's own loop has no public entry point). Handles are
opened per process, so a reader survives pickling into Ray workers and forked DataLoader workers.
A frame array of per-subject shards is read through `shards.inner_chunk_view` (a frame as fast as
from a store of per-frame chunks).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Sequence

import fsspec.asyn
import numpy as np
import zarr
import zarr.api.asynchronous

from factory.store.shards import inner_chunk_view

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
            array = await zarr.api.asynchronous.open_array(store=self.url, path=name, mode="r")
            self._arrays[name] = inner_chunk_view(array)  # a frame shard's frames as chunks: see shards.py
        return await asyncio.gather(*(self._arrays[name].getitem(where) for name, where in reads),
                                    return_exceptions=True)
