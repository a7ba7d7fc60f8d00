"""Reading, verifying and writing model bundles (`factory.bundle` re-exports the public names).

bundle.json records the format version, the preset (name and full definition; a stage loads only
while the parts of the preset its weights depend on are unchanged in the code), geometry, latent
shape, the latent and residual scale factors, the clinical normaliser, the diagnosis vocabulary,
the fingerprint of the training cohort, the code version and, per stage present, its weights file,
checksum, training steps and metrics. Generation needs nothing else. Weights are only ever read
as safetensors: nothing in a bundle is unpickled.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from factory.errors import BundleError
from factory.presets import PRESETS, Preset
from factory.version import code_version
from factory.vocabulary import DIAGNOSES, STAGES

BUNDLE_FILE = "bundle.json"
FORMAT_VERSION = 1
PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".pkl")
# The parts of a preset that a stage's weights depend on (sampling settings such as steps or guidance don't).
_SCHEDULE = tuple(f"diffusion.{key}" for key in
                  ("num_train_timesteps", "beta_schedule", "beta_start", "beta_end", "prediction_type"))
PRESET_FIELDS: dict[str, tuple[str, ...]] = {
    "vae": ("geometry", "vae"),
    "teacher": ("geometry", "vae", "teacher_channels"),
    "anatomy": ("geometry", "vae", "anatomy_unet", "context_dim", *_SCHEDULE),
    "motion": ("geometry", "vae", "motion_unet", "context_dim", *_SCHEDULE),
}


@dataclass
class Bundle:
    """A loaded bundle: its config and the models of the stages present (eval mode)."""

    path: Path
    config: dict
    preset: Preset
    models: dict[str, nn.Module] = field(default_factory=dict)

    @property
    def stages(self) -> list[str]:
        return [s for s in STAGES if s in self.config["stages"]]

    @property
    def latent_scale(self) -> float:
        return self.config["latent_scale"]

    @property
    def residual_scale(self) -> float:
        return self.config["residual_scale"]

    @property
    def diagnoses(self) -> list[str]:
        return self.config["diagnoses"]

    @property
    def vendors(self) -> list[str]:
        """The vendor vocabulary of the LDMs' vendor token (empty: a bundle without one)."""
        return vendor_vocabulary_of(self.config)

    def normalizer(self):  # -> ClinicalNormalizer (imported lazily: keeps `import factory.bundle` free of the models)
        """The clinical normaliser fitted on the training cohort."""
        from factory.models.conditioning import ClinicalNormalizer

        if self.config.get("clinical_normalizer") is None:
            raise BundleError(f"{self.path / BUNDLE_FILE}: has no clinical normaliser (no diffusion stage trained)")
        return ClinicalNormalizer.from_dict(self.config["clinical_normalizer"])

    def require(self, *stages: str) -> None:
        """Fail clearly unless every stage in `stages` is present."""
        missing = [s for s in stages if s not in self.models]
        if missing:
            raise BundleError(f"{self.path}: bundle lacks stage(s) {missing} (it has {self.stages});"
                              f" train them with jobs/train.py --stage ... --out {self.path}")

    def __getattr__(self, name: str) -> nn.Module:
        """`bundle.vae`, `bundle.teacher`, ...: the model of a stage present in the bundle."""
        if name in STAGES:
            self.require(name)
            return self.models[name]
        raise AttributeError(name)


# -- reading -----------------------------------------------------------------------------------------
def vendor_vocabulary_of(config: dict) -> list[str]:
    """bundle.json's vendor vocabulary (bundles trained before the vendor token have none)."""
    return list(config.get("vendors") or [])


def read_config(path: Path | str) -> dict:
    """bundle.json of a bundle directory, checked against this code's presets and format."""
    path = Path(path)
    config_path = path / BUNDLE_FILE
    if not path.is_dir():
        raise BundleError(f"{path}: no such bundle directory")
    if not config_path.is_file():
        raise BundleError(f"{config_path}: missing; {path} is not a model bundle")
    try:
        config = json.loads(config_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise BundleError(f"{config_path}: not valid JSON ({err})") from None
    if config.get("format_version") != FORMAT_VERSION:
        raise BundleError(f"{config_path}: format_version {config.get('format_version')!r},"
                          f" this code reads version {FORMAT_VERSION}")
    name = config.get("preset")
    if name not in PRESETS:
        raise BundleError(f"{config_path}: unknown preset {name!r}; this code knows {sorted(PRESETS)}")
    if config.get("diagnoses") != list(DIAGNOSES):
        raise BundleError(f"{config_path}: diagnosis vocabulary {config.get('diagnoses')!r} differs from this"
                          f" code's {list(DIAGNOSES)} (the models' diagnosis embeddings would be misread)")
    vendors = config.get("vendors") or []
    if not (isinstance(vendors, list) and all(isinstance(v, str) and v for v in vendors)
            and len(set(vendors)) == len(vendors)):
        raise BundleError(f"{config_path}: vendor vocabulary {vendors!r} is not a list of distinct vendor names")
    stored, current = config.get("preset_config", {}), PRESETS[name].to_dict()
    for stage in config.get("stages", {}):
        differences = [d for key in PRESET_FIELDS.get(stage, ())
                       for d in diff_dicts(lookup(stored, key), lookup(current, key), f"{key}.")]
        if differences:
            raise BundleError(f"{config_path}: stage {stage!r} was trained with a different definition of preset"
                              f" {name!r} ({'; '.join(differences[:3])})")
    return config


def lookup(document: dict, dotted: str) -> Any:
    """`document["a"]["b"]` for "a.b" (None where absent)."""
    for key in dotted.split("."):
        document = document.get(key) if isinstance(document, dict) else None
    return document


def diff_dicts(stored: Any, current: Any, prefix: str = "") -> list[str]:
    """Human-readable differences `key: stored vs current` between two JSON-like values."""
    if isinstance(stored, dict) and isinstance(current, dict):
        return [d for key in sorted(set(stored) | set(current))
                for d in diff_dicts(stored.get(key), current.get(key), f"{prefix}{key}.")]
    if json.dumps(stored) != json.dumps(current):
        return [f"{prefix.rstrip('.')}: bundle has {json.dumps(stored)}, code has {json.dumps(current)}"]
    return []


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_weights(path: Path, stage: str, expected_sha256: str | None) -> dict[str, torch.Tensor]:
    """A stage's tensors from its safetensors file; clear errors for missing, pickled or corrupt files."""
    if not path.is_file():
        pickled = [p.name for p in path.parent.glob(f"{stage}.*") if p.suffix in PICKLE_SUFFIXES]
        hint = (f"; found {pickled}, but pickled weights are never loaded (convert them to safetensors)"
                if pickled else "")
        raise BundleError(f"{path}: missing (bundle.json lists stage {stage!r}){hint}")
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise BundleError(f"{path}: not a readable safetensors file ({err}); pickled or corrupt weights"
                          " are never loaded") from None
    if expected_sha256 and sha256_file(path) != expected_sha256:
        raise BundleError(f"{path}: checksum differs from bundle.json (file replaced or corrupt)")
    return tensors


def check_state_dict(module: nn.Module, tensors: dict[str, torch.Tensor], path: Path, preset: str) -> None:
    """Fail unless `tensors` has exactly the module's keys and shapes."""
    expected = module.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    wrong = [f"{k} {tuple(tensors[k].shape)} (preset {preset!r} needs {tuple(v.shape)})"
             for k, v in expected.items() if k in tensors and tensors[k].shape != v.shape]
    if missing or unexpected or wrong:
        parts = [f"missing tensors {missing[:3]}" if missing else "",
                 f"unexpected tensors {unexpected[:3]}" if unexpected else "",
                 f"wrong shapes: {', '.join(wrong[:3])}" if wrong else ""]
        raise BundleError(f"{path}: weights do not fit preset {preset!r}: {'; '.join(p for p in parts if p)}")


def stage_weights(path: Path, config: dict, stage: str) -> dict[str, torch.Tensor]:
    """The checked tensors of one stage: safetensors, the checksum bundle.json records, the preset's keys and shapes."""
    from factory.models.build import build_model  # torch/monai models: imported only when loading

    entry = config["stages"][stage]
    weights_path = path / entry.get("file", f"{stage}.safetensors")
    tensors = read_weights(weights_path, stage, entry.get("sha256"))
    with torch.device("meta"):
        check_state_dict(build_model(PRESETS[config["preset"]], stage, len(vendor_vocabulary_of(config))), tensors,
                         weights_path, config["preset"])
    return tensors


def wanted_stages(path: Path, config: dict, stages: tuple[str, ...] | None) -> tuple[str, ...]:
    """`stages`, or every stage bundle.json lists; refuses a stage the bundle was never trained with."""
    wanted = stages if stages is not None else tuple(s for s in STAGES if s in config["stages"])
    absent = [s for s in wanted if s not in config["stages"]]
    if absent:
        raise BundleError(f"{path / BUNDLE_FILE}: stage(s) {absent} were never trained into this bundle")
    return wanted


def verify_bundle(path: Path | str, stages: tuple[str, ...] = STAGES) -> dict:
    """Check a bundle completely without building its models (config, every weight file); returns bundle.json.

    Cheap enough for a job's driver to run before it starts workers that would each load the bundle.
    """
    path = Path(path)
    config = read_config(path)
    for stage in wanted_stages(path, config, stages):
        stage_weights(path, config, stage)
    return config


def load_bundle(path: Path | str, device: str | torch.device = "cpu", stages: tuple[str, ...] | None = None,
                preset: str | None = None) -> Bundle:
    """Load and validate a bundle: the stages listed in bundle.json (or `stages`), models in eval mode.

    `preset`, when given, is the preset the caller expects; a bundle of another preset is refused.
    """
    from factory.models.build import build_model  # torch/monai models: imported only when loading

    path = Path(path)
    config = read_config(path)
    if preset is not None and config["preset"] != preset:
        raise BundleError(f"{path / BUNDLE_FILE}: bundle is for preset {config['preset']!r}, expected {preset!r}")
    preset_obj = PRESETS[config["preset"]]
    models = {}
    for stage in wanted_stages(path, config, stages):
        tensors = stage_weights(path, config, stage)
        with torch.device(device):
            module = build_model(preset_obj, stage, len(vendor_vocabulary_of(config)))
        module.load_state_dict(tensors)
        models[stage] = module.eval()
    return Bundle(path=path, config=config, preset=preset_obj, models=models)


# -- writing -----------------------------------------------------------------------------------------
def training_fingerprint(store: Any) -> dict:
    """Identity of a training cohort: its URL, size and the checksum of its metadata table."""
    return {"store": store.url, "n_subjects": store.n_subjects,
            "table_sha256": (store.manifest or {}).get("table", {}).get("sha256")}


def write_json_atomic(path: Path, document: dict) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(document, indent=1, sort_keys=False) + "\n")
    os.replace(tmp, path)


def start_bundle(path: Path | str, preset: Preset, fingerprint: dict) -> dict:
    """Create bundle.json (no stages yet), or check that an existing one matches preset and cohort."""
    path = Path(path)
    if (path / BUNDLE_FILE).exists():
        config = read_config(path)
        if config["preset"] != preset.name:
            raise BundleError(f"{path / BUNDLE_FILE}: bundle is for preset {config['preset']!r}, not {preset.name!r};"
                              " use another --out")
        if config["training_data"].get("table_sha256") != fingerprint.get("table_sha256"):
            raise BundleError(f"{path / BUNDLE_FILE}: bundle was trained on another cohort"
                              f" ({config['training_data'].get('store')}); use another --out")
        return config
    path.mkdir(parents=True, exist_ok=True)
    z, h, w = preset.geometry.shape
    config = {
        "format_version": FORMAT_VERSION,
        "preset": preset.name,
        "preset_config": preset.to_dict(),
        "geometry": {"shape_zhw": [z, h, w], "spacing_mm": list(preset.geometry.spacing_mm)},
        "latent_shape": list(preset.latent_shape),
        "latent_scale": None,
        "residual_scale": None,
        "clinical_normalizer": None,
        "diagnoses": list(DIAGNOSES),
        "training_data": fingerprint,
        "code_version": code_version(),
        "stages": {},
    }
    write_json_atomic(path / BUNDLE_FILE, config)
    return config


def update_config(path: Path | str, updates: dict) -> dict:
    """Set top-level fields of bundle.json (e.g. the clinical normaliser) and return it."""
    path = Path(path)
    config = read_config(path) | updates
    write_json_atomic(path / BUNDLE_FILE, config)
    return config


def add_stage(path: Path | str, stage: str, tensors: dict[str, torch.Tensor], info: dict,
              updates: dict | None = None) -> dict:
    """Write a stage's weights, then record it (and config `updates`, e.g. a scale factor) in bundle.json."""
    path = Path(path)
    config = read_config(path)
    weights = path / f"{stage}.safetensors"
    save_file(tensors, str(weights), metadata={"stage": stage, "preset": config["preset"]})
    stages = {**config["stages"], stage: {"file": weights.name, "sha256": sha256_file(weights), **info}}
    return update_config(path, {**(updates or {}), "code_version": code_version(), "stages": stages,
                                "preset_config": PRESETS[config["preset"]].to_dict()})
