"""cine-factory: synthetic 4D cardiac cine MRI."""

from __future__ import annotations

from typing import Any


def __getattr__(name: str) -> Any:
    """`factory.load_bundle` without importing torch or the models on `import factory`."""
    if name == "load_bundle":
        from factory.bundle import load_bundle

        return load_bundle
    raise AttributeError(f"module 'factory' has no attribute {name!r}")
