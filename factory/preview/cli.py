"""`factory preview STORE --out DIR [--subjects K]`: GIFs and montages of K subjects, and report.md."""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from factory.cli_args import positive_int
from factory.errors import StoreError
from factory.export.cases import safe_name
from factory.outputs import replacing
from factory.preview.render import write_cycle_gif, write_montage
from factory.preview.report import write_report
from factory.store.reader import Store, open_store

KIND = "preview"  # the output folder's kind: --overwrite replaces only an earlier preview


def pick_subjects(table: pd.DataFrame, k: int) -> list[int]:
    """K subject indices taking turns over the diagnoses, so every diagnosis is shown when K allows."""
    turn = table.groupby(table["diagnosis"].fillna("unknown")).cumcount()
    order = table.assign(_turn=turn, _diagnosis=table["diagnosis"].fillna("unknown")).sort_values(
        ["_turn", "_diagnosis"], kind="stable")
    return [int(i) for i in order.index[:k]]


def preview(store: Store, out: Path, subjects: int = 6, overwrite: bool = False) -> Path:
    """Write previews of `subjects` subjects under `out/subjects/` and the report; returns report.md.

    The folder is built beside `out` and swapped in when complete; `overwrite` replaces an earlier preview only.
    """
    if store.table.empty:
        raise StoreError(f"{store.url}: no subject committed yet, nothing to preview")
    with replacing(out, KIND, overwrite=overwrite, inputs=[store.url]) as staging:
        folder = staging / "subjects"
        folder.mkdir()
        previews = []
        for index in pick_subjects(store.table, subjects):
            subject = store.subject(index)
            name = safe_name(subject.subject_id)
            gif = write_cycle_gif(subject, folder / f"{name}.gif")
            png = write_montage(subject, folder / f"{name}_montage.png")
            previews.append((subject.subject_id, str(gif.relative_to(staging)), str(png.relative_to(staging))))
        report = write_report(store, staging, previews)
    return Path(out) / report.relative_to(staging)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("store", help="store path or URL (an incomplete store shows its committed subjects)")
    parser.add_argument("--out", required=True, type=Path, help="output folder for GIFs, PNGs and report.md")
    parser.add_argument("--overwrite", action="store_true", help="replace an earlier preview at --out")
    parser.add_argument("--subjects", type=positive_int, default=6, help="number of subjects to preview (default 6)")


def run(args: argparse.Namespace) -> int:
    report = preview(open_store(args.store, require_complete=False), args.out, args.subjects, args.overwrite)
    print(f"preview of {args.store}: {report}")
    return 0
