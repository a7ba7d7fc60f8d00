"""Per-subject shards: their index, and reading single frames out of them as fast as out of per-frame chunks.

A frame array's shard (Zarr v3 `sharding_indexed`, as `StoreWriter.create` lays it out) is the
subject's encoded inner chunks, one per frame, followed by its index: per inner chunk in C order, a
little-endian uint64 (offset, length) pair, both 2**64 - 1 for a chunk that is not stored, then the
crc32c of those pairs. `factory verify` reads the index to check that every real frame is stored.

zarr-python 3.1 reads and decodes a shard's index again for every partial read, on a slower code path
than a plain chunk's, which halves the rate of random single-frame reads (~400 against ~800 frames/s
of 12 x 64 x 64 on this 2-core machine). `inner_chunk_view` gives the store reader (`batch.py`, under
every `Store` read) a read-only view of a sharded array as the array of its inner chunks: zarr decodes
each frame on its ordinary chunk path, with the inner codecs (zstd, then the crc32c check), from the
byte range the shard's index gives, and each index is read once per process and kept (16 bytes per
frame). Keeping it is safe because a shard is written once, before its subject's commit record, and
readers read committed subjects only.
"""

from __future__ import annotations

import crc32c
import numpy as np
import zarr
from zarr.abc.store import ByteRequest, RangeByteRequest, Store, SuffixByteRequest
from zarr.core.buffer import Buffer, BufferPrototype, default_buffer_prototype
from zarr.storage import StorePath, WrapperStore

EMPTY = 2**64 - 1  # offset and length of an inner chunk that is not stored


def index_nbytes(n_chunks: int) -> int:
    """Bytes of the index of a shard of `n_chunks` inner chunks: (offset, length) pairs and a crc32c."""
    return 16 * n_chunks + 4


def parse_index(tail: bytes, n_chunks: int) -> np.ndarray:
    """(offset, length) of each inner chunk from a shard's last `index_nbytes(n_chunks)` bytes (C order);
    a ValueError if they fail their crc32c checksum."""
    pairs, checksum = tail[:-4], tail[-4:]
    if len(tail) != index_nbytes(n_chunks) or crc32c.crc32c(pairs) != int.from_bytes(checksum, "little"):
        raise ValueError("shard index fails its crc32c checksum (corrupt or truncated shard)")
    return np.frombuffer(pairs, "<u8").reshape(n_chunks, 2)


def is_frame_shard(metadata: dict) -> bool:
    """Whether array metadata (zarr.json as a dict) is sharded as the writer shards frame arrays: the sharding
    codec alone, its index at the end with a crc32c, chunk keys `c/i/j/...`."""
    codecs = metadata.get("codecs", [])
    if len(codecs) != 1 or codecs[0]["name"] != "sharding_indexed":
        return False
    config = codecs[0]["configuration"]
    return (config["index_location"] == "end"
            and list(config["index_codecs"]) == [{"name": "bytes", "configuration": {"endian": "little"}},
                                                 {"name": "crc32c"}]
            and metadata["chunk_key_encoding"] == {"name": "default", "configuration": {"separator": "/"}})


class InnerChunks(WrapperStore):
    """A read-only store in which each inner chunk of the sharded array at `path` is a chunk of its own.

    `c/i/t/...` (inner-chunk coordinates) is read, whole, as the byte range of inner chunk t of shard
    `c/i/0/...` (zarr asks for no byte range on a chunk path without sharding); every other key is the
    wrapped store's. Shard indexes are kept once read.
    """

    def __init__(self, store: Store, path: str, chunks_per_shard: tuple[int, ...]) -> None:
        super().__init__(store)
        self.path, self.chunks_per_shard = path, chunks_per_shard
        self.n_chunks = int(np.prod(chunks_per_shard))
        self._indexes: dict[str, np.ndarray] = {}

    def _with_store(self, store: Store) -> InnerChunks:
        return type(self)(store, self.path, self.chunks_per_shard)

    async def get(self, key: str, prototype: BufferPrototype,
                  byte_range: ByteRequest | None = None) -> Buffer | None:
        prefix = f"{self.path}/c/"
        if not key.startswith(prefix):
            return await self._store.get(key, prototype, byte_range)
        coords = [int(c) for c in key[len(prefix):].split("/")]
        shard = prefix + "/".join(str(c // n) for c, n in zip(coords, self.chunks_per_shard))
        index = await self._index(shard)
        if index is None:  # no shard: the fill value, as zarr reads it
            return None
        offset, length = index[np.ravel_multi_index([c % n for c, n in zip(coords, self.chunks_per_shard)],
                                                    self.chunks_per_shard)]
        if offset == EMPTY:
            return None
        return await self._store.get(shard, prototype, RangeByteRequest(int(offset), int(offset + length)))

    async def _index(self, shard: str) -> np.ndarray | None:
        """The index of `shard`, read on first use (a shard that does not exist yet is not remembered)."""
        if shard not in self._indexes:
            tail = await self._store.get(shard, default_buffer_prototype(),
                                         SuffixByteRequest(index_nbytes(self.n_chunks)))
            if tail is None:
                return None
            try:
                self._indexes[shard] = parse_index(tail.to_bytes(), self.n_chunks)
            except ValueError as err:
                raise ValueError(f"{shard}: {err}") from None
        return self._indexes[shard]


def inner_chunk_view(array: zarr.AsyncArray) -> zarr.AsyncArray:
    """`array` as the read-only array of its inner chunks when it is a frame shard, else `array` itself."""
    metadata = array.metadata.to_dict()
    if not is_frame_shard(metadata):
        return array
    config = metadata["codecs"][0]["configuration"]
    inner = tuple(config["chunk_shape"])
    shard = tuple(metadata["chunk_grid"]["configuration"]["chunk_shape"])
    view = metadata | {"chunk_grid": {"name": "regular", "configuration": {"chunk_shape": inner}},
                       "codecs": config["codecs"]}
    store = InnerChunks(array.store_path.store, array.store_path.path, tuple(s // c for s, c in zip(shard, inner)))
    return zarr.AsyncArray(view, StorePath(store, array.store_path.path))
