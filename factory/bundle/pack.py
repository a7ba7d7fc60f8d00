"""`factory pack BUNDLE --out DIR`: a shippable copy of a trained bundle.

Training leaves fp32 weights plus a `training/` folder (checkpoints, latent store, logs) in the
bundle. The shipped demo bundle keeps only bundle.json and the weights, stored in fp16 to halve
their size (models are built in fp32 and upcast on load, so generation is unchanged up to fp16
rounding of the weights). Checksums in bundle.json are recomputed for the new files, and a local
training-store path is reduced to the store's name (a shipped file names no directory of the build machine).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from factory.bundle.io import BUNDLE_FILE, read_config, sha256_file, write_json_atomic
from factory.outputs import BUNDLE, replacing


def pack_bundle(src: Path | str, out: Path | str, dtype: torch.dtype = torch.float16, overwrite: bool = False) -> dict:
    """Write bundle.json and every stage's weights (floating tensors cast to `dtype`) into `out`."""
    src, out = Path(src), Path(out)
    config = read_config(src)
    with replacing(out, BUNDLE, overwrite=overwrite, inputs=[src], mark=False) as staging:
        stages = {}
        for stage, entry in config["stages"].items():
            tensors = load_file(str(src / entry["file"]))
            packed = {k: v.to(dtype) if v.is_floating_point() else v for k, v in tensors.items()}
            save_file(packed, str(staging / entry["file"]), metadata={"stage": stage, "preset": config["preset"],
                                                                      "dtype": str(dtype).removeprefix("torch.")})
            stages[stage] = entry | {"sha256": sha256_file(staging / entry["file"])}
        training = dict(config.get("training_data") or {})
        if "://" not in str(training.get("store", "://")):  # a local path: keep the store's name, not this machine's
            training["store"] = Path(training["store"]).name
        write_json_atomic(staging / BUNDLE_FILE, config | {"stages": stages, "training_data": training})
    return read_config(out)  # the bundle appeared complete or not at all


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("bundle", help="trained bundle directory (jobs/train.py --out)")
    parser.add_argument("--out", required=True, help="new directory for the packed bundle")
    parser.add_argument("--dtype", choices=("float16", "bfloat16", "float32"), default="float16",
                        help="storage precision of the weights (default float16)")
    parser.add_argument("--overwrite", action="store_true", help="replace an earlier packed bundle at --out")


def run(args: argparse.Namespace) -> int:
    config = pack_bundle(args.bundle, args.out, getattr(torch, args.dtype), overwrite=args.overwrite)
    size = sum(p.stat().st_size for p in Path(args.out).iterdir())
    print(f"packed {sorted(config['stages'])} into {args.out} ({size / 1e6:.1f} MB, {args.dtype})")
    return 0
