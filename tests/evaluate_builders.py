"""Inputs of the downstream tests: a toy cohort with an unlabeled pool and a VAE-only bundle trained "on" it."""

from __future__ import annotations

from pathlib import Path

from factory.bundle import add_stage, start_bundle, training_fingerprint
from factory.presets import get_preset
from factory.store.reader import open_store

from store_builders import write_store


def vae_bundle(path: Path, cohort: str) -> str:
    """A bundle of untrained tiny-preset VAE weights whose recorded training cohort is `cohort` (the bundle API)."""
    import torch

    from factory.models.build import build_model

    preset = get_preset("tiny")
    torch.manual_seed(0)
    start_bundle(path, preset, training_fingerprint(open_store(cohort)))
    add_stage(path, "vae", build_model(preset, "vae", 0).state_dict(), {}, {"latent_scale": 1.0})
    return str(path)


def scarce_inputs(root: Path, n_labeled: int = 12) -> dict[str, str]:
    """Cohort of `n_labeled` labeled subjects (vendors B, A in turn) + 4 unlabeled ones, its bundle, a test store of
    vendors A and B (6 subjects) and a synthetic store (8 subjects, 6 passed the gate)."""
    cohort = write_store(root / "cohort.zarr", n=n_labeled + 4, n_unlabeled=4)
    return {"cohort": cohort, "bundle": vae_bundle(root / "bundle", cohort),
            "test": write_store(root / "test.zarr", n=6, prefix="t"),
            "synthetic": write_store(root / "syn.zarr", n=8, kind="synthetic", prefix="syn")}


def job_main():
    """`main` of jobs/evaluate.py (the jobs folder is not a package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("evaluate_job", Path(__file__).resolve().parents[1] / "jobs"
                                                  / "evaluate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main
