"""What one stage's training run is told: a flat, JSON-able config, its defaults from the preset's recipe."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from factory.presets import get_recipe
from factory.vocabulary import STAGES

@dataclass
class StageConfig:
    """Everything a stage's worker loop reads; passed to Ray Train as `train_loop_config`."""

    stage: str
    preset: str
    cohort: str  # cohort store URL
    bundle: str  # bundle directory (frozen earlier stages are read from it)
    work: str  # working directory: metrics logs, the latent store
    steps: int
    batch_size: int
    lr: float
    loss: dict[str, float] = field(default_factory=dict)  # loss weights (presets.VAELoss, TeacherLoss as dicts)
    checkpoint_every: int = 250
    log_every: int = 25
    seed: int = 0
    val_fraction: float = 0.1
    grad_clip: float = 1.0
    warmup: float = 0.03  # fraction of the steps with a linear learning-rate warm-up (cosine decay after it)
    lr_floor: float = 0.1  # final learning rate as a fraction of `lr`
    ema_decay: float = 0.999
    cond_drop: float = 0.1  # condition dropout of the diffusion models (classifier-free guidance)
    fail_at_step: int | None = None  # test hook: the last rank raises once at this step of a fresh run

    @property
    def latents(self) -> str:
        """URL of the pre-encoded latent store the diffusion stages read."""
        return str(Path(self.work) / "latents.zarr")

    @property
    def log_dir(self) -> Path:
        return Path(self.work) / "logs"

    def to_dict(self) -> dict:
        return asdict(self)


def stage_config(stage: str, preset: str, *, cohort: str, bundle: str, work: str, steps: int | None = None,
                 batch_size: int | None = None, **overrides) -> StageConfig:
    """A stage's config: the preset's recipe, then any explicit value; an unknown preset is an InputError."""
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; choose from {', '.join(STAGES)}")
    recipe = get_recipe(preset)[stage]
    base = {"steps": recipe.steps, "batch_size": recipe.batch_size, "lr": recipe.lr,
            "loss": asdict(recipe.loss) if recipe.loss else {}}
    explicit = {k: v for k, v in {"steps": steps, "batch_size": batch_size, **overrides}.items() if v is not None}
    return StageConfig(stage=stage, preset=preset, cohort=cohort, bundle=bundle, work=work, **base | explicit)
