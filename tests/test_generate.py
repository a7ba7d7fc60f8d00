"""The generation job on the shipped demo bundle: Ray job submission, determinism, kill + resume, S3.

Sampling uses 2 denoising steps: these tests check the machinery (plans, actors, datasink, commits,
resume), not sample quality, which benchmarks/sampling.py and the README report.
"""

from __future__ import annotations

import os
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

from factory.sample.job import DEMO_BUNDLE
from factory.store.reader import open_store
from factory.store.verify import verify_store

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
FAST = ["--steps", "2", "--batch-size", "4", "--seed", "7"]


def env() -> dict:
    return {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled",
            "PATH": f"{BIN}:{os.environ['PATH']}", "PYTHONUNBUFFERED": "1"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def generate_cmd(out: Path, *extra: str) -> list[str]:
    return [sys.executable, str(REPO / "jobs" / "generate.py"), "--n", "8", "--out", str(out), *FAST, *extra]


def arrays(url: str) -> dict[str, np.ndarray]:
    group = zarr.open_group(url, mode="r")
    return {name: group[name][:] for name in ("image", "mask", "labeled", "phase", "slice_mask")}


def assert_same_store(a: str, b: str) -> None:
    for name, values in arrays(a).items():
        np.testing.assert_array_equal(values, arrays(b)[name], err_msg=name)
    pd.testing.assert_frame_equal(open_store(a).table, open_store(b).table)


def test_ray_job_submit_on_a_local_head(tmp_path):
    port, dashboard = free_port(), free_port()
    out = tmp_path / "syn.zarr"
    subprocess.run([BIN / "ray", "start", "--head", f"--port={port}", "--dashboard-host=127.0.0.1",
                    f"--dashboard-port={dashboard}", "--num-cpus=2", "--disable-usage-stats"],
                   check=True, env=env(), capture_output=True, timeout=300)
    try:
        job = subprocess.run([BIN / "ray", "job", "submit", "--address", f"http://127.0.0.1:{dashboard}",
                              "--working-dir", str(REPO), "--", "python", "jobs/generate.py", "--n", "8",
                              "--out", str(out), *FAST], env=env(), capture_output=True, text=True, timeout=900)
    finally:
        subprocess.run([BIN / "ray", "stop", "--force"], env=env(), capture_output=True, timeout=120)
    assert job.returncode == 0, job.stdout[-3000:] + job.stderr[-3000:]
    assert verify_store(str(out)) == []
    store = open_store(str(out))
    table = store.table
    assert store.kind == "synthetic" and len(table) == 8
    assert set(np.unique(store.group["mask"][:])) <= {0, 1, 2, 3}
    for column in ("requested_edv_ml", "requested_esv_ml", "requested_ef_pct", "edv_ml", "esv_ml", "ef_pct"):
        assert table[column].notna().all(), column
    assert (table["gate_attempts"] >= 1).all() and set(table["status"]) <= {"ok", "gate_failed"}
    assert (store.group["phase"][:, 0] == 0).all(), "frame 0 of every subject is ED"
    assert store.attrs["sampler"]["steps"] == 2 and len(store.attrs["bundle"]["sha256"]) == 64


def test_existing_store_is_refused_without_resume(tmp_path):
    out = tmp_path / "syn.zarr"
    out.mkdir()
    (out / "something").write_text("x")
    run = subprocess.run(generate_cmd(out), env=env(), capture_output=True, text=True, timeout=300)
    assert run.returncode == 2 and "already exists" in run.stderr
    assert (out / "something").exists()


def test_killed_run_resumes_to_the_uninterrupted_result(tmp_path):
    reference, resumed = tmp_path / "reference.zarr", tmp_path / "resumed.zarr"
    subprocess.run(generate_cmd(reference), env=env(), check=True, capture_output=True, timeout=900)

    job = subprocess.Popen(generate_cmd(resumed, "--workers", "1"), env=env(), start_new_session=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    rows = resumed / "rows"
    deadline = time.monotonic() + 900
    while time.monotonic() < deadline and job.poll() is None:
        if rows.is_dir() and len(list(rows.glob("*.json"))) >= 4:
            break
        time.sleep(0.2)
    os.killpg(job.pid, signal.SIGKILL)
    job.wait()
    assert not (resumed / "manifest.json").exists(), "the run finished before it could be killed"
    committed = len(list(rows.glob("*.json")))
    assert 0 < committed < 8

    subprocess.run(generate_cmd(resumed, "--resume"), env=env(), check=True, capture_output=True, timeout=900)
    assert verify_store(str(resumed)) == []
    assert_same_store(str(reference), str(resumed))
    assert len(open_store(str(resumed)).table) == 8


def test_resume_refuses_other_settings(tmp_path):
    out = tmp_path / "syn.zarr"
    subprocess.run(generate_cmd(out), env=env(), check=True, capture_output=True, timeout=900)
    other = subprocess.run([*generate_cmd(out, "--resume"), "--guidance", "1.5"], env=env(),
                           capture_output=True, text=True, timeout=300)
    assert other.returncode == 2 and "sampler settings" in other.stderr


def test_demo_bundle_is_small_and_loads():
    from factory.bundle import load_bundle

    size = sum(p.stat().st_size for p in DEMO_BUNDLE.iterdir())
    assert size < 15 * 2**20, f"demo bundle is {size / 2**20:.1f} MiB"
    bundle = load_bundle(DEMO_BUNDLE)
    assert set(bundle.stages) == {"vae", "teacher", "anatomy", "motion"}


@pytest.fixture
def s3_server(monkeypatch):
    moto_server = pytest.importorskip("moto.server")
    pytest.importorskip("s3fs")
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=free_port())
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    for key, value in {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
                       "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(key, value)
    import s3fs

    s3fs.S3FileSystem(client_kwargs={"endpoint_url": endpoint}).mkdir("cine")
    yield endpoint
    server.stop()


def test_output_to_s3(s3_server, tmp_path):
    url = "s3://cine/syn.zarr"
    run = subprocess.run([sys.executable, str(REPO / "jobs" / "generate.py"), "--n", "4", "--out", url, *FAST],
                         env=env(), capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    assert verify_store(url) == []
    assert len(open_store(url).table) == 4
