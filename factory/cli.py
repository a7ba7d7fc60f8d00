"""The `factory` command line: one subcommand per user-facing task.

Each subcommand lives next to the code it drives and exposes `add_arguments(parser)` and
`run(args) -> int`; this file only lists them, so importing the CLI stays cheap (torch, ray and
monai are imported by the subcommand that needs them, not here).
"""

from __future__ import annotations

import argparse
import importlib
import sys

from factory.errors import exit_status

# name -> (module implementing add_arguments/run, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "phantom": ("factory.data.phantom.cli", "write a procedural phantom cohort in the ACDC layout"),
    "montage": ("factory.preview.montage", "PNG montage of phantom frames beside the real reference frames"),
    "ingest": ("factory.store.ingest", "preprocess ACDC / M&Ms / NIfTI folders into a cohort store"),
    "info": ("factory.store.info", "print a summary of a store"),
    "verify": ("factory.store.verify", "check a store's integrity; non-zero exit with reasons"),
    "plan": ("factory.sample.cli", "draw a sampling plan (one row per subject to generate) into a CSV"),
    "models": ("factory.models.summary", "build a preset's models and print parameter counts and shapes"),
    "export": ("factory.export.cli", "export stores as per-subject 4D NIfTI or as an nnU-Net v2 raw dataset"),
    "pack": ("factory.bundle.pack", "copy a trained bundle for shipping: fp16 weights, no training/ folder"),
    "preview": ("factory.preview.cli", "animated GIFs, montages and a dataset report (report.md) of a store"),
    "evaluate": ("factory.evaluate.cli", "evaluate a synthetic store: controllability, coherence, downstream value"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="factory", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    top = build_parser()
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        top.parse_args(argv)  # prints help / the usage error and exits
        return 2
    name, rest = argv[0], argv[1:]
    module_name, help_text = COMMANDS[name]
    module = importlib.import_module(module_name)
    parser = argparse.ArgumentParser(prog=f"factory {name}", description=help_text)
    module.add_arguments(parser)
    args = parser.parse_args(rest)
    return exit_status(f"factory {name}", lambda: module.run(args))


if __name__ == "__main__":
    sys.exit(main())
