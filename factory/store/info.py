"""`factory info STORE`: what a store holds, at a glance."""

from __future__ import annotations

import argparse

from factory.store import layout
from factory.store.reader import open_store


def summary(url: str) -> str:
    """A short multi-line description: layout (frame storage included), counts per diagnosis and vendor, clinical means."""
    store = open_store(url, require_complete=False)
    table = store.table
    z, h, w = store.attrs["geometry"]
    lines = [
        f"store      {url} ({'complete' if store.complete else 'INCOMPLETE: no manifest'})",
        f"kind       {store.kind}, preset {store.attrs['preset']}, schema v{store.attrs['schema_version']},"
        f" frames stored {layout.frame_storage(store.attrs)}",
        f"geometry   {z} x {h} x {w} (Z x H x W) at {store.spacing_mm} mm, up to {store.attrs['max_frames']} frames",
        f"subjects   {len(table)} of {store.n_subjects} committed",
    ]
    if len(table):
        lines.append(f"frames     {int(table['n_frames'].sum())} ({int(table['n_labeled_frames'].sum())} labeled)")
        for column in ("diagnosis", "vendor", "source"):
            counts = table[column].fillna("unknown").value_counts().sort_index()
            lines.append(f"{column:<10} " + ", ".join(f"{k} {v}" for k, v in counts.items()))
        clinical = table[["edv_ml", "esv_ml", "ef_pct", "myo_mass_g"]].astype(float).mean()
        lines.append("mean       " + ", ".join(f"{k} {v:.1f}" for k, v in clinical.items() if v == v))
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("store", help="store path or URL")


def run(args: argparse.Namespace) -> int:
    print(summary(args.store))
    return 0
