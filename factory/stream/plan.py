"""Which samples a stream yields, in which order, and which consumer yields each one.

Pure numpy, no I/O: the draws are positions in each store's pool of sample keys
(`factory.store.samples`).
"""

from __future__ import annotations

import numpy as np


def quotas(pool_sizes: list[int], weights: list[float] | None, epoch_size: int | None) -> list[int]:
    """Samples each store contributes to one epoch.

    Without weights every store contributes its whole pool. With weights an epoch has `epoch_size`
    samples (default: all pools together) split in proportion to the weights, rounded by largest
    remainder so that the quotas add up to exactly `epoch_size`.
    """
    if weights is None:
        return list(pool_sizes)
    total = sum(pool_sizes) if epoch_size is None else int(epoch_size)
    w = np.asarray(weights, dtype=np.float64)
    if (w < 0).any() or w.sum() <= 0:
        raise ValueError(f"mixing weights must be non-negative and not all zero, got {list(weights)}")
    exact = total * w / w.sum()
    counts = np.floor(exact).astype(int)
    counts[np.argsort(counts - exact, kind="stable")[: total - counts.sum()]] += 1
    for size, count in zip(pool_sizes, counts):
        if count and not size:
            raise ValueError("a store with a positive mixing weight has no samples to yield")
    return counts.tolist()


def draw(pool_size: int, count: int, rng: np.random.Generator | None) -> np.ndarray:
    """`count` positions in a pool: whole passes over it, then part of one (fresh permutations if `rng`).

    So every pool item is drawn floor(count / size) or ceil(count / size) times.
    """
    passes = -(-count // pool_size) if pool_size else 0
    if rng is None:
        return np.arange(passes * pool_size)[:count] % max(pool_size, 1)
    return np.concatenate([rng.permutation(pool_size) for _ in range(passes)] or [np.empty(0, int)])[:count]


def epoch_order(pool_sizes: list[int], counts: list[int], shuffle: bool, seed: int, epoch: int) -> np.ndarray:
    """The epoch's draws as (store, position in that store's pool) rows, interleaved when shuffling."""
    rng = np.random.default_rng([seed, epoch]) if shuffle else None
    parts = [np.stack([np.full(count, s), draw(size, count, rng)], axis=1)
             for s, (size, count) in enumerate(zip(pool_sizes, counts))]
    order = np.concatenate(parts) if parts else np.empty((0, 2), int)
    return order[rng.permutation(len(order))] if rng is not None else order


def shard(order: np.ndarray, shard_id: int, n_shards: int, even: bool = False) -> np.ndarray:
    """Every n-th draw from `shard_id` on: shards are disjoint and together cover the epoch.

    `even` drops the last len % n_shards draws so that all shards have the same length (DDP ranks
    must run the same number of steps).
    """
    if even:
        order = order[: len(order) - len(order) % n_shards]
    return order[shard_id::n_shards]


def follow_shard(keys: np.ndarray, shard_id: int, n_shards: int) -> np.ndarray:
    """Keys of newly committed subjects that belong to `shard_id`, decided by the key alone.

    The j-th sample of subject i goes to shard (i + j) % n_shards, so consumers that discover
    subjects at different times still split them without overlap or gaps.
    """
    subjects = keys[:, 0]
    position = np.arange(len(keys))
    first = np.r_[True, subjects[1:] != subjects[:-1]]  # each subject's keys are contiguous
    within = position - np.maximum.accumulate(np.where(first, position, 0))
    return keys[(subjects + within) % n_shards == shard_id]
