"""A store as a pool of training samples: which samples it has, what each one carries, reading them in batches.

A sample key is an int32 row (subject, frame, slice) with -1 for the axes a mode does not split (a
sequence sample is (subject, -1, -1), a frame sample (subject, t, -1)). `factory.stream` draws
keys from pools for its epochs; `factory.store.read` turns them into Ray Data rows.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from factory.store import layout
from factory.store.fs import filesystem, join, read_json
from factory.store.reader import Store, open_store

MODES = ("sequence", "frame", "slice")
CLINICAL_KEYS = ("edv_ml", "esv_ml", "ef_pct", "myo_mass_g")


def sample_keys(subjects: np.ndarray, n_frames: np.ndarray, labeled: np.ndarray, slice_mask: np.ndarray,
                mode: str, labeled_only: bool) -> np.ndarray:
    """Keys (K, 3) of every real sample of the given subjects, sorted by subject, frame, slice.

    Padding frames (t >= n_frames) never appear, slice mode keeps only real slices (`slice_mask`),
    and `labeled_only` keeps labeled frames (sequence mode: subjects with at least one labeled frame).
    `labeled` (S, T) and `slice_mask` (S, Z) are the rows of `subjects`, in the same order.
    """
    real = np.arange(labeled.shape[1])[None, :] < np.asarray(n_frames)[:, None]
    wanted = real & labeled if labeled_only else real
    if mode == "sequence":
        rows = np.flatnonzero(wanted.any(axis=1))
        keys = np.stack([rows, np.full_like(rows, -1), np.full_like(rows, -1)], axis=1)
    elif mode == "frame":
        keys = np.argwhere(wanted)
        keys = np.concatenate([keys, np.full((len(keys), 1), -1)], axis=1)
    elif mode == "slice":
        keys = np.argwhere(wanted[:, :, None] & slice_mask[:, None, :])
    else:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    keys = keys.astype(np.int32).reshape(-1, 3)
    keys[:, 0] = np.asarray(subjects, dtype=np.int32)[keys[:, 0]]
    return keys


def sample_meta(row: dict) -> dict:
    """The per-subject fields every sample carries: ids, diagnosis, vendor and clinical values.

    Missing values become "unknown" / NaN so that batches of mixed stores collate.
    """
    def text(value) -> str:
        return "unknown" if value is None or (isinstance(value, float) and math.isnan(value)) else str(value)

    def number(value) -> float:
        return math.nan if value is None else float(value)

    return {"subject_id": str(row["subject_id"]), "diagnosis": text(row.get("diagnosis")),
            "vendor": text(row.get("vendor")), **{k: number(row.get(k)) for k in CLINICAL_KEYS}}


class SamplePool:
    """A store's subjects known so far, their sample keys and metadata; samples are read in batches.

    The store opens its arrays in the process that reads (pickling and forking are safe). With
    `follow`, subjects are added as a writer commits them (`poll`) instead of all at once.
    """

    def __init__(self, url: str | Path, mode: str, labeled_only: bool, follow: bool):
        self.url, self.mode, self.labeled_only, self.follow = str(url), mode, labeled_only, follow
        self.store: Store = open_store(self.url, require_complete=not follow)
        n, t_max = self.store.n_subjects, self.store.attrs["max_frames"]
        self.geometry = tuple(self.store.attrs["geometry"])
        self.rows: dict[int, dict] = {}
        self.labeled = np.zeros((n, t_max), bool)
        self.phase = np.zeros((n, t_max), np.float32)
        self.keys = np.empty((0, 3), np.int32)
        if not follow:
            self.add(list(enumerate(self.store.table.to_dict("records"))))

    def add(self, rows: list[tuple[int, dict]]) -> np.ndarray:
        """Register committed subjects (index, table row); returns their sample keys."""
        if not rows:
            return np.empty((0, 3), np.int32)
        rows = sorted(rows, key=lambda r: r[0])
        subjects = np.array([i for i, _ in rows])
        self.labeled[subjects] = self.store.array("labeled").oindex[subjects]
        self.phase[subjects] = self.store.array("phase").oindex[subjects]
        slice_mask = self.store.array("slice_mask").oindex[subjects]
        self.rows.update({i: sample_meta(row) | {"n_frames": int(row["n_frames"])} for i, row in rows})
        n_frames = np.array([row["n_frames"] for _, row in rows])
        keys = sample_keys(subjects, n_frames, self.labeled[subjects], slice_mask, self.mode, self.labeled_only)
        self.keys = np.concatenate([self.keys, keys])
        return keys

    def poll(self) -> tuple[np.ndarray, bool]:
        """Pick up subjects committed since the last poll: (their sample keys, store complete).

        The manifest is checked before the commit records are listed, so once it is seen the
        listing is known to hold every subject.
        """
        fs, root = filesystem(self.url)
        complete = fs.exists(join(root, layout.MANIFEST))
        paths = fs.glob(join(root, layout.ROWS_DIR, "*.json"))
        new = {int(p.rsplit("/", 1)[-1].split(".")[0]): p for p in paths}
        new = {i: p for i, p in new.items() if i not in self.rows}
        return self.add([(i, read_json(fs, p)) for i, p in new.items()]), complete

    def read(self, keys: np.ndarray) -> list[dict]:
        """The samples of `keys` (in their order), their frames fetched in one batched store read."""
        if self.mode == "sequence":
            subjects = [int(i) for i in keys[:, 0]]
            volumes = self.store.read_sequences(subjects, n_frames=[self.rows[i]["n_frames"] for i in subjects])
        elif self.mode == "slice":
            volumes = zip(*self.store.read_slices(keys))
        else:
            volumes = zip(*self.store.read_frames(keys[:, :2]))
        return [self.assemble(key, image, mask) for key, (image, mask) in zip(keys, volumes)]

    def assemble(self, key: np.ndarray, image: np.ndarray, mask: np.ndarray) -> dict:
        """The sample of `key` from its image and mask: arrays with a channel axis and plain values."""
        i, t, z = (int(k) for k in key)
        row = self.rows[i]
        if self.mode == "sequence":
            n = row["n_frames"]
            frame = {"phase": self.phase[i, :n].copy(), "labeled": self.labeled[i, :n].copy()}
        else:
            frame = {"frame": t, "phase": float(self.phase[i, t]), "labeled": bool(self.labeled[i, t])}
            if self.mode == "slice":
                frame["slice"] = z
        return {"image": image[None], "label": mask[None], "index": i, **frame,
                **{k: v for k, v in row.items() if k != "n_frames"}}
