"""What tests build: small stores (cohort-like or synthetic-like), a VAE-only bundle on one, the jobs as modules."""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import zarr

from factory.bundle import add_stage, start_bundle, training_fingerprint
from factory.data.clinical import measure
from factory.presets import get_preset
from factory.store import layout, shards
from factory.store.reader import open_store
from factory.store.writer import COMPRESSORS, StoreWriter

from conftest import make_subject

DIAGNOSES = ("NOR", "DCM", "HCM")


def subject_and_row(i: int, kind: str, prefix: str):
    """Subject i (4 to 7 frames, ED/ES labeled, or every frame for synthetic) and its table row."""
    n_frames = 4 + i % 4
    labeled = range(n_frames) if kind == "synthetic" else (0, 2)
    subject = make_subject(f"{prefix}{i:03d}", n_frames=n_frames, labeled_frames=labeled, seed=i)
    for t in range(n_frames):  # an LV cavity whose size varies by subject and contracts at ES
        half_width = 2 + i % 4 + (0 if t == subject.es_frame else 2)
        subject.mask[t][subject.mask[t] == 3] = 2
        subject.mask[t, 2:9, 24:36, 30 - half_width:30 + half_width] = 3
    noise = np.random.default_rng(i).normal(0, 0.05, subject.mask.shape)
    subject.image[:] = np.clip(subject.mask / 3 * 2 - 1 + noise, -1, 1)
    subject.slice_mask[-2:] = False  # two padding slices at the apex end
    row = {"source": prefix, "vendor": "A" if i % 2 else "B", "diagnosis": DIAGNOSES[i % len(DIAGNOSES)],
           **measure(subject.mask, subject.spacing_mm, subject.es_frame)}
    if kind == "synthetic":
        rng = np.random.default_rng(i)
        row |= {"requested_edv_ml": row["edv_ml"] * rng.uniform(0.9, 1.1),
                "requested_esv_ml": row["esv_ml"] * rng.uniform(0.9, 1.1),
                "requested_ef_pct": row["ef_pct"] * rng.uniform(0.9, 1.1),
                "gate_attempts": 1 + i % 3, "status": "ok" if i % 5 else "gate_failed"}
    return subject, row


def unlabeled(subject, row: dict):
    """The subject as an unlabeled pool study: no masks, no ES frame, no clinical values or diagnosis."""
    subject = replace(subject, mask=np.zeros_like(subject.mask), labeled=np.zeros(subject.n_frames, bool),
                      es_frame=None, phase=None)
    return subject, row | {key: None for key in ("diagnosis", "edv_ml", "esv_ml", "ef_pct", "myo_mass_g",
                                                   "rv_edv_ml", "rv_esv_ml", "rv_ef_pct")}


def write_store(path: Path | str, n: int = 6, kind: str = "cohort", prefix: str = "s", finalize: bool = True,
                overwrite: bool = False, n_unlabeled: int = 0) -> str:
    """A store of `n` small subjects in the tiny preset's geometry, the last `n_unlabeled` of them unlabeled
    (cohorts only); returns its path."""
    writer = StoreWriter.create(str(path), n_subjects=n, preset=get_preset("tiny"), kind=kind, overwrite=overwrite)
    for i in range(n):
        subject, row = subject_and_row(i, kind, prefix)
        writer.write_subject(i, *(unlabeled(subject, row) if i >= n - n_unlabeled else (subject, row)))
    if finalize:
        writer.finalize()
    return str(path)


def write_in_two_parts(url: str, go_file: str, timeout_s: float = 120) -> None:
    """Writer process for a created store: commit two subjects, wait for `go_file`, commit the rest, finalise."""
    writer = StoreWriter(url)
    for i in range(writer.n_subjects):
        if i == 2:
            deadline = time.monotonic() + timeout_s
            while not os.path.exists(go_file) and time.monotonic() < deadline:
                time.sleep(0.05)
        writer.write_subject(i, *subject_and_row(i, "cohort", "s"))
    writer.finalize()


def shard_path(path: Path | str, array: str, subject: int) -> Path:
    """The shard file of `subject` in frame array `array`."""
    return Path(path) / array / "c" / str(subject) / "0" / "0" / "0" / "0"


def shard_index(path: Path | str, array: str, subject: int) -> np.ndarray:
    """(offset, length) of each frame's chunk in the shard of `subject`, as its index lists them."""
    n_chunks = zarr.open_array(str(Path(path) / array), mode="r").shards[1]
    tail = shard_path(path, array, subject).read_bytes()[-shards.index_nbytes(n_chunks):]
    return shards.parse_index(tail, n_chunks)


def corrupt_frame(path: Path | str, array: str, subject: int, frame: int) -> None:
    """Flip a byte in the middle of the stored chunk of one frame (inside its subject's shard)."""
    offset, length = shard_index(path, array, subject)[frame]
    shard = shard_path(path, array, subject)
    payload = bytearray(shard.read_bytes())
    payload[int(offset + length // 2)] ^= 0xFF
    shard.write_bytes(bytes(payload))


def write_chunk_per_frame_store(path: Path | str, n: int = 3) -> str:
    """A store in the layout written before per-subject shards: frame arrays one chunk per real frame, no
    `frame_storage` attribute, no shard shapes in the manifest (built by rewriting a store of today)."""
    write_store(path, n=n)
    group = zarr.open_group(str(path), mode="r+")
    n_frames = [json.loads(row.read_text())["n_frames"] for row in sorted((Path(path) / layout.ROWS_DIR).iterdir())]
    for name in layout.FRAME_ARRAYS:
        data = group[name][:]
        array = group.create_array(name, shape=data.shape, chunks=(1, 1, *data.shape[2:]), dtype=data.dtype,
                                   compressors=COMPRESSORS, fill_value=0, overwrite=True,
                                   dimension_names=("subject", "frame", "z", "y", "x"))
        array = array.with_config({"write_empty_chunks": True})
        for i, t in enumerate(n_frames):
            array[i, :t] = data[i, :t]
    del group.attrs["frame_storage"]
    manifest_path = Path(path) / layout.MANIFEST
    manifest = json.loads(manifest_path.read_text())
    for entry in manifest["arrays"].values():
        del entry["shards"]
    manifest_path.write_text(json.dumps(manifest))
    return str(path)


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


@functools.cache
def job(name: str):
    """jobs/<name>.py as a module (the jobs folder is not a package)."""
    path = Path(__file__).resolve().parents[1] / "jobs" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"jobs_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
