"""`CineStream`: stores -> a PyTorch IterableDataset of MONAI-style sample dictionaries.

Epoch semantics
---------------
Without mixing weights an epoch is every sample of every store once (a frame-mode sample is one
real frame of one subject; padding frames and, in slice mode, padding slices are never samples).

With mixing weights ``{store: w}`` an epoch is ``epoch_size`` draws (default: the number of
samples of all stores together); store s gets round(w_s / sum(w) * epoch_size) of them (largest
remainder, so they add up exactly). A store draws without replacement from its samples, starting
a fresh permutation whenever its quota outruns them (oversampling a small store) and stopping
early when its quota is smaller (undersampling a big one), so within one epoch every sample of a
store is drawn floor(q/n) or ceil(q/n) times. The draws are interleaved at random (seeded by
``seed`` and the epoch number).

Sharding: the epoch's draw list is identical in every process; the consumer number
``rank * num_workers + worker_id`` takes every ``world_size * num_workers``-th draw, so across all
DataLoader workers of all DDP ranks each draw is yielded exactly once. Shards differ in length by
at most one draw unless ``even_shards`` drops the remainder.

``follow=True`` instead yields the subjects of stores that are still being written, as they are
committed, and ends once every store has its manifest; each committed sample is yielded once per
pass across all consumers (the j-th sample of subject i goes to consumer (i + j) mod n), shuffled
within each poll.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import IterableDataset, get_worker_info

from factory.errors import InputError, StoreError
from factory.store.reader import Store
from factory.store.samples import MODES, SamplePool
from factory.stream import plan

StoreRef = str | Path | Store
Stores = StoreRef | Sequence[StoreRef] | Mapping[StoreRef, float]


def _url(store: StoreRef) -> str:
    return store.url if isinstance(store, Store) else str(store)


def read_samples(pools: list[SamplePool], draws: list[tuple[int, np.ndarray]]) -> list[dict]:
    """The samples of (pool, key) draws in their order, with their `store`; one batched read per pool."""
    samples = {}
    for s in {s for s, _ in draws}:
        positions = [n for n, (pool, _) in enumerate(draws) if pool == s]
        keys = np.stack([draws[n][1] for n in positions])
        samples |= {n: {**sample, "store": s} for n, sample in zip(positions, pools[s].read(keys))}
    return [samples[n] for n in range(len(draws))]


def _to_tensors(sample: dict) -> dict:
    """numpy arrays -> torch tensors (image float32, label uint8, per-frame vectors as they are)."""
    return {k: torch.from_numpy(np.ascontiguousarray(v)) if isinstance(v, np.ndarray) else v
            for k, v in sample.items()}


class CineStream(IterableDataset):
    """Samples of one or more stores (a path, a list, or a dict path -> mixing weight).

    Each sample is a dict: ``image`` float32 tensor with a channel axis ((1, T, Z, H, W) in
    ``sequence`` mode, (1, Z, H, W) in ``frame`` mode, (1, H, W) in ``slice`` mode) in [-1, 1],
    ``label`` uint8 of the same shape (zeros where a frame is unlabeled), ``labeled`` and ``phase``
    of the frame (vectors in sequence mode), ``subject_id``, ``store`` (position in ``stores``),
    ``index`` (subject index in its store), ``frame`` / ``slice`` where the mode splits them,
    ``diagnosis``, ``vendor`` and the clinical values ``edv_ml``, ``esv_ml``, ``ef_pct``,
    ``myo_mass_g`` (NaN when unknown). ``transform`` (e.g. a MONAI dict transform) is applied to
    each sample; a MONAI random transform is seeded from (seed, epoch, consumer), so augmentation is
    reproducible and differs between workers. Call ``set_epoch(e)`` before each epoch (it reaches
    DataLoader workers that are started per epoch, i.e. not with ``persistent_workers=True``).
    ``read_ahead`` samples are fetched together (concurrent chunk reads). Every metadata key becomes
    one more small tensor per batch that DataLoader workers hand to the main process; where speed
    matters more than metadata, drop keys in ``transform`` (e.g. MONAI ``SelectItemsd``). See the
    module docstring for epoch, mixing and sharding semantics.
    """

    def __init__(self, stores: Stores, mode: str = "frame", *, labeled_only: bool = False, shuffle: bool = True,
                 seed: int = 0, follow: bool = False, transform: Callable[[dict], dict] | None = None,
                 epoch_size: int | None = None, rank: int | None = None, world_size: int | None = None,
                 even_shards: bool = False, read_ahead: int = 8, poll_interval_s: float = 1.0,
                 follow_timeout_s: float | None = None):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if isinstance(stores, Mapping):
            urls, self.weights = [_url(s) for s in stores], [float(w) for w in stores.values()]
        else:
            refs = [stores] if isinstance(stores, (str, Path, Store)) else list(stores)
            urls, self.weights = [_url(s) for s in refs], None
        if not urls:
            raise InputError("CineStream needs at least one store")
        if epoch_size is not None and self.weights is None:
            raise ValueError("epoch_size applies to mixing weights (pass stores as a dict store -> weight)")
        if follow and self.weights is not None:
            raise ValueError("mixing weights need every store's full sample list; follow=True yields each "
                             "committed sample once instead (pass a list of stores)")
        if (rank is None) != (world_size is None) or (rank is not None and not 0 <= rank < world_size):
            raise ValueError(f"rank and world_size go together with 0 <= rank < world_size, got {rank}, {world_size}")
        self.mode, self.shuffle, self.seed, self.follow = mode, shuffle, seed, follow
        self.transform, self.epoch_size, self.even_shards = transform, epoch_size, even_shards
        self.rank, self.world_size, self.read_ahead = rank, world_size, max(1, int(read_ahead))
        self.poll_interval_s, self.follow_timeout_s = poll_interval_s, follow_timeout_s
        self.epoch = 0
        self.sources = [SamplePool(url, mode, labeled_only, follow) for url in urls]
        geometries = {tuple(s.geometry) for s in self.sources}
        if len(geometries) > 1:
            raise InputError(f"stores have different frame geometries {sorted(geometries)}: "
                             + ", ".join(f"{s.url} {s.geometry}" for s in self.sources))
        self.counts = plan.quotas([len(s.keys) for s in self.sources], self.weights, epoch_size)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose shuffle order (and mixing draws) the next iteration yields."""
        self.epoch = int(epoch)

    @property
    def samples_per_epoch(self) -> int:
        """Draws in one epoch across all consumers (not known in advance when following)."""
        if self.follow:
            raise ValueError("the size of a followed store's epoch is known only when it is complete")
        return sum(self.counts)

    def consumer(self) -> tuple[int, int]:
        """(this consumer's number, number of consumers) over DDP ranks x DataLoader workers."""
        if self.rank is not None:
            rank, world = self.rank, self.world_size
        elif dist.is_available() and dist.is_initialized():
            rank, world = dist.get_rank(), dist.get_world_size()
        else:
            rank, world = 0, 1
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        return rank * workers + worker, world * workers

    def __iter__(self) -> Iterator[dict]:
        shard_id, n_shards = self.consumer()
        if hasattr(self.transform, "set_random_state"):  # MONAI: distinct, reproducible augmentation per consumer
            self.transform.set_random_state(seed=int(np.random.SeedSequence([self.seed, self.epoch, shard_id])
                                                     .generate_state(1)[0]))
        blocks = self._follow(shard_id, n_shards) if self.follow else self._draws(shard_id, n_shards)
        for block in blocks:
            for sample in read_samples(self.sources, block):
                sample = _to_tensors(sample)
                yield self.transform(sample) if self.transform is not None else sample

    def _blocks(self, s: int, keys: np.ndarray) -> Iterator[list[tuple[int, np.ndarray]]]:
        """Draws of store `s` in blocks of `read_ahead` (read together)."""
        for start in range(0, len(keys), self.read_ahead):
            yield [(s, key) for key in keys[start:start + self.read_ahead]]

    def _draws(self, shard_id: int, n_shards: int) -> Iterator[list[tuple[int, np.ndarray]]]:
        order = plan.epoch_order([len(s.keys) for s in self.sources], self.counts, self.shuffle, self.seed,
                                 self.epoch)
        mine = plan.shard(order, shard_id, n_shards, self.even_shards)
        for start in range(0, len(mine), self.read_ahead):
            yield [(int(s), self.sources[s].keys[p]) for s, p in mine[start:start + self.read_ahead]]

    def _follow(self, shard_id: int, n_shards: int) -> Iterator[list[tuple[int, np.ndarray]]]:
        rng = np.random.default_rng([self.seed, self.epoch, shard_id]) if self.shuffle else None
        pending = set(range(len(self.sources)))
        last_news = time.monotonic()
        for s, source in enumerate(self.sources):  # subjects this process already knows (a later pass)
            yield from self._blocks(s, self._mine(source.keys, shard_id, n_shards, rng))
        while pending:
            news = False
            for s in sorted(pending):
                keys, complete = self.sources[s].poll()
                news |= len(keys) > 0
                yield from self._blocks(s, self._mine(keys, shard_id, n_shards, rng))
                if complete:
                    pending.discard(s)
            if news:
                last_news = time.monotonic()
            elif pending:
                if self.follow_timeout_s is not None and time.monotonic() - last_news > self.follow_timeout_s:
                    raise StoreError(", ".join(self.sources[s].url for s in sorted(pending))
                                     + f": no subject committed for {self.follow_timeout_s} s and no manifest")
                time.sleep(self.poll_interval_s)

    @staticmethod
    def _mine(keys: np.ndarray, shard_id: int, n_shards: int, rng: np.random.Generator | None) -> np.ndarray:
        mine = plan.follow_shard(keys, shard_id, n_shards)
        return mine[rng.permutation(len(mine))] if rng is not None else mine
