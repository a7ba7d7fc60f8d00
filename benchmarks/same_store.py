"""Whether two stores hold the same subjects, byte for byte: the check that a refactor changed no output.

    python benchmarks/same_store.py A.zarr B.zarr

Prints JSON: per array `identical` or the largest absolute difference, and whether the metadata tables
are equal (store attributes such as creation time and code version are expected to differ).
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from factory.store.layout import ARRAY_NAMES
from factory.store.reader import open_store


def compare(a: str, b: str) -> dict:
    """Array-by-array and table comparison of two complete stores."""
    first, second = open_store(a), open_store(b)
    result = {}
    for name in ARRAY_NAMES:
        x, y = first.group[name][:], second.group[name][:]
        same = x.shape == y.shape and np.array_equal(x, y)
        result[name] = "identical" if same else (
            f"max abs difference {np.abs(x.astype(float) - y.astype(float)).max():g}" if x.shape == y.shape
            else f"shapes {x.shape} vs {y.shape}")
    result["table"] = "identical" if first.table.equals(second.table) else "different"
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("a")
    parser.add_argument("b")
    args = parser.parse_args()
    print(json.dumps(compare(args.a, args.b), indent=1))


if __name__ == "__main__":
    main()
