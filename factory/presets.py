"""Geometry and model-size presets: the one place that says how big everything is.

`tiny` trains on 2 CPU cores; `paper` follows the sizes of the paper's public code (needs a GPU).
Every other module reads its sizes from a `Preset` rather than hard-coding them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from factory.errors import InputError
from factory.vocabulary import N_LABELS


@dataclass(frozen=True)
class Geometry:
    """Canonical frame geometry: array axes (Z, H, W) and voxel spacing in mm in the same order."""

    shape: tuple[int, int, int]  # (Z, H, W): slices, rows, columns
    spacing_mm: tuple[float, float, float]  # (z, y, x)

    @property
    def n_slices(self) -> int:
        return self.shape[0]

    @property
    def voxel_ml(self) -> float:
        """Volume of one voxel in millilitres (1 ml = 1000 mm^3)."""
        z, y, x = self.spacing_mm
        return z * y * x / 1000.0


@dataclass(frozen=True)
class VAEConfig:
    """Dual-decoder VAE: channel widths per level; in-plane downsampling between levels only."""

    channels: tuple[int, ...]
    latent_channels: int
    num_res_blocks: int = 1
    # In-plane downsampling factor f: latent is (C, Z, H/f, W/f). Must be 2 ** (len(channels) - 1)
    # or larger (extra stride-2 stages at the widest level).
    downsample: int = 4
    num_classes: int = N_LABELS


@dataclass(frozen=True)
class UNetConfig:
    """A 3D diffusion UNet (MONAI DiffusionModelUNet) over latents."""

    channels: tuple[int, ...]
    attention_levels: tuple[bool, ...]
    num_res_blocks: int = 1
    num_head_channels: int = 32
    norm_num_groups: int = 16


@dataclass(frozen=True)
class DiffusionConfig:
    """Noise schedule shared by training and sampling (diffusers scheduler arguments)."""

    num_train_timesteps: int = 1000
    beta_schedule: str = "scaled_linear"
    beta_start: float = 0.0015
    beta_end: float = 0.0205
    prediction_type: str = "v_prediction"  # bounded x0 error at the terminal timestep, unlike epsilon
    sample_steps: int = 15


@dataclass(frozen=True)
class Preset:
    """Everything size-related for one configuration of the cascade."""

    name: str
    geometry: Geometry
    max_frames: int
    vae: VAEConfig
    teacher_channels: tuple[int, ...]
    anatomy_unet: UNetConfig
    motion_unet: UNetConfig
    context_dim: int
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)

    @property
    def latent_shape(self) -> tuple[int, int, int, int]:
        """(C, Z, H/f, W/f) of one encoded frame."""
        z, h, w = self.geometry.shape
        f = self.vae.downsample
        return (self.vae.latent_channels, z, h // f, w // f)

    def to_dict(self) -> dict:
        return asdict(self)


PRESETS: dict[str, Preset] = {
    "tiny": Preset(
        name="tiny",
        geometry=Geometry(shape=(12, 64, 64), spacing_mm=(10.0, 2.5, 2.5)),
        max_frames=35,
        vae=VAEConfig(channels=(16, 32, 64), latent_channels=4, downsample=4),
        teacher_channels=(32, 64),
        # (16, 32, 64) rather than (32, 64, 64): half the CPU time per step (0.16 vs 0.33 s at batch 8,
        # 2 cores), spent instead on more steps within the hour.
        anatomy_unet=UNetConfig(channels=(16, 32, 64), attention_levels=(False, False, True),
                                num_head_channels=32, norm_num_groups=8),
        motion_unet=UNetConfig(channels=(16, 32, 64), attention_levels=(False, False, True),
                               num_head_channels=32, norm_num_groups=8),
        context_dim=64,
    ),
    "paper": Preset(
        name="paper",
        geometry=Geometry(shape=(16, 192, 192), spacing_mm=(10.0, 1.0, 1.0)),
        max_frames=35,
        vae=VAEConfig(channels=(32, 64, 128), latent_channels=8, num_res_blocks=2, downsample=8),
        teacher_channels=(64, 128, 256),
        anatomy_unet=UNetConfig(channels=(256, 512, 1024), attention_levels=(False, True, True),
                                num_res_blocks=2, num_head_channels=64, norm_num_groups=32),
        motion_unet=UNetConfig(channels=(128, 256, 512), attention_levels=(False, True, True),
                               num_res_blocks=2, num_head_channels=64, norm_num_groups=32),
        context_dim=256,
    ),
}


def get_preset(name: str) -> Preset:
    """Return the named preset or fail with the list of valid names."""
    try:
        return PRESETS[name]
    except KeyError:
        raise InputError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}") from None


# -- training recipes: how each stage of the cascade trains under a preset --------------------------------
@dataclass(frozen=True)
class VAELoss:
    """Weights of the VAE objective L1(image) + seg * Dice+CE(labeled masks) + w_KL * KL, where w_KL ramps
    linearly from 0 to `kl` over the first `kl_warmup` of the run."""

    seg: float = 5.0  # Dice+CE on labeled frames is weighted heavily against the image L1
    kl: float = 1e-6  # tiny: the latent stays close to deterministic, the scale factor normalises it
    kl_warmup: float = 0.5


@dataclass(frozen=True)
class TeacherLoss:
    """Weights of the teacher objective L1(decoded image) + seg * Dice+CE(decoded labeled masks)
    + latent * |z_ED + r_t - z_t| + identity * |r(z_ED, z_ED)| + magnitude * mean(r_t^2)."""

    seg: float = 5.0
    latent: float = 1.0
    identity: float = 1.0
    magnitude: float = 1e-3


@dataclass(frozen=True)
class DiffusionLoss:
    """Weights of an LDM objective MSE(denoiser output, v) + volume * alpha_bar_t * |V(x0_hat) - V(x0)| / 100 ml:
    the LV and myocardial volumes the frozen VAE's segmentation decoder reads off the clean latent the output
    implies, against those of the training latent, weighted by the signal fraction (noisy steps imply blurry
    latents), on the `volume_samples` least noisy samples of each batch. It puts the sizes the user asks for
    into the denoiser's objective directly."""

    volume: float = 0.0
    volume_samples: int = 2


@dataclass(frozen=True)
class StageRecipe:
    """One stage's training under a preset: steps, per-worker batch size, peak learning rate and loss weights."""

    steps: int
    batch_size: int
    lr: float
    loss: VAELoss | TeacherLoss | DiffusionLoss | None = None


VOLUME_WEIGHT = 0.1  # DiffusionLoss.volume of both LDMs: a 10 ml error at a clean step weighs 0.01, the MSE ~0.1-0.3

# Per preset and stage. The tiny numbers are the shipped demo bundle's recipe, sized for `--stage all --workers 2`
# on a ~150-subject phantom cohort on 2 CPU cores to finish within an hour: 55 min there on 2026-12-02 (VAE ~0.9
# steps/s, teacher ~0.75, anatomy LDM ~1.65, motion LDM ~1.9; README "The demo bundle"). The paper numbers are a
# starting point for a GPU. A recipe is not part of the preset definition a bundle is checked against:
# bundle.json records it per stage instead.
RECIPES: dict[str, dict[str, StageRecipe]] = {
    "tiny": {
        "vae": StageRecipe(steps=1000, batch_size=4, lr=1e-3, loss=VAELoss()),
        "teacher": StageRecipe(steps=120, batch_size=4, lr=1e-3, loss=TeacherLoss()),
        "anatomy": StageRecipe(steps=2400, batch_size=8, lr=5e-4, loss=DiffusionLoss(volume=VOLUME_WEIGHT)),
        "motion": StageRecipe(steps=600, batch_size=8, lr=5e-4, loss=DiffusionLoss(volume=VOLUME_WEIGHT)),
    },
    "paper": {
        "vae": StageRecipe(steps=100_000, batch_size=4, lr=1e-4, loss=VAELoss()),
        "teacher": StageRecipe(steps=30_000, batch_size=4, lr=1e-4, loss=TeacherLoss()),
        "anatomy": StageRecipe(steps=200_000, batch_size=8, lr=1e-4, loss=DiffusionLoss(volume=VOLUME_WEIGHT)),
        "motion": StageRecipe(steps=200_000, batch_size=8, lr=1e-4, loss=DiffusionLoss(volume=VOLUME_WEIGHT)),
    },
}


def get_recipe(name: str) -> dict[str, StageRecipe]:
    """The named preset's training recipe (stage -> StageRecipe); an unknown preset is an InputError."""
    return RECIPES[get_preset(name).name]
