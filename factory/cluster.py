"""Joining Ray: every job and library entry point connects the same way."""

from __future__ import annotations

import os

import ray


def connect() -> None:
    """Join the cluster of `ray job submit` (RAY_ADDRESS), or start a private local Ray instance.

    Never `ray.init()` without an address: it would attach to whatever cluster this machine ran last,
    which may be stale or another user's."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if not ray.is_initialized():
        ray.init(address=os.environ.get("RAY_ADDRESS") or "local")
