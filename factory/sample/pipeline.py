"""The cascade sampler: clinical priors -> ED anatomy -> gate -> residual motion -> decoded 4D subject
(-> the requested vendor's scanner noise, with `image_noise`).

Diffusers-style: models and a scheduler instance go in (its timesteps are set again for every reverse
diffusion), `__call__` is a short loop over a batch of plan rows.
Every random draw of row k comes from generators seeded by that row's seed (and the gate attempt),
so a row's output does not depend on which worker generates it; batches are fixed groups of plan
rows, so resumed runs recompute exactly the same batches.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from factory.data.clinical import ejection_fraction, label_volumes_ml, measure
from factory.data.gate import check_ed_mask
from factory.errors import BundleError, InputError
from factory.models.conditioning import ClinicalNormalizer, diagnosis_ids, vendor_ids
from factory.models.schedulers import sampling_scheduler
from factory.presets import Preset
from factory.record import Subject, centred_slice_mask, cycle_phase
from factory.sample.image_noise import add_vendor_noise, parse_image_noise
from factory.sample.keyframes import interpolate, keyframes
from factory.sample.tolerance import Bound, parse_tolerance, within
from factory.vocabulary import derive_seed

MOTION_VOLUMES = ("requested", "anatomy")  # SamplerSettings.motion_volumes
MOTION_STREAM = 1_000_003  # seed-sequence key of the per-subject motion noise (distinct from gate attempts)


@dataclass(frozen=True)
class SamplerSettings:
    """How to sample: scheduler name (factory.models.schedulers.SAMPLERS), steps and guidance scale per stage,
    gate bound, frames per UNet call."""

    # UniPC at 10 steps: the r, myocardial volume CV and frame-to-frame Dice of DDIM-30 at a third of the UNet
    # evaluations; 8 motion keyframes keep them again at a third of the rest (benchmarks/sampling.py, README
    # "Status"); guidance 1 on the motion LDM lost the ESV / EF r.
    scheduler: str = "unipc"
    steps: int = 10  # anatomy LDM
    motion_steps: int | None = None  # motion LDM; None: `steps`
    guidance: float = 3.0  # anatomy LDM
    motion_guidance: float = 3.0  # motion LDM
    max_gate_attempts: int = 4  # also bounds the anatomy resampling of an EDV tolerance
    tolerance: str = ""  # e.g. "ef=5,edv=10%" (factory.sample.tolerance); "" = none
    max_motion_attempts: int = 4  # bound of the motion resampling of an ESV / EF tolerance
    frames_per_call: int = 64
    motion_keyframes: int = 8  # frames per cycle the motion LDM denoises (factory.sample.keyframes); 0: all
    image_noise: str = ""  # per-vendor noise levels added to decoded images, "B=0.0170,C=0.0421"; "" = none
    # The volumes the motion LDM is conditioned on: "requested" (the row's EDV and ESV) or "anatomy" (the EDV
    # measured on the sampled ED anatomy and the ESV that gives the row's EF with it: EF is what is asked for,
    # and the motion then animates the heart it was given rather than the one that was requested). "anatomy"
    # on the demo bundle: EF MAE 12.2 vs 12.3, r 0.877 vs 0.902, ES on time 97 vs 93 % (README): not the default.
    motion_volumes: str = "requested"

    def __post_init__(self) -> None:
        if self.motion_volumes not in MOTION_VOLUMES:
            raise InputError(f"motion volumes {self.motion_volumes!r}: choose one of {list(MOTION_VOLUMES)}")
        if self.motion_keyframes == 1 or self.motion_keyframes < 0:
            raise InputError(f"motion keyframes {self.motion_keyframes}: give 0 (every frame) or at least 2"
                             " (ES and the last frame)")
        parse_image_noise(self.image_noise)  # refuses a malformed setting here

    @property
    def motion_denoising_steps(self) -> int:
        """Denoising steps of the motion LDM."""
        return self.motion_steps or self.steps


@dataclass
class Generated:
    """One generated subject and its metadata-table row (requested and measured values)."""

    subject: Subject
    row: dict


def row_generator(seed: int, stream: int, device: torch.device) -> torch.Generator:
    """A torch generator for one (row seed, stream) pair: gate attempt k uses stream k."""
    return torch.Generator(device=device).manual_seed(derive_seed(seed, stream))


class CinePipeline:
    """Anatomy LDM + motion LDM + dual-decoder VAE of one bundle, ready to sample plan rows (without an anatomy
    LDM, ready to animate real subjects only)."""

    def __init__(self, vae: torch.nn.Module, anatomy: torch.nn.Module | None, motion: torch.nn.Module, preset: Preset,
                 latent_scale: float, residual_scale: float, normalizer: ClinicalNormalizer,
                 mass_fit: dict[str, list[float]], settings: SamplerSettings = SamplerSettings(),
                 device: str | torch.device = "cpu", vendors: list[str] | None = None,
                 scheduler: SchedulerMixin | None = None):
        self.device = torch.device(device)
        # One diffusers scheduler for both stages (None: the one settings.scheduler names, built once here);
        # `denoise` sets its timesteps before every reverse diffusion.
        self.scheduler = scheduler or sampling_scheduler(preset.diffusion, settings.scheduler, settings.steps)
        self.vae, self.anatomy, self.motion = (m if m is None else m.to(self.device).eval()
                                               for m in (vae, anatomy, motion))
        self.preset, self.settings = preset, settings
        self.latent_scale, self.residual_scale = latent_scale, residual_scale
        self.normalizer, self.mass_fit = normalizer, mass_fit
        self.vendors = list(vendors or [])  # the vendor token's vocabulary (empty: the bundle has none)
        self.spacing = preset.geometry.spacing_mm

    @property
    def bounds(self) -> dict[str, Bound]:
        """The tolerance of the settings, parsed (empty: no tolerance)."""
        return parse_tolerance(self.settings.tolerance)

    @classmethod
    def from_bundle(cls, bundle, settings: SamplerSettings = SamplerSettings(), device: str | torch.device = "cpu",
                    scheduler: SchedulerMixin | None = None) -> CinePipeline:
        """Build from a loaded model bundle (factory.load_bundle)."""
        return cls(bundle.models["vae"], bundle.models.get("anatomy"), bundle.models["motion"], bundle.preset,
                   bundle.latent_scale, bundle.residual_scale, bundle.normalizer(), bundle.config["myo_mass_fit"],
                   settings, device, bundle.vendors, scheduler)

    @torch.no_grad()
    def __call__(self, rows: pd.DataFrame, sources: tuple[np.ndarray, np.ndarray] | None = None) -> list[Generated]:
        """Generate one subject per plan row (columns of factory.sample.plan.PLAN_COLUMNS).

        `sources`: the real ED images and masks (B, Z, H, W) of the rows' source subjects, to animate
        them instead of sampling anatomies (the ED latent is the VAE's encoding, frame 0 keeps the mask).
        """
        rows = rows.reset_index(drop=True)
        cond = self.conditions(rows)
        if sources is None:
            z_ed, attempts, reasons, edv = self.sample_anatomy(rows, cond)
            ed_masks = [None] * len(rows)
        else:
            z_ed, edv, ed_masks = self.encode_sources(*sources, cond)
            attempts, reasons = np.zeros(len(rows), int), [[] for _ in range(len(rows))]
        if self.settings.motion_volumes == "anatomy":
            cond = self.conditions(rows, edv)
        residuals, motion_attempts = self.sample_motion_within(rows, cond, z_ed, edv)
        return [self.assemble(row, z_ed[i], residuals[i], int(attempts[i]), reasons[i], int(motion_attempts[i]),
                              ed_masks[i]) for i, row in enumerate(rows.itertuples(index=False))]

    def encode_sources(self, images: np.ndarray, masks: np.ndarray, cond: dict[str, torch.Tensor],
                       ) -> tuple[torch.Tensor, np.ndarray, list[np.ndarray]]:
        """ED latents (posterior means), LV volumes and masks (padding slices cleared) of real ED frames."""
        x = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))[:, None].to(self.device)
        z_ed = self.vae.encode(x)[0].float()
        slice_masks = cond["slice_mask"].cpu().numpy()
        masks = [m * sm[:, None, None] for m, sm in zip(np.asarray(masks, np.uint8), slice_masks)]
        return z_ed, np.array([self.lv_volume(m, sm) for m, sm in zip(masks, slice_masks)]), masks

    def conditions(self, rows: pd.DataFrame, edv: np.ndarray | None = None) -> dict[str, torch.Tensor]:
        """Diagnosis ids, normalised clinical scalars, vendor ids (the `vendor` column; none: the null id) and slice
        masks of a batch of rows; with `edv` (measured on the ED anatomies), the volumes are that EDV and the
        ESV that gives each row's EF with it."""
        table = rows.copy()
        if "myo_mass_g" not in table:  # plans give volumes; the mass follows the cohort's fit on EDV
            fit = np.array([self.mass_fit[d] for d in table["diagnosis"]])
            table["myo_mass_g"] = fit[:, 0] * table["edv_ml"] + fit[:, 1]
        if edv is not None:
            table["edv_ml"] = edv
            table["esv_ml"] = edv * (1 - table["ef_pct"].to_numpy(float) / 100)
        z = self.preset.geometry.n_slices
        return {
            "diagnosis": diagnosis_ids(list(table["diagnosis"])).to(self.device),
            "scalars": self.normalizer.transform(table).to(self.device),
            "vendor": vendor_ids(list(table.get("vendor", [""] * len(table))), self.vendors).to(self.device),
            "slice_mask": torch.from_numpy(np.stack([centred_slice_mask(int(n), z) for n in table["n_slices"]]))
                          .to(self.device),
        }

    @torch.no_grad()
    def denoise(self, model: Callable[..., torch.Tensor], noise: torch.Tensor, cond: dict[str, torch.Tensor],
                guidance: float, steps: int, **extra: torch.Tensor) -> torch.Tensor:
        """Reverse diffusion in `steps` steps with classifier-free guidance: conditional and null branch in one
        batch, or the conditional branch alone at guidance 1 (where the null branch cancels out)."""
        scheduler = self.scheduler
        scheduler.set_timesteps(steps)  # also resets a multistep solver's history
        branches = 1 if guidance == 1 else 2
        batch = noise.shape[0]
        drop = torch.arange(branches * batch, device=self.device) >= batch
        inputs = {k: v.repeat(branches, *([1] * (v.ndim - 1))) for k, v in {**cond, **extra}.items()}
        x = noise * scheduler.init_noise_sigma
        for t in scheduler.timesteps:
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.device.type == "cuda"):
                out = model(scheduler.scale_model_input(x.repeat(branches, *([1] * (x.ndim - 1))), t), t,
                            inputs["slice_mask"], inputs["diagnosis"], inputs["scalars"], drop,
                            vendor=inputs["vendor"], drop_vendor=drop, **{k: inputs[k] for k in extra}).float()
            if branches == 2:
                conditional, null = out.chunk(2)
                out = null + guidance * (conditional - null)
            x = scheduler.step(out, t, x).prev_sample
        return x

    def noise(self, seeds: list[int], stream: int) -> torch.Tensor:
        """One latent-shaped standard normal draw per seed."""
        shape = self.preset.latent_shape
        return torch.stack([torch.randn(shape, generator=row_generator(s, stream, torch.device("cpu")))
                            for s in seeds]).to(self.device)

    @torch.no_grad()
    def decode_masks(self, z: torch.Tensor) -> np.ndarray:
        return self.vae.decode_mask_logits(z).argmax(1).to(torch.uint8).cpu().numpy()

    def sample_anatomy(self, rows: pd.DataFrame, cond: dict[str, torch.Tensor]):
        """ED latents that pass the anatomical gate (and an EDV tolerance); failing rows are resampled with
        new seeds, bounded.

        Returns the latents, the attempts per row, per row the gate's reasons for rejecting its last
        attempt (an empty list when the row passed), and the LV volume of each ED mask.
        """
        if self.anatomy is None:
            raise BundleError("the bundle has no anatomy stage: it can only animate real subjects (--from)")
        n = len(rows)
        z_ed = torch.zeros((n, *self.preset.latent_shape), device=self.device)
        attempts = np.zeros(n, int)
        reasons: list[list[str]] = [[] for _ in range(n)]
        edv = np.zeros(n)
        pending = np.arange(n)
        slice_masks = cond["slice_mask"].cpu().numpy()
        for attempt in range(self.settings.max_gate_attempts):
            sub = {k: v[pending] for k, v in cond.items()}
            x = self.denoise(self.anatomy, self.noise(list(rows["seed"].iloc[pending]), attempt), sub,
                             self.settings.guidance, self.settings.steps)
            z = x / self.latent_scale
            masks = self.decode_masks(z)
            z_ed[pending] = z
            attempts[pending] = attempt + 1
            for m, i in zip(masks, pending):
                reasons[i] = check_ed_mask(m, self.spacing, slice_masks[i]).reasons
                edv[i] = self.lv_volume(m, slice_masks[i])
            pending = np.array([i for i in pending if reasons[i] or not within(
                self.bounds, {"edv_ml": rows["edv_ml"].iloc[i]}, {"edv_ml": edv[i]}, ("edv",))], int)
            if not len(pending):
                break
        return z_ed, attempts, reasons, edv

    def lv_volume(self, mask: np.ndarray, slice_mask: np.ndarray) -> float:
        """LV volume (ml) of one decoded 3D mask, padding slices excluded as in the stored subject."""
        return float(label_volumes_ml(mask * slice_mask[:, None, None], self.spacing)["lv"])

    def sample_motion_within(self, rows: pd.DataFrame, cond: dict[str, torch.Tensor], z_ed: torch.Tensor,
                             edv: np.ndarray) -> tuple[list[torch.Tensor], np.ndarray]:
        """Residual latents of every row, the motion of rows whose ESV / EF misses the tolerance resampled
        (a new noise stream per attempt, bounded); returns them and the motion attempts per row."""
        residuals = self.sample_motion(rows, cond, z_ed)
        attempts = np.ones(len(rows), int)
        if not {"esv", "ef"} & set(self.bounds):
            return residuals, attempts
        slice_masks = cond["slice_mask"].cpu().numpy()
        missed = np.arange(len(rows))  # only rows resampled last time are judged again
        for attempt in range(1, self.settings.max_motion_attempts):
            missed = np.array([i for i in missed if not self.motion_within(
                rows.iloc[i], z_ed[i], residuals[i], edv[i], slice_masks[i])], int)
            if not len(missed):
                break
            again = self.sample_motion(rows.iloc[missed], {k: v[missed] for k, v in cond.items()}, z_ed[missed],
                                       attempt)
            for i, residual in zip(missed, again):
                residuals[i], attempts[i] = residual, attempt + 1
        return residuals, attempts

    def motion_within(self, row, z_ed: torch.Tensor, residual: torch.Tensor, edv: float,
                      slice_mask: np.ndarray) -> bool:
        """Whether the ES frame of one row's motion gives an ESV and EF within the tolerance."""
        es = int(row.es_frame)
        esv = self.lv_volume(self.decode_masks((z_ed + residual[es])[None])[0], slice_mask)
        measured = {"edv_ml": edv, "esv_ml": esv, "ef_pct": ejection_fraction(edv, esv)}
        return within(self.bounds, {"esv_ml": row.esv_ml, "ef_pct": row.ef_pct}, measured, ("esv", "ef"))

    def sample_motion(self, rows: pd.DataFrame, cond: dict[str, torch.Tensor],
                      z_ed: torch.Tensor, attempt: int = 0) -> list[torch.Tensor]:
        """Residual latents r_t for every frame of every row; frame 0 is ED (r_0 = 0).

        All (subject, keyframe) pairs are denoised together in calls of `frames_per_call`; frames of one
        subject share one initial noise, which keeps the sequence coherent. Frames that are not keyframes
        (`motion_keyframes`; 0: every frame is one) are interpolated in phase between them.
        """
        records = list(rows.itertuples(index=False))
        phases = [cycle_phase(int(r.frames), int(r.es_frame)) for r in records]
        keys = [keyframes(p, int(r.es_frame), self.settings.motion_keyframes) for p, r in zip(phases, records)]
        pairs = [(i, t) for i, frames in enumerate(keys) for t in frames]
        shared = self.noise(list(rows["seed"]), MOTION_STREAM + attempt)
        residuals = [torch.zeros((len(p), *self.preset.latent_shape), device=self.device) for p in phases]
        step = self.settings.frames_per_call
        for start in range(0, len(pairs), step):
            chunk = pairs[start:start + step]
            who = torch.tensor([i for i, _ in chunk], device=self.device)
            phase = torch.tensor([phases[i][t] for i, t in chunk], device=self.device)
            sub = {k: v[who] for k, v in cond.items()}
            r = self.denoise(self.motion, shared[who], sub, self.settings.motion_guidance,
                             self.settings.motion_denoising_steps, z_ed=z_ed[who] * self.latent_scale, phase=phase)
            for (i, t), r_t in zip(chunk, r):
                residuals[i][t] = r_t / self.residual_scale
        return [interpolate(r, p, k) for r, p, k in zip(residuals, phases, keys)]

    @torch.no_grad()
    def assemble(self, row, z_ed: torch.Tensor, residual: torch.Tensor, attempts: int,
                 gate_reasons: list[str], motion_attempts: int = 1, ed_mask: np.ndarray | None = None) -> Generated:
        """Decode every frame (z_t = z_ED + r_t), measure the masks, build the subject and its row; `ed_mask`
        (an animated real subject's) replaces the decoded mask of frame 0."""
        z = z_ed[None] + residual
        images, masks = [], []
        for start in range(0, len(z), self.settings.frames_per_call):
            part = z[start:start + self.settings.frames_per_call]
            images.append(self.vae.decode_image(part)[:, 0].float().cpu().numpy())
            masks.append(self.decode_masks(part))
        image, mask = np.concatenate(images), np.concatenate(masks)
        if ed_mask is not None:
            mask[0] = ed_mask
        vendor = getattr(row, "vendor", "") or ""
        if self.settings.image_noise:
            image = add_vendor_noise(image, parse_image_noise(self.settings.image_noise), vendor, int(row.seed))
        slice_mask = centred_slice_mask(int(row.n_slices), self.preset.geometry.n_slices)
        image[:, ~slice_mask] = -1.0  # padding slices, exactly as preprocessing pads real stacks
        mask[:, ~slice_mask] = 0
        measured = measure(mask, self.spacing, int(row.es_frame))
        lv_curve = label_volumes_ml(mask, self.spacing)["lv"]
        subject = Subject(f"syn{int(row.plan_row):06d}", image.astype(np.float32), mask,
                          np.ones(len(mask), bool), self.spacing, int(row.es_frame), slice_mask=slice_mask)
        table_row = {
            "source": "synthetic", "vendor": vendor or "synthetic", "diagnosis": row.diagnosis,
            **measured, "lv_min_frame": int(np.argmin(lv_curve)),
            "plan_row": int(row.plan_row), "seed": int(row.seed),
            "requested_edv_ml": float(row.edv_ml), "requested_esv_ml": float(row.esv_ml),
            "requested_ef_pct": float(row.ef_pct), "requested_n_slices": int(row.n_slices),
            "requested_vendor": vendor or None, "source_subject": getattr(row, "source_subject", "") or None,
            "gate_attempts": attempts, "status": "gate_failed" if gate_reasons else "ok",
            "gate_reasons": "; ".join(gate_reasons),
        }
        if self.bounds:  # judged on the values measured on the stored masks
            requested = {"edv_ml": row.edv_ml, "esv_ml": row.esv_ml, "ef_pct": row.ef_pct}
            table_row |= {"motion_attempts": motion_attempts,
                          "within_tolerance": within(self.bounds, requested, measured)}
        return Generated(subject, table_row)
