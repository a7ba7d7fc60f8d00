"""The generation job: Ray job submission, determinism, kill + resume, refusals, S3 output.

These tests check the machinery (plans, actors, datasink, commits, resume), not sample quality
(benchmarks/sampling.py and the README report that), so they run a bundle of freshly initialised
tiny-preset weights with 2 denoising steps and a single gate attempt.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import zarr

from factory.errors import BundleError, StoreError, unwrapped
from factory.presets import get_preset
from factory.sample.job import DEMO_BUNDLE, RunSpec, generate
from factory.sample.pipeline import SamplerSettings
from factory.sample.plan import make_plan
from factory.store.reader import open_store
from factory.store.verify import verify_store

from store_builders import write_store

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
FAST = ["--steps", "2", "--gate-attempts", "1", "--batch-size", "2", "--frames", "6", "--seed", "7"]


def untrained_bundle(path: Path, vendors: list[str] | None = None) -> Path:
    """A complete bundle of untrained tiny-preset weights (with a vendor token if `vendors`), via the bundle API."""
    import torch

    from factory.bundle import add_stage, start_bundle, update_config
    from factory.models.build import build_models
    from factory.models.conditioning import ClinicalNormalizer, fit_mass_model
    from factory.presets import get_preset
    from factory.vocabulary import DIAGNOSES

    preset = get_preset("tiny")
    torch.manual_seed(0)
    models = build_models(preset, len(vendors or []))
    rng = np.random.default_rng(0)
    edv = rng.uniform(80, 300, 40)
    table = pd.DataFrame({"diagnosis": np.resize(DIAGNOSES, 40), "edv_ml": edv, "esv_ml": edv * 0.5,
                          "ef_pct": 50.0, "myo_mass_g": 0.5 * edv + 60, "n_slices": 9.0})
    start_bundle(path, preset, {"store": "test", "n_subjects": 40, "table_sha256": "0" * 64})
    if vendors:
        update_config(path, {"vendors": vendors, "vendor_counts": dict.fromkeys(vendors, 20)})
    add_stage(path, "vae", models["vae"].state_dict(), {}, {"latent_scale": 1.0})
    add_stage(path, "teacher", models["teacher"].state_dict(), {}, {"residual_scale": 1.0})
    add_stage(path, "anatomy", models["anatomy"].state_dict(), {},
              {"clinical_normalizer": ClinicalNormalizer().fit(table).to_dict(), "myo_mass_fit": fit_mass_model(table)})
    add_stage(path, "motion", models["motion"].state_dict(), {})
    return path


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    """An untrained bundle without a vendor token (as bundles trained before it)."""
    return untrained_bundle(tmp_path_factory.mktemp("bundle"))


def env() -> dict:
    return {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled",
            "PATH": f"{BIN}:{os.environ['PATH']}", "PYTHONUNBUFFERED": "1"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def generate_cmd(bundle: Path, out: Path | str, *extra: str, n: int = 8) -> list[str]:
    return [sys.executable, str(REPO / "jobs" / "generate.py"), "--bundle", str(bundle), "--n", str(n),
            "--out", str(out), *FAST, *extra]


def arrays(url: str) -> dict[str, np.ndarray]:
    group = zarr.open_group(url, mode="r")
    return {name: group[name][:] for name in ("image", "mask", "labeled", "phase", "slice_mask")}


def assert_same_store(a: str, b: str) -> None:
    for name, values in arrays(a).items():
        np.testing.assert_array_equal(values, arrays(b)[name], err_msg=name)
    pd.testing.assert_frame_equal(open_store(a).table, open_store(b).table)


@pytest.mark.slow
def test_ray_job_submit_on_a_local_head(tmp_path, bundle):
    dashboard = free_port()
    out = tmp_path / "syn.zarr"
    # Every port of the head is a free one: with Ray's fixed defaults (e.g. the dashboard agent's
    # 52365) a head started beside another Ray instance never gets a job agent ("No available agent").
    ports = [f"--{name}={free_port()}" for name in ("port", "dashboard-agent-listen-port", "dashboard-agent-grpc-port",
                                                    "metrics-export-port", "runtime-env-agent-port",
                                                    "node-manager-port", "object-manager-port")]
    # --block keeps the head in this process group, so the test stops exactly this cluster (not
    # every Ray instance on the machine, as `ray stop` would).
    head = subprocess.Popen([BIN / "ray", "start", "--head", "--block", *ports, "--dashboard-host=127.0.0.1",
                             f"--dashboard-port={dashboard}", "--num-cpus=2", "--disable-usage-stats"],
                            env=env(), start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    address = f"http://127.0.0.1:{dashboard}"
    ray_cmd = [str(BIN / "ray"), "job"]
    try:
        # The head's job agent registers a few seconds after `ray start`: retry the submission until
        # it is accepted (a refused submission creates no job, so retrying is safe).
        deadline = time.monotonic() + 180
        while True:
            submit = subprocess.run([*ray_cmd, "submit", "--address", address, "--submission-id", "gen8", "--no-wait",
                                     "--working-dir", str(REPO), "--", "python", "jobs/generate.py", "--n", "8",
                                     "--bundle", str(bundle), "--out", str(out), *FAST],
                                    env=env(), capture_output=True, text=True, timeout=300)
            if submit.returncode == 0 or time.monotonic() > deadline:
                break
            time.sleep(3)
        assert submit.returncode == 0, submit.stderr[-2000:]
        deadline = time.monotonic() + 900
        while True:  # poll until the job reaches a terminal state
            status = subprocess.run([*ray_cmd, "status", "--address", address, "gen8"], env=env(),
                                    capture_output=True, text=True, timeout=120)
            state = status.stdout + status.stderr
            if any(s in state.lower() for s in ("succeeded", "failed", "stopped")) or time.monotonic() > deadline:
                break
            time.sleep(3)
        logs = subprocess.run([*ray_cmd, "logs", "--address", address, "gen8"], env=env(),
                              capture_output=True, text=True, timeout=120)
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        head.wait(timeout=120)
    assert "succeeded" in state.lower(), logs.stdout[-3000:]
    assert verify_store(str(out)) == []
    store = open_store(str(out))
    table = store.table
    assert store.kind == "synthetic" and len(table) == 8
    assert set(np.unique(store.group["mask"][:])) <= {0, 1, 2, 3}
    for column in ("requested_edv_ml", "requested_esv_ml", "requested_ef_pct", "edv_ml", "esv_ml", "ef_pct"):
        assert table[column].notna().all(), column
    assert (table["gate_attempts"] >= 1).all() and set(table["status"]) <= {"ok", "gate_failed"}
    assert ((table["status"] == "gate_failed") == (table["gate_reasons"] != "")).all(), "failures say why"
    assert (store.group["phase"][:, 0] == 0).all(), "frame 0 of every subject is ED"
    assert store.attrs["sampler"]["steps"] == 2 and len(store.attrs["bundle"]["sha256"]) == 64


def test_existing_store_is_refused_without_resume(tmp_path, bundle):
    out = tmp_path / "syn.zarr"
    out.mkdir()
    (out / "something").write_text("x")
    run = subprocess.run(generate_cmd(bundle, out), env=env(), capture_output=True, text=True, timeout=300)
    assert run.returncode == 2 and "already exists" in run.stderr
    assert (out / "something").exists()
    run = subprocess.run(generate_cmd(bundle, out, "--overwrite"), env=env(), capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 2 and "did not write" in run.stderr and "Traceback" not in run.stderr, run.stderr
    assert (out / "something").exists(), "--overwrite never deletes a folder that is not a store"


def spec_for(bundle: Path | str, out: Path | str) -> RunSpec:
    return RunSpec(bundle=str(bundle), out=str(out), settings=SamplerSettings(steps=2, max_gate_attempts=1))


def small_plan():
    return make_plan(2, get_preset("tiny"), seed=0, frames=4)


def test_refusals_before_ray_starts(tmp_path, bundle, monkeypatch):
    """--resume with no run, an output onto the bundle, a broken bundle: refused by the driver, Ray never started."""
    monkeypatch.setattr("ray.init", lambda *a, **k: pytest.fail("Ray was started"))
    with pytest.raises(StoreError, match="no generation run was started there"):
        generate(spec_for(bundle, tmp_path / "none.zarr"), small_plan(), resume=True)
    assert not (tmp_path / "none.zarr").exists()
    with pytest.raises(StoreError, match="output path is the input"):
        generate(spec_for(bundle, bundle), small_plan(), overwrite=True)
    with pytest.raises(StoreError, match="lies inside the input"):
        generate(spec_for(bundle, Path(bundle) / "syn.zarr"), small_plan())
    broken = tmp_path / "broken"
    shutil.copytree(bundle, broken)
    payload = (broken / "motion.safetensors").read_bytes()
    (broken / "motion.safetensors").write_bytes(payload[: len(payload) // 2])
    with pytest.raises(BundleError, match="motion.safetensors: not a readable safetensors file"):
        generate(spec_for(broken, tmp_path / "syn.zarr"), small_plan())
    assert not (tmp_path / "syn.zarr").exists(), "nothing half-made is left"


def test_factory_errors_raised_in_ray_workers_surface_as_themselves():
    import ray.exceptions

    original = StoreError("syn.zarr: subject index 9 outside 0..3")
    wrapped = ray.exceptions.RayTaskError("write", "Traceback ...", original)
    with pytest.raises(StoreError) as caught, unwrapped():
        try:
            raise wrapped
        except ray.exceptions.RayTaskError as err:
            raise RuntimeError("Ray Data execution failed") from err
    assert caught.value is original and str(caught.value) == "syn.zarr: subject index 9 outside 0..3"


def test_a_factory_error_of_a_ray_train_worker_surfaces_as_itself():
    import ray.train

    original = StoreError("cohort.zarr: not a store (no zarr.json at its root)")
    crash = RuntimeError("rank 1 crashed")
    with pytest.raises(StoreError) as caught, unwrapped():  # what fit_stage does around TorchTrainer.fit
        raise ray.train.WorkerGroupError("worker errors", {1: crash, 0: original})
    assert caught.value is original
    with pytest.raises(ray.train.WorkerGroupError), unwrapped():  # no FactoryError behind it: Ray's error as is
        raise ray.train.WorkerGroupError("worker errors", {1: crash})


@pytest.mark.slow
def test_killed_run_resumes_to_the_uninterrupted_result(tmp_path, bundle):
    """Determinism and resumability: a killed + resumed run equals an uninterrupted one, bit for bit.

    The killed run replaces an earlier store (--overwrite): it is built beside it, the earlier store stays
    intact until the resumed run finishes, then the new store takes its place. The reference runs on an
    autoscaling pool of 1-2 actors: how many actors ran changes nothing.
    """
    reference, resumed = tmp_path / "reference.zarr", tmp_path / "resumed.zarr"
    subprocess.run(generate_cmd(bundle, reference, "--workers", "1-2", "--cpus-per-worker", "1"), env=env(),
                   check=True, capture_output=True, timeout=900)
    write_store(resumed, n=3, kind="synthetic")  # the earlier store that the run replaces

    job = subprocess.Popen(generate_cmd(bundle, resumed, "--workers", "1", "--cpus-per-worker", "1", "--overwrite"), env=env(),
                           start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    staging = tmp_path / ".resumed.zarr.partial"
    rows = staging / "rows"
    deadline = time.monotonic() + 900
    while time.monotonic() < deadline and job.poll() is None:
        if rows.is_dir() and len(list(rows.glob("*.json"))) >= 4:
            break
        time.sleep(0.2)
    os.killpg(job.pid, signal.SIGKILL)
    job.wait()
    assert not (staging / "manifest.json").exists(), "the run finished before it could be killed"
    committed = len(list(rows.glob("*.json")))
    assert 0 < committed < 8
    assert verify_store(str(resumed)) == [] and open_store(str(resumed)).n_subjects == 3, "earlier store intact"

    subprocess.run(generate_cmd(bundle, resumed, "--resume"), env=env(), check=True, capture_output=True,
                   timeout=900)
    assert verify_store(str(resumed)) == []
    assert_same_store(str(reference), str(resumed))
    assert len(open_store(str(resumed)).table) == 8
    assert sorted(p.name for p in tmp_path.iterdir()) == ["reference.zarr", "resumed.zarr"], "no staging left"

    other = subprocess.run([*generate_cmd(bundle, reference, "--resume"), "--guidance", "1.5"], env=env(),
                           capture_output=True, text=True, timeout=300)
    assert other.returncode == 2 and "sampler settings" in other.stderr


@pytest.mark.slow
def test_animating_real_subjects_keeps_their_ed_mask_and_records_plan_vendors(tmp_path):
    """--from: a plan naming source subjects and vendors animates them; frame 0 keeps the real ED mask and the
    plan's vendor column reaches the store's plan and rows."""
    bundle = untrained_bundle(tmp_path / "bundle", vendors=["A", "B"])
    cohort = write_store(tmp_path / "cohort.zarr", n=4)
    plan = tmp_path / "plan.csv"
    pd.DataFrame({"source_subject": ["s001", "s002", "s003"], "vendor": ["B", "A", "B"],
                  "diagnosis": ["NOR", "DCM", "HCM"], "edv_ml": [120.0, 130.0, 140.0], "ef_pct": [30.0, 50.0, 70.0],
                  "n_slices": [10, 10, 10], "frames": [4, 4, 4], "es_frame": [2, 2, 2]}).to_csv(plan, index=False)
    out = tmp_path / "animated.zarr"
    cmd = [sys.executable, str(REPO / "jobs" / "generate.py"), "--bundle", str(bundle), "--plan", str(plan),
           "--from", cohort, "--out", str(out), "--steps", "2", "--batch-size", "2", "--workers", "1"]
    run = subprocess.run(cmd, env=env(), capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-2000:]
    store, source = open_store(str(out)), open_store(cohort)
    table = store.table
    assert table["source_subject"].tolist() == ["s001", "s002", "s003"]
    assert table["requested_vendor"].tolist() == table["vendor"].tolist() == ["B", "A", "B"]
    assert (table["gate_attempts"] == 0).all()
    assert pd.read_parquet(out / "plan.parquet")["vendor"].tolist() == ["B", "A", "B"]
    for k, name in enumerate(table["source_subject"]):
        np.testing.assert_array_equal(store.frame(k, 0)[1], source.frame(int(name[1:]), 0)[1])
    assert verify_store(str(out)) == []
    unknown = subprocess.run([*cmd[:-6], "--overwrite", "--vendors", "C"], env=env(), capture_output=True, text=True,
                             timeout=300)
    assert unknown.returncode == 2 and "this bundle knows ['A', 'B']" in unknown.stderr


def test_demo_bundle_is_small_and_loads():
    from factory.bundle import load_bundle

    size = sum(p.stat().st_size for p in DEMO_BUNDLE.iterdir() if p.is_file())
    assert size < 15 * 2**20, f"demo bundle is {size / 2**20:.1f} MiB"
    bundle = load_bundle(DEMO_BUNDLE)
    assert set(bundle.stages) == {"vae", "teacher", "anatomy", "motion"}


def test_the_scarce_regime_bundle_loads_and_saw_at_most_20_labels():
    """The shipped generator of the scarce label regime (README): complete, small, and its diffusion stages
    trained on at most 20 labeled subjects, the rest of its cohort pseudo-labeled or unconditional."""
    from factory.bundle import load_bundle, read_config
    from factory.evaluate.generator import REGIMES

    scarce = DEMO_BUNDLE.parent / "scarce"
    assert sum(p.stat().st_size for p in scarce.iterdir()) < 15 * 2**20
    assert set(load_bundle(scarce).stages) == {"vae", "teacher", "anatomy", "motion"}
    config = read_config(scarce)
    assert config["training_data"]["store"] == "cohort_scarce.zarr" and config["training_data"]["table_sha256"]
    for stage in ("anatomy", "motion"):
        subjects = config["stages"][stage]["subjects"]
        assert 0 < sum(subjects["labeled"].values()) <= REGIMES["scarce"], (stage, subjects)
        assert sum(subjects["pseudo"].values()) > sum(subjects["labeled"].values())


def test_demo_bundle_generates_hearts_of_the_requested_size():
    """A guard against a sampler that diverges (e.g. a noise schedule the weights were not trained for):
    generated ED anatomies pass the gate and their LV volumes follow the requested EDV."""
    import torch

    from factory.bundle import load_bundle
    from factory.reporting.stats import pearson
    from factory.presets import get_preset
    from factory.sample.pipeline import CinePipeline, SamplerSettings
    from factory.sample.plan import make_plan

    torch.manual_seed(0)
    pipeline = CinePipeline.from_bundle(load_bundle(DEMO_BUNDLE), SamplerSettings(steps=10))
    plan = make_plan(5, get_preset("tiny"), seed=3, balance="diagnosis", frames=4).reset_index(drop=True)
    rows = pd.DataFrame([g.row for g in pipeline(plan)])
    assert (rows["status"] == "ok").sum() >= 3, rows[["diagnosis", "gate_attempts", "status"]]
    one = plan.iloc[:1]  # the steps also run without autograd when called on their own (memory)
    z_ed = pipeline.sample_anatomy(one, pipeline.conditions(one))[0]
    assert not z_ed.requires_grad
    ratio = rows["edv_ml"] / rows["requested_edv_ml"]
    assert 0.67 < ratio.median() < 1.5 and pearson(rows["requested_edv_ml"], rows["edv_ml"])[0] > 0.7, \
        rows[["requested_edv_ml", "edv_ml", "status"]]


@pytest.fixture
def s3_server(monkeypatch):
    moto_server = pytest.importorskip("moto.server")
    pytest.importorskip("s3fs")
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=free_port())
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    # FSSPEC_S3_ENDPOINT_URL is fsspec's own configuration: every s3:// filesystem (ours, zarr's) uses it.
    for key, value in {"FSSPEC_S3_ENDPOINT_URL": endpoint, "AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "test",
                       "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(key, value)
    import s3fs

    s3fs.S3FileSystem(client_kwargs={"endpoint_url": endpoint}).mkdir("cine")
    yield endpoint
    server.stop()


@pytest.mark.slow
def test_output_to_s3(s3_server, bundle):
    url = "s3://cine/syn.zarr"
    run = subprocess.run(generate_cmd(bundle, url, n=4), env=env(), capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    assert verify_store(url) == []
    assert len(open_store(url).table) == 4
