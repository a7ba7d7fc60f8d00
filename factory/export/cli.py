"""`factory export STORE [STORE ...] --format nifti|nnunet --out DIR`: stores -> NIfTI or an nnU-Net dataset."""

from __future__ import annotations

import argparse
import time

from factory.export.nifti import export_nifti
from factory.export.nnunet import export_nnunet


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("stores", nargs="+", metavar="STORE",
                        help="complete store path(s) or URL(s); several are merged")
    parser.add_argument("--format", required=True, choices=("nifti", "nnunet"),
                        help="nifti: a 4D image + label per subject and metadata.csv; "
                             "nnunet: an nnU-Net v2 raw dataset, one case per labeled frame")
    parser.add_argument("--out", required=True,
                        help="output folder (nnunet: the nnUNet_raw folder to add the dataset to)")
    parser.add_argument("--dataset-id", type=int, default=501, help="nnU-Net dataset id (nnunet only)")
    parser.add_argument("--dataset-name", default="CineFactory", help="nnU-Net dataset name (nnunet only)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing non-empty output folder")


def run(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    if args.format == "nifti":
        folder = export_nifti(args.stores, args.out, overwrite=args.overwrite)
    else:
        folder = export_nnunet(args.stores, args.out, args.dataset_id, args.dataset_name, overwrite=args.overwrite)
    print(f"exported {', '.join(args.stores)} as {args.format} to {folder} in {time.perf_counter() - start:.1f} s")
    return 0
