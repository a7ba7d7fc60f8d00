"""The generation run on Ray Data: plan rows -> sampler actors -> Zarr datasink -> finished store.

Work unit = a fixed group of consecutive plan rows, one Ray Data block of those rows. The number of groups
is a multiple of the worker count, with at most `batch_size` rows each and sizes that differ by one at
most, so every actor has work until the end (`work_units`); it is recorded in the store.
Sampler actors (model loaded once per actor) turn a group into subject rows of native columns; the
datasink (factory.store.datasink) commits each subject into the store (one writer per subject, shards
never shared); the driver finalises the store (table, then manifest) when every
subject is in. A resumed run regenerates only groups with uncommitted subjects, with the same
grouping and seeds, so the result equals an uninterrupted run.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import ray

from factory.cluster import connect
from factory.bundle import BUNDLE_FILE, load_bundle, read_config, sha256_file, training_fingerprint, verify_bundle
from factory.errors import InputError, StoreError, unwrapped
from factory.outputs import STORE, check_output, remove, staging_path, swap
from factory.presets import PRESETS
from factory.sample.pipeline import CinePipeline, SamplerSettings
from factory.store.fs import filesystem, join
from factory.store.datasink import ZarrDatasink, subject_columns
from factory.store.reader import open_store
from factory.store.writer import StoreWriter

PLAN_FILE = "plan.parquet"
# Sampler settings added after stores were first written, at the value those stores' runs used: a run started
# before a setting existed resumes with it set so (e.g. --motion-keyframes 0).
SETTINGS_ADDED = {"motion_keyframes": 0, "image_noise": "", "motion_volumes": "requested"}
GROUP = "work_unit"  # column that tags the plan rows a Ray Data block carries with their group
DEMO_BUNDLE = Path(__file__).resolve().parents[1] / "bundles" / "demo"  # shipped with the package


@dataclass(frozen=True)
class RunSpec:
    """What a generation run needs besides its plan (everything here is recorded in the store)."""

    bundle: str
    out: str
    settings: SamplerSettings
    batch_size: int = 8  # the most plan rows of one work unit (one pipeline call)
    workers: int = 1  # the most sampler actors; the plan's work units are grouped for this many
    min_workers: int | None = None  # the fewest (an autoscaling pool from min_workers to workers); None: workers
    gpus_per_worker: float = 0.0
    cpus_per_worker: float | None = None  # None: an equal share of the cluster's CPUs (CPU runs), 1 (GPU runs)
    source: str | None = None  # a cohort store whose subjects the plan animates (rows name them in source_subject)
    noise_from: str | None = None  # the store the settings' image noise levels were measured on


class SamplerActor:
    """Ray Data callable class: loads the bundle once, turns the plan rows of a work unit into subject rows."""

    def __init__(self, bundle: str, settings: dict, threads: int, source: str | None = None):
        import torch

        torch.set_num_threads(threads)  # the CPUs Ray reserved for this actor, all of them used
        device = "cuda" if torch.cuda.is_available() and ray.get_gpu_ids() else "cpu"
        loaded = load_bundle(bundle, device=device, stages=sampling_stages(source))
        self.pipeline = CinePipeline.from_bundle(loaded, SamplerSettings(**settings), device=device)
        self.source = None if source is None else open_store(source, kind="cohort")  # opened here, in the worker
        self.source_index = ({} if self.source is None else
                             {name: i for i, name in enumerate(self.source.table["subject_id"])})

    def __call__(self, rows: pd.DataFrame) -> dict[str, np.ndarray]:
        """Generate the plan rows of a batch, each work unit (`GROUP`) in one pipeline call, as it always is."""
        generated = [g for _, group in rows.groupby(GROUP, sort=False)
                     for g in self.pipeline(group.drop(columns=GROUP), self.source_frames(group))]
        return subject_columns([g.row["plan_row"] for g in generated], [g.subject for g in generated],
                               [g.row for g in generated])

    def source_frames(self, rows: pd.DataFrame) -> tuple[np.ndarray, np.ndarray] | None:
        """The ED images and masks of the rows' source subjects (None when the run samples anatomies)."""
        if self.source is None:
            return None
        index = np.array([self.source_index[name] for name in rows["source_subject"]])
        return self.source.read_frames(np.stack([index, np.zeros_like(index)], axis=1))


def sampling_stages(source: str | None) -> tuple[str, ...]:
    """The bundle stages a run samples with: animating real subjects (`source`) needs no anatomy LDM."""
    return ("vae", "motion") if source else ("vae", "anatomy", "motion")


def work_unit_count(n_rows: int, workers: int, batch_size: int) -> int:
    """How many groups to split a plan into: a multiple of `workers` (every actor gets as many groups, so none
    idles while another works through a last group alone), of at most `batch_size` rows each."""
    rounds = -(-n_rows // (workers * batch_size))  # ceil: groups per actor
    return min(n_rows, workers * rounds)


def plan_groups(n_rows: int, n_groups: int) -> list[list[int]]:
    """`n_groups` fixed groups of consecutive plan rows whose sizes differ by one at most: the unit of work,
    identical across resumed runs."""
    return [part.tolist() for part in np.array_split(np.arange(n_rows), n_groups)]


def work_units(plan: pd.DataFrame, groups: list[list[int]]) -> list[pd.DataFrame]:
    """The plan rows of every group, tagged with the group's number (`GROUP`): one Ray Data block each."""
    return [plan.iloc[group].assign(**{GROUP: k}) for k, group in enumerate(groups)]


def run_attributes(spec: RunSpec, threads: int, work_units: int) -> dict:
    """Store attributes that pin down the output: sampler settings, grouping (the groups of a UNet call and the
    torch threads per actor both change its float rounding) and the bundle's identity."""
    attrs = {"sampler": {**asdict(spec.settings), "batch_size": spec.batch_size, "work_units": work_units,
                         "threads": threads},
             "bundle": {"path": spec.bundle, "sha256": sha256_file(Path(spec.bundle) / BUNDLE_FILE),
                        "code_version": read_config(spec.bundle)["code_version"]}}
    if spec.source is not None:
        attrs["animated_from"] = training_fingerprint(open_store(spec.source))
    if spec.noise_from is not None:
        attrs["noise_measured_on"] = training_fingerprint(open_store(spec.noise_from))
    return attrs


def check_source(spec: RunSpec) -> None:
    """Refuse a --from store whose geometry is not the bundle's preset (its frames could not be encoded)."""
    if spec.source is None:
        return
    store, preset = open_store(spec.source, kind="cohort"), read_config(spec.bundle)["preset"]
    if store.attrs["preset"] != preset:
        raise InputError(f"{spec.source}: --from store is in preset {store.attrs['preset']!r} geometry, the bundle"
                         f" is {preset!r}; ingest the subjects with --preset {preset}")


def prepare_store(spec: RunSpec, plan: pd.DataFrame, resume: bool, overwrite: bool) -> StoreWriter:
    """The store this run writes into: a new one (beside `spec.out` when it replaces an earlier store,
    swapped in when finished), or, with `resume`, the interrupted run's, after checking it is the same run."""
    if resume:
        return reopen_run(spec, plan)
    inputs = [spec.bundle, *(url for url in (spec.source, spec.noise_from) if url)]
    check_output(spec.out, overwrite=overwrite, accept=(STORE,), inputs=inputs)
    fs, root = filesystem(spec.out)
    url = staging_path(spec.out) if fs.exists(root) and fs.ls(root, detail=False) else spec.out
    if url != spec.out:
        remove(url)  # a replacement that was started and never resumed
    bundle_preset = PRESETS[read_config(spec.bundle)["preset"]]
    threads = actor_threads(spec.cpus_per_worker) if spec.cpus_per_worker else cpu_share(spec)
    units = work_unit_count(len(plan), spec.workers, spec.batch_size)
    writer = StoreWriter.create(url, n_subjects=len(plan), preset=bundle_preset, kind="synthetic",
                                max_frames=int(plan["frames"].max()), attrs=run_attributes(spec, threads, units))
    plan.to_parquet(join(writer.root, PLAN_FILE), index=False, filesystem=writer.fs)
    return writer


def reopen_run(spec: RunSpec, plan: pd.DataFrame) -> StoreWriter:
    """The interrupted run at `spec.out` (or its replacement being built beside it), checked to be this run."""
    candidates = [url for url in (staging_path(spec.out), spec.out) if is_run(url)]
    if not candidates:
        raise StoreError(f"{spec.out}: --resume, but no generation run was started there (run without --resume)")
    writer = StoreWriter(candidates[0])
    stored = pd.read_parquet(join(writer.root, PLAN_FILE), filesystem=writer.fs)
    if not stored.reset_index(drop=True).equals(plan.reset_index(drop=True)):
        raise StoreError(f"{spec.out}: --resume with a different plan than the one the store was started with")
    stored = {**SETTINGS_ADDED, **writer.attrs.get("sampler", {})}
    threads = actor_threads(spec.cpus_per_worker) if spec.cpus_per_worker else stored.get("threads")
    # Default CPUs: the resumed run keeps the threads it started with; and always its groups (another worker
    # count would otherwise regroup the rows).
    attrs = run_attributes(spec, threads, stored.get("work_units"))
    differ = sorted(k for k in stored.keys() | attrs["sampler"].keys() if stored.get(k) != attrs["sampler"].get(k))
    if differ:
        raise StoreError(f"{spec.out}: --resume with other sampler settings than the store was started with: "
                         + ", ".join(f"{k} {attrs['sampler'].get(k)!r} (the store: {stored.get(k)!r})"
                                     for k in differ))
    if writer.attrs.get("bundle", {}).get("sha256") != attrs["bundle"]["sha256"]:
        raise StoreError(f"{spec.out}: --resume with another model bundle than the store was started with")
    if writer.attrs.get("animated_from") != attrs.get("animated_from"):
        raise StoreError(f"{spec.out}: --resume with another --from store than the run was started with")
    return writer


def is_run(url: str) -> bool:
    """Whether `url` holds a synthetic store started by a generation run (its plan is written at creation)."""
    fs, root = filesystem(url)
    return fs.exists(join(root, "zarr.json")) and fs.exists(join(root, PLAN_FILE))


def generate(spec: RunSpec, plan: pd.DataFrame, resume: bool = False, overwrite: bool = False) -> dict:
    """Run (or finish) a generation into `spec.out`; returns a summary of the finished store.

    The bundle is fully checked here, before Ray starts, and a FactoryError raised inside a Ray
    worker is re-raised as itself (`unwrapped`), so a bad input is one clear message wherever it is found.
    """
    start = time.perf_counter()
    verify_bundle(spec.bundle, sampling_stages(spec.source))
    check_source(spec)
    writer = prepare_store(spec, plan, resume, overwrite)
    if writer.fs.exists(join(writer.root, "manifest.json")):
        return summarize(spec.out, 0, time.perf_counter() - start)
    done = writer.committed()
    todo = [g for g in plan_groups(len(plan), writer.attrs["sampler"]["work_units"]) if not set(g) <= done]
    if todo:
        connect()
        threads = writer.attrs["sampler"]["threads"]
        # One block per work unit, used whole as an actor's batch (batch_size=None): a group is never split.
        subjects = ray.data.from_pandas(work_units(plan, todo)).map_batches(
            SamplerActor, batch_size=None, batch_format="pandas", compute=actor_pool(spec),
            num_cpus=spec.cpus_per_worker or threads, num_gpus=spec.gpus_per_worker,
            fn_constructor_kwargs={"bundle": spec.bundle, "settings": asdict(spec.settings), "threads": threads,
                                   "source": spec.source})
        # Writes reserve no CPU: with a logical CPU each, they would wait behind sampler actors that hold
        # every CPU of a small node, and subjects would pile up in the object store until the end.
        with unwrapped():
            subjects.write_datasink(ZarrDatasink(writer.url), ray_remote_args={"num_cpus": 0})
    finalize_start = time.perf_counter()
    writer.finalize()
    if writer.url != spec.out:
        swap(writer.url, spec.out)  # the finished replacement takes the earlier store's place
    end = time.perf_counter()
    return summarize(spec.out, sum(len(g) for g in todo), end - start) | {"finalize_s": round(end - finalize_start, 2)}


def actor_pool(spec: RunSpec) -> ray.data.ActorPoolStrategy:
    """The sampler actor pool: fixed at `workers`, or autoscaling from `min_workers` to `workers`. The output does
    not depend on how many actors ran: groups, seeds and threads are fixed when the store is created."""
    low = spec.workers if spec.min_workers is None else spec.min_workers
    if low == spec.workers:
        return ray.data.ActorPoolStrategy(size=spec.workers)
    return ray.data.ActorPoolStrategy(min_size=low, max_size=spec.workers)


def actor_threads(cpus_per_worker: float) -> int:
    """Torch threads of an actor that Ray gives `cpus_per_worker` CPUs (a fraction still runs one)."""
    return max(1, int(cpus_per_worker))


def cpu_share(spec: RunSpec) -> int:
    """CPUs per sampler actor by default: on CPU runs an equal share of the cluster's CPUs among the most
    actors, at most one node's worth (an actor runs on one node); on GPU runs 1 (the GPU does the work). An
    autoscaling cluster that starts small should be given --cpus-per-worker (its nodes are not up yet)."""
    if spec.gpus_per_worker > 0:
        return 1
    connect()
    nodes = [node["Resources"].get("CPU", 0) for node in ray.nodes() if node["Alive"]]
    return max(1, min(int(max(nodes, default=1)), int(sum(nodes)) // spec.workers))


def summarize(url: str, generated: int, seconds: float) -> dict:
    """Counts per diagnosis, gate failures, tolerance outcomes and throughput of a finished synthetic store."""
    table = open_store(url).table
    summary = {"store": url, "subjects": len(table), "generated_now": generated, "seconds": round(seconds, 1),
               "subjects_per_s": round(generated / seconds, 3) if generated else None,
               "per_diagnosis": table["diagnosis"].value_counts().sort_index().to_dict(),
               "gate_failures": int((table["status"] != "ok").sum())}
    if "within_tolerance" in table:
        summary |= {"outside_tolerance": int((~table["within_tolerance"].astype(bool)).sum()),
                    "motion_attempts_mean": round(float(table["motion_attempts"].mean()), 2)}
    return summary
