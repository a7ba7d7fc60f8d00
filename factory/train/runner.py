"""Driver side of training: one Ray Train `TorchTrainer` per stage, its result exported into the bundle.

Layout under the bundle directory `out`: the bundle itself (`bundle.json`, `<stage>.safetensors`)
and `training/` (git-ignored working data): `runs/<stage>/` (Ray Train checkpoints: re-running
with the same `out` resumes an unfinished stage from its latest one), `logs/` (metrics JSONL/CSV)
and `latents.zarr` (the pre-encoded cohort the diffusion stages train from).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import ray.train
from ray.train.torch import TorchTrainer

from factory.bundle import add_stage, read_config, start_bundle, training_fingerprint, update_config
from factory.cluster import connect
from factory.errors import BundleError, unwrapped
from factory.models.build import build_model
from factory.outputs import BUNDLE, check_output, recognise
from factory.presets import get_preset
from factory.store.reader import open_store
from factory.train import diffusion, teacher, vae
from factory.train.checkpoint import STATE_FILE, export_weights
from factory.train.config import StageConfig, stage_config
from factory.train.data import split_subjects
from factory.models.conditioning import fit_mass_model, vendor_vocabulary
from factory.train.latents import build_latent_store, fit_normalizer, training_subjects
from factory.vocabulary import STAGES

REQUIRES = {"vae": (), "teacher": ("vae",), "anatomy": ("vae", "teacher"), "motion": ("vae", "teacher")}
SCALE_FACTORS = {"vae": "latent_scale", "teacher": "residual_scale"}  # measured at the end of these stages
# The worker loop of each stage (both LDMs train in one loop, `diffusion.DENOISERS` says how they differ).
LOOPS: dict[str, Callable[[dict], None]] = {"vae": vae.train_loop, "teacher": teacher.train_loop,
                                            "anatomy": diffusion.train_loop, "motion": diffusion.train_loop}


@dataclass
class TrainOptions:
    """What `jobs/train.py` asks for (None = the preset's per-stage default)."""

    cohort: str
    out: str
    preset: str = "tiny"
    stages: tuple[str, ...] = STAGES
    workers: int = 2
    gpus_per_worker: float = 0.0
    steps: int | None = None
    batch_size: int | None = None
    checkpoint_every: int | None = None
    seed: int = 0
    max_failures: int = 2
    fail_at_step: dict[str, int] = field(default_factory=dict)  # test hook: stage -> step

    @property
    def work(self) -> Path:
        """Working data of the run (checkpoints, logs, latent store), inside the bundle directory."""
        return Path(self.out).resolve() / "training"


def train(options: TrainOptions) -> dict:
    """Train the requested stages in cascade order into the bundle `options.out` (on the cluster of RAY_ADDRESS,
    else a local Ray instance); returns bundle.json."""
    preset = get_preset(options.preset)
    store = open_store(absolute(options.cohort), kind="cohort")
    connect()
    out = Path(options.out).resolve()
    if recognise(out) != BUNDLE:  # a new bundle needs a free folder; an existing bundle is resumed
        check_output(out, overwrite=False, accept=(BUNDLE,), inputs=[store.url],
                     hint="give a new folder, or an existing bundle to resume")
    config = start_bundle(out, preset, training_fingerprint(store))
    options.work.mkdir(parents=True, exist_ok=True)
    (options.work / ".gitignore").write_text("*\n")  # checkpoints and latents never enter git
    for stage in [s for s in STAGES if s in options.stages]:
        if stage in config["stages"]:
            print(f"[{stage}] already in {out}: kept (train into a new --out to retrain it)", flush=True)
            continue
        missing = [s for s in REQUIRES[stage] if s not in config["stages"]]
        if missing:
            raise BundleError(f"{out}: stage {stage!r} needs {missing} first (e.g. --stage all)")
        cfg = stage_config(stage, preset.name, cohort=store.url, bundle=str(out), work=str(options.work),
                           steps=options.steps, batch_size=options.batch_size,
                           checkpoint_every=options.checkpoint_every, seed=options.seed,
                           fail_at_step=options.fail_at_step.get(stage))
        if stage in ("anatomy", "motion"):
            prepare_latents(cfg, options)
        started = time.monotonic()
        result = fit_stage(cfg, options)
        config = export_stage(cfg, result.checkpoint, time.monotonic() - started, options)
    return config


def absolute(url: str) -> str:
    """A local path made absolute (workers need not share the driver's working directory); URLs as they are."""
    return url if "://" in url else str(Path(url).resolve())


def prepare_latents(cfg: StageConfig, options: TrainOptions) -> None:
    """Record the LDMs' conditioning in bundle.json (clinical normaliser, mass fit, vendor vocabulary and counts),
    once, then pre-encode the cohort once (Ray Data job)."""
    if read_config(cfg.bundle)["clinical_normalizer"] is None:
        table = open_store(cfg.cohort).table
        train_ids, _ = split_subjects(len(table), cfg.val_fraction, cfg.seed)
        vendors = vendor_vocabulary(table["vendor"])
        update_config(cfg.bundle, {"clinical_normalizer": fit_normalizer(cfg.cohort, train_ids).to_dict(),
                                   "myo_mass_fit": fit_mass_model(table.iloc[train_ids]),
                                   "vendors": vendors,
                                   "vendor_counts": {v: int((table["vendor"] == v).sum()) for v in vendors}})
    build_latent_store(cfg.bundle, cfg.cohort, cfg.latents, get_preset(cfg.preset), workers=options.workers,
                       gpus_per_worker=options.gpus_per_worker, seed=cfg.seed)


def fit_stage(cfg: StageConfig, options: TrainOptions) -> ray.train.Result:
    """Run one stage's worker loop on `options.workers` Ray Train workers (DDP), resuming its latest checkpoint."""
    gpus = options.gpus_per_worker
    trainer = TorchTrainer(
        LOOPS[cfg.stage],
        train_loop_config=cfg.to_dict(),
        scaling_config=ray.train.ScalingConfig(num_workers=options.workers, use_gpu=gpus > 0,
                                               resources_per_worker={"CPU": 1, **({"GPU": gpus} if gpus else {})}),
        run_config=ray.train.RunConfig(
            name=cfg.stage, storage_path=str(options.work / "runs"),
            failure_config=ray.train.FailureConfig(max_failures=options.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2)),
    )
    with unwrapped():  # a FactoryError raised in a worker is re-raised as itself
        return trainer.fit()


def export_stage(cfg: StageConfig, checkpoint: ray.train.Checkpoint | None, wall_s: float,
                 options: TrainOptions) -> dict:
    """Copy the final checkpoint's (EMA) weights, scale factor, recipe (loss weights included) and metrics into the
    bundle."""
    if checkpoint is None:
        raise RuntimeError(f"[{cfg.stage}] training ended without a checkpoint")
    with checkpoint.as_directory() as directory:
        state = json.loads((Path(directory) / STATE_FILE).read_text())
        if state["step"] != cfg.steps:
            raise BundleError(f"{cfg.bundle}: [{cfg.stage}] its latest checkpoint is at step {state['step']}, "
                              f"not --steps {cfg.steps}: rerun with --steps {state['step']} or into a fresh --out")
        scale = SCALE_FACTORS.get(cfg.stage)
        if scale is not None and scale not in state:
            # A longer run's mid-run checkpoint: the scale factor is only measured at a run's last step.
            raise BundleError(f"{cfg.bundle}: [{cfg.stage}] the checkpoint of step {cfg.steps} was written in the "
                              f"middle of a longer run and has no {scale}: rerun with that run's --steps "
                              f"(above {cfg.steps}) or into a fresh --out")
        n_vendors = len(read_config(cfg.bundle).get("vendors") or [])
        tensors = export_weights(directory, cfg.stage, build_model(get_preset(cfg.preset), cfg.stage, n_vendors))
    updates = {scale: state[scale]} if scale is not None else {}
    info = {"steps": state["step"], "batch_size": cfg.batch_size, "lr": cfg.lr, "loss_weights": cfg.loss,
            "workers": options.workers, "gpus_per_worker": options.gpus_per_worker, "starts": state["starts"],
            "wall_s": round(wall_s, 1), "metrics": state["metrics"]}
    if cfg.stage in ("anatomy", "motion"):
        train_ids, _ = split_subjects(open_store(cfg.cohort).n_subjects, cfg.val_fraction, cfg.seed)
        info["subjects"] = training_subjects(cfg.latents, train_ids)
    config = add_stage(cfg.bundle, cfg.stage, tensors, info, updates)
    print(f"[{cfg.stage}] done in {wall_s / 60:.1f} min: {json.dumps(state['metrics'])}", flush=True)
    return config
