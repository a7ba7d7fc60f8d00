"""The latent store: the cohort encoded once by the frozen VAE and teacher, which the LDMs train from.

A Zarr v3 group with, per subject i (chunked per subject, or per subject and frame):
  z (N, T, C, Z, h, w)          posterior means of every frame (unscaled)
  residual (N, T, C, Z, h, w)   teacher residuals r_t = teacher(z_ED, z_t) (unscaled)
  z_ed_aug (N, A, C, Z, h, w)   ED latents of A copies of the ED frame: copy 0 as is, the others
                                 under a random in-plane affine (anatomy augmentation)
  clinical_aug (N, A, S)        CLINICAL_SCALARS of each copy, recomputed from its warped masks
  volumes (N, T, 2)             LV and myocardial volume (ml) the VAE's segmentation decoder reads off z
                                 (soft, `objectives.soft_volumes_ml`): the LDMs' volume-term targets
  volumes_aug (N, A, 2)         the same of each ED copy's latent
  slice_mask (N, Z), phase (N, T), n_frames (N,), diagnosis (N,) (vocabulary ids; the null id if unknown)
  vendor (N,)                   ids into the bundle's vendor vocabulary (the null id if none)
  pseudo (N,)                   clinical values measured on the VAE's predicted masks (unlabeled subjects)
  done (N,)                     written last per subject: a killed job resumes where it stopped
and attributes (cohort fingerprint, vendor vocabulary, augmentation count, `complete` once every
subject is done). Unlabeled subjects with a cycle (two or more frames) are pseudo-labeled: the VAE's
segmentation decoder segments every frame, ES is the frame of smallest LV, and their clinical
values and phases follow from those masks; their diagnosis stays unknown.
Building it is a Ray Data job: `map_batches` over subject ids with a pool of encoder actors.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace

import numpy as np
import pandas as pd
import ray.data
import torch
import zarr

from factory.bundle import load_bundle, read_config, training_fingerprint
from factory.data.clinical import label_volumes_ml
from factory.models.conditioning import CLINICAL_SCALARS, NULL_DIAGNOSIS, ClinicalNormalizer, vendor_ids
from factory.presets import Preset
from factory.record import Subject, cycle_phase
from factory.store.batch import BatchReader
from factory.store.reader import open_store
from factory.train.config import StageConfig
from factory.train.data import augment_ed, clinical_values, shard, split_subjects
from factory.train.objectives import soft_volumes_ml
from factory.vocabulary import DIAGNOSES

LAYOUT = 2  # bumped when the arrays change: a latent store of another layout is rebuilt
N_AUGMENT = 4  # augmented ED copies per subject, beside the original
ENCODE_BATCH = 8
SUBJECTS_PER_ACTOR = 8  # fewer subjects than this per actor do not pay for an actor's start-up


def diagnosis_id(name: object) -> int:
    """Vocabulary id of a diagnosis; the null (unconditional) id when unknown or missing."""
    return DIAGNOSES.index(name) if name in DIAGNOSES else NULL_DIAGNOSIS


def create_latent_store(url: str, preset: Preset, n_subjects: int, max_frames: int, attrs: dict) -> zarr.Group:
    """Lay out an empty latent store (see the module docstring)."""
    latent = preset.latent_shape
    a, s, z = 1 + N_AUGMENT, len(CLINICAL_SCALARS), preset.geometry.n_slices
    group = zarr.open_group(url, mode="w", zarr_format=3, attributes={**attrs, "complete": False})
    for name in ("z", "residual"):
        group.create_array(name, shape=(n_subjects, max_frames, *latent), chunks=(1, 1, *latent), dtype="float32")
    group.create_array("z_ed_aug", shape=(n_subjects, a, *latent), chunks=(1, 1, *latent), dtype="float32")
    group.create_array("clinical_aug", shape=(n_subjects, a, s), chunks=(1, a, s), dtype="float32")
    group.create_array("volumes", shape=(n_subjects, max_frames, 2), chunks=(1, max_frames, 2), dtype="float32")
    group.create_array("volumes_aug", shape=(n_subjects, a, 2), chunks=(1, a, 2), dtype="float32")
    group.create_array("slice_mask", shape=(n_subjects, z), chunks=(1, z), dtype="bool")
    group.create_array("phase", shape=(n_subjects, max_frames), chunks=(1, max_frames), dtype="float32")
    for name, dtype in (("n_frames", "int32"), ("diagnosis", "int64"), ("vendor", "int64"), ("pseudo", "bool"),
                        ("done", "bool")):
        group.create_array(name, shape=(n_subjects,), chunks=(1,), dtype=dtype, fill_value=0)
    return group


class LatentEncoder:
    """Ray Data actor: encodes subjects of the cohort with the bundle's frozen VAE and teacher."""

    def __init__(self, bundle: str, cohort: str, latents: str, seed: int, device: str) -> None:
        loaded = load_bundle(bundle, device=device, stages=("vae", "teacher"))
        self.vae, self.teacher, self.device = loaded.vae, loaded.teacher, device
        self.vendors = loaded.vendors
        self.voxel_ml = loaded.preset.geometry.voxel_ml
        self.store = open_store(cohort)
        self.group = zarr.open_group(latents, mode="r+")
        self.seed = seed

    def volumes(self, z: torch.Tensor, slice_mask: np.ndarray) -> np.ndarray:
        """(F, 2) soft LV and myocardial volumes (ml) of latents z (F, C, Z, h, w), as the volume term measures them."""
        mask = torch.from_numpy(slice_mask).to(self.device)
        return torch.cat([soft_volumes_ml(self.vae.decode_mask_logits(chunk), mask.expand(len(chunk), -1),
                                          self.voxel_ml) for chunk in z.split(ENCODE_BATCH)]).cpu().numpy()

    def encode(self, frames: np.ndarray) -> torch.Tensor:
        """(F, Z, H, W) frames -> posterior means (F, C, Z, h, w), in batches of ENCODE_BATCH."""
        x = torch.from_numpy(np.ascontiguousarray(frames, dtype=np.float32))[:, None]
        return torch.cat([self.vae.encode(x[k:k + ENCODE_BATCH].to(self.device))[0]
                          for k in range(0, len(x), ENCODE_BATCH)])

    @torch.no_grad()
    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        for i in batch["subject"]:
            self.encode_subject(int(i))
        return {"subject": batch["subject"]}

    def encode_subject(self, i: int) -> None:
        subject = self.store.subject(i)
        row = self.store.table.loc[i]
        t = subject.n_frames
        z = self.encode(subject.image)
        residual = torch.cat([self.teacher(z[:1].expand(len(chunk), -1, -1, -1, -1), chunk)
                              for chunk in z.split(ENCODE_BATCH)])
        pseudo = not is_labeled(subject) and t >= 2
        if pseudo:  # segment the cycle with the VAE: ES = smallest predicted LV
            subject = self.pseudo_labeled(subject, z)
        copies, clinical = self.ed_copies(subject, row, np.random.default_rng([self.seed, i]))
        g = self.group
        g["z"][i, :t] = z.float().cpu().numpy()
        g["residual"][i, :t] = residual.float().cpu().numpy()
        z_copies = self.encode(copies).float()
        g["z_ed_aug"][i] = z_copies.cpu().numpy()
        g["clinical_aug"][i] = clinical
        g["volumes"][i, :t] = self.volumes(z.float(), subject.slice_mask)
        g["volumes_aug"][i] = self.volumes(z_copies, subject.slice_mask)
        g["slice_mask"][i] = subject.slice_mask
        g["phase"][i, :t] = subject.phase
        g["n_frames"][i] = t
        g["diagnosis"][i] = diagnosis_id(row["diagnosis"])
        g["vendor"][i] = int(vendor_ids([row["vendor"]], self.vendors, strict=False)[0])
        g["pseudo"][i] = pseudo
        g["done"][i] = True

    def pseudo_labeled(self, subject: Subject, z: torch.Tensor) -> Subject:
        """`subject` with the VAE's predicted masks on every frame, ES at the smallest predicted LV and its phases."""
        masks = torch.cat([self.vae.decode_mask_logits(chunk).argmax(1) for chunk in z.split(ENCODE_BATCH)])
        masks = masks.to(torch.uint8).cpu().numpy() * subject.slice_mask[None, :, None, None]
        es = int(np.argmin(label_volumes_ml(masks, subject.spacing_mm)["lv"][1:])) + 1
        return replace(subject, mask=masks, labeled=np.ones(subject.n_frames, bool), es_frame=es,
                       phase=cycle_phase(subject.n_frames, es))

    def ed_copies(self, subject, row: pd.Series, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """The ED frame and N_AUGMENT warped copies (A, Z, H, W), with their clinical scalars (A, S).

        The scalars are recomputed from each copy's (warped) ED and ES masks when both frames are
        labeled (or pseudo-labeled); otherwise every copy keeps the table's values.
        """
        image, es, spacing = subject.image[0], subject.es_frame, subject.spacing_mm
        labeled = is_labeled(subject)
        mask_ed, mask_es = subject.mask[0], subject.mask[es if labeled else 0]
        copies = [(image, mask_ed, mask_es)] + [augment_ed(image, mask_ed, mask_es, rng) for _ in range(N_AUGMENT)]
        if labeled:
            values = [clinical_values(m_ed, m_es, spacing, subject.slice_mask) for _, m_ed, m_es in copies]
        else:
            values = [row.to_dict()] * len(copies)
        clinical = [[np.nan if v[name] is None else float(v[name]) for name in CLINICAL_SCALARS] for v in values]
        return np.stack([c[0] for c in copies]), np.asarray(clinical, dtype=np.float32)


def is_labeled(subject: Subject) -> bool:
    """Whether a subject's ED and ES frames both carry masks (clinical values can be measured on them)."""
    es = subject.es_frame
    return es is not None and bool(subject.labeled[0] and subject.labeled[es])


def build_latent_store(bundle: str, cohort: str, latents: str, preset: Preset, *, workers: int,
                       gpus_per_worker: float, seed: int) -> None:
    """Encode every subject of `cohort` not yet done into the latent store (a Ray Data job), then mark it complete."""
    store = open_store(cohort)
    fingerprint = training_fingerprint(store)
    vendors = read_config(bundle).get("vendors") or []
    try:
        group = zarr.open_group(latents, mode="r+")
        if (group.attrs.get("cohort") != fingerprint or group.attrs.get("vendors") != vendors
                or group.attrs.get("layout") != LAYOUT):
            raise KeyError("another cohort, vendor vocabulary or layout")
    except (FileNotFoundError, KeyError, zarr.errors.GroupNotFoundError):
        group = create_latent_store(latents, preset, store.n_subjects, int(store.attrs["max_frames"]),
                                    {"cohort": fingerprint, "vendors": vendors, "layout": LAYOUT, "n_augment": N_AUGMENT,
                                     "seed": seed, "clinical_scalars": list(CLINICAL_SCALARS)})
    if group.attrs["complete"]:
        return
    todo = np.flatnonzero(~group["done"][:])
    actors = max(1, min(workers, len(todo) // SUBJECTS_PER_ACTOR))
    print(f"[latents] encoding {len(todo)} of {store.n_subjects} subjects with {actors} encoder actor(s)", flush=True)
    device = "cuda" if gpus_per_worker else "cpu"
    (ray.data.from_items([{"subject": int(i)} for i in todo])
     .map_batches(LatentEncoder, batch_size=1, compute=ray.data.ActorPoolStrategy(size=actors), num_cpus=1,
                  num_gpus=gpus_per_worker, fn_constructor_kwargs={"bundle": bundle, "cohort": cohort,
                                                                   "latents": latents, "seed": seed,
                                                                   "device": device})
     .materialize())
    if not group["done"][:].all():
        raise RuntimeError(f"{latents}: some subjects were not encoded")
    group.attrs["complete"] = True


def fit_normalizer(cohort: str, subjects: np.ndarray) -> ClinicalNormalizer:
    """The clinical normaliser of the diffusion models, fitted on the training subjects' table rows."""
    return ClinicalNormalizer().fit(open_store(cohort).table.iloc[subjects])


def training_subjects(url: str, subjects: np.ndarray) -> dict[str, dict[str, int]]:
    """How many of `subjects` an LDM trains on with measured (labeled) and pseudo clinical values, and without any,
    per vendor (bundle.json records it per stage)."""
    group = zarr.open_group(url, mode="r")
    vendors = list(group.attrs.get("vendors") or []) + ["none"]
    has_values = np.isfinite(group["clinical_aug"][:, 0]).all(axis=1)[subjects]
    pseudo, vendor = group["pseudo"][:][subjects], group["vendor"][:][subjects]
    kinds = {"labeled": has_values & ~pseudo, "pseudo": has_values & pseudo, "unconditional": ~has_values}
    return {kind: {vendors[v]: int(n) for v, n in zip(*np.unique(vendor[chosen], return_counts=True))}
            for kind, chosen in kinds.items()}


class LatentSampler:
    """Random LDM training samples of some subjects of a latent store, already scaled and normalised."""

    def __init__(self, url: str, subjects: np.ndarray, *, latent_scale: float, residual_scale: float,
                 normalizer: ClinicalNormalizer) -> None:
        self.group = zarr.open_group(url, mode="r")
        self.subjects = subjects
        self.latent_scale, self.residual_scale = latent_scale, residual_scale
        self.n_frames = self.group["n_frames"][:]
        self.phase = self.group["phase"][:]
        self.slice_mask = self.group["slice_mask"][:]
        self.diagnosis = self.group["diagnosis"][:]
        self.vendor = self.group["vendor"][:]
        self.clinical = self.group["clinical_aug"][:]
        self.volumes, self.volumes_aug = self.group["volumes"][:], self.group["volumes_aug"][:]
        self.normalizer = normalizer
        self.reader = BatchReader(url)

    def read(self, name: str, keys: Iterable[tuple[int, int]]) -> np.ndarray:
        """Rows (i, j) of latent array `name`, stacked: all chunks of a batch fetched in one round trip."""
        return np.stack(self.reader.read_all([(name, (int(i), int(j))) for i, j in keys]))

    def conditions(self, subjects: np.ndarray, copies: np.ndarray) -> dict[str, torch.Tensor]:
        """slice_mask, diagnosis, normalised scalars, vendor, and `missing` (samples whose scalars are unknown)."""
        raw = self.clinical[subjects, copies].astype(np.float64)
        missing = ~np.isfinite(raw).all(axis=1)
        filled = np.where(np.isfinite(raw), raw, self.normalizer.mean)
        scalars = self.normalizer.transform(dict(zip(CLINICAL_SCALARS, filled.T)))
        return {"slice_mask": torch.from_numpy(self.slice_mask[subjects]),
                "diagnosis": torch.from_numpy(self.diagnosis[subjects]),
                "vendor": torch.from_numpy(self.vendor[subjects]),
                "scalars": scalars, "missing": torch.from_numpy(missing)}

    def anatomy_batch(self, rng: np.random.Generator, size: int) -> dict[str, torch.Tensor]:
        """x0 = scaled ED latent of a random (augmented) copy, and that copy's conditions."""
        subjects = rng.choice(self.subjects, size=size)
        copies = rng.integers(self.clinical.shape[1], size=size)
        x0 = self.read("z_ed_aug", zip(subjects, copies))
        return {"x0": torch.from_numpy(x0) * self.latent_scale,
                "volumes": torch.from_numpy(self.volumes_aug[subjects, copies]), **self.conditions(subjects, copies)}

    def motion_batch(self, rng: np.random.Generator, size: int) -> dict[str, torch.Tensor]:
        """x0 = scaled residual r_t of a random frame, z_ed (scaled), its phase and the subject's conditions."""
        subjects = rng.choice(self.subjects, size=size)
        frames = (rng.random(size) * self.n_frames[subjects]).astype(np.int64)
        residual = self.read("residual", zip(subjects, frames))
        z_ed = self.read("z", ((i, 0) for i in subjects))
        return {"x0": torch.from_numpy(residual) * self.residual_scale,
                "z_ed": torch.from_numpy(z_ed) * self.latent_scale,
                "volumes": torch.from_numpy(self.volumes[subjects, frames]),
                "phase": torch.from_numpy(self.phase[subjects, frames]),
                **self.conditions(subjects, np.zeros(size, dtype=np.int64))}


def latent_samplers(cfg: StageConfig, rank: int, world: int) -> tuple[LatentSampler, LatentSampler]:
    """This rank's samplers of the training and the held-out subjects, scaled and normalised as the bundle says."""
    bundle = read_config(cfg.bundle)
    options = {"latent_scale": bundle["latent_scale"], "residual_scale": bundle["residual_scale"],
               "normalizer": ClinicalNormalizer.from_dict(bundle["clinical_normalizer"])}
    train_ids, val_ids = split_subjects(bundle["training_data"]["n_subjects"], cfg.val_fraction, cfg.seed)
    return (LatentSampler(cfg.latents, shard(train_ids, rank, world), **options),
            LatentSampler(cfg.latents, shard(val_ids, rank, world), **options))
