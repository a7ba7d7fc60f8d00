"""Training: every stage on 2 Ray Train workers, checkpoints, resume after a kill, worker-failure recovery,
the bundle it writes, and the bundle loader's refusals (missing weights, wrong preset, pickled weights)."""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr

from factory.bundle import STAGES, add_stage, load_bundle, start_bundle
from factory.errors import BundleError, StoreError
from factory.models.build import build_model
from factory.models.conditioning import ClinicalNormalizer
from factory.presets import PRESETS, get_preset, get_recipe
from factory.train.checkpoint import load_state, save_state
from factory.train.data import augment_ed, clinical_values, split_subjects

from conftest import make_subject
from store_builders import job, write_store

STEPS, CHECKPOINT_EVERY, FAIL_AT = 3, 2, 3  # a failure at step 3 resumes from the checkpoint of step 2


@pytest.fixture(scope="module")
def ray_local():
    """A private local Ray instance (2 CPUs) for this module, shut down afterwards."""
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def trained(tmp_path_factory, ray_local) -> Path:
    """A 6-subject cohort (two of them unlabeled, vendors A and B) trained through every stage, the hard way.

    1. vae, teacher, anatomy: the VAE's last worker raises at step 3; FailureConfig restarts the
       worker group, which resumes from the checkpoint of step 2.
    2. motion: a worker raises at step 3 with no restarts allowed, so the run fails (a killed job).
    3. jobs/train.py --stage all with the same --out: finished stages are kept, motion resumes.
    """
    import ray.train

    from factory.train.runner import TrainOptions, train

    root = tmp_path_factory.mktemp("train")
    cohort = write_store(root / "cohort.zarr", n=6, n_unlabeled=2)
    out = root / "bundle"
    common = {"cohort": cohort, "out": str(out), "steps": STEPS, "batch_size": 2, "checkpoint_every": CHECKPOINT_EVERY}
    train(TrainOptions(**common, stages=("vae", "teacher", "anatomy"), fail_at_step={"vae": FAIL_AT}, max_failures=1))
    with pytest.raises(ray.train.TrainingFailedError):
        train(TrainOptions(**common, stages=("motion",), fail_at_step={"motion": FAIL_AT}, max_failures=0))
    assert "motion" not in json.loads((out / "bundle.json").read_text())["stages"]
    assert job("train").main(["--cohort", cohort, "--out", str(out), "--stage", "all", "--workers", "2",
                      "--steps", str(STEPS), "--batch-size", "2", "--checkpoint-every", str(CHECKPOINT_EVERY)]) == 0
    return out


@pytest.mark.slow
def test_every_stage_trains_into_a_loadable_bundle(trained):
    config = json.loads((trained / "bundle.json").read_text())
    assert list(config["stages"]) == list(STAGES)
    for stage, entry in config["stages"].items():
        assert entry["steps"] == STEPS and entry["workers"] == 2
        assert entry["metrics"] and all(math.isfinite(v) for v in entry["metrics"].values()), (stage, entry)
        runs = trained / "training" / "runs" / stage
        assert (runs / f"{stage}-step{STEPS:07d}" / "state.json").is_file(), sorted(p.name for p in runs.iterdir())
        assert (trained / "training" / "logs" / f"{stage}.jsonl").is_file()
    assert {"dice_LV", "dice_MYO", "dice_RV", "psnr"} <= set(config["stages"]["vae"]["metrics"])
    assert config["latent_scale"] > 0 and config["residual_scale"] > 0
    assert config["clinical_normalizer"]["scalars"][0] == "edv_ml"
    assert config["vendors"] == ["A", "B"] and sum(config["vendor_counts"].values()) == 6
    latents = zarr.open_group(str(trained / "training" / "latents.zarr"), mode="r")
    assert latents["pseudo"][:].tolist() == [False] * 4 + [True] * 2  # the two unlabeled subjects, pseudo-labeled
    train_ids, _ = split_subjects(6, 0.1, 0)
    for stage in ("anatomy", "motion"):  # what each LDM trained on, per kind and vendor (an untrained VAE's pseudo
        seen = config["stages"][stage]["subjects"]  # masks are empty: those subjects train unconditionally)
        assert sum(n for kind in seen.values() for n in kind.values()) == len(train_ids), seen
        assert sum(seen["labeled"].values()) == np.count_nonzero(train_ids < 4), seen
    assert config["stages"]["vae"]["loss_weights"] == asdict(get_recipe("tiny")["vae"].loss)

    import factory

    bundle = factory.load_bundle(trained)
    assert bundle.stages == list(STAGES) and not bundle.vae.training
    frame = torch.zeros(1, 1, *bundle.preset.geometry.shape)
    with torch.no_grad():
        assert tuple(bundle.vae.encode(frame)[0].shape[1:]) == bundle.preset.latent_shape


@pytest.mark.slow
def test_worker_failure_restarts_from_the_last_checkpoint(trained):
    starts = json.loads((trained / "bundle.json").read_text())["stages"]["vae"]["starts"]
    assert starts == [0, CHECKPOINT_EVERY], "the restarted worker group must resume at step 2, not from 0"


@pytest.mark.slow
def test_rerun_resumes_the_killed_stage_and_keeps_finished_ones(trained):
    stages = json.loads((trained / "bundle.json").read_text())["stages"]
    assert stages["motion"]["starts"] == [0, CHECKPOINT_EVERY]
    assert stages["teacher"]["starts"] == [0] and stages["anatomy"]["starts"] == [0]


@pytest.mark.parametrize("state, problem", [({"step": 2, "latent_scale": 1.0}, "latest checkpoint is at step 2"),
                                             ({"step": 3}, "has no latent_scale")])
def test_a_stage_that_cannot_be_finished_from_its_checkpoint_is_refused(tmp_path, state, problem):
    """--steps below a resumed checkpoint, or equal to a longer run's mid-run one (no scale factor yet): one clear
    error naming the bundle, never a KeyError."""
    import ray.train

    from factory.train.config import stage_config
    from factory.train.runner import TrainOptions, export_stage

    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "state.json").write_text(json.dumps({**state, "starts": [0], "metrics": {}}))
    cfg = stage_config("vae", "tiny", cohort="unused.zarr", bundle=str(tmp_path / "bundle"), work=str(tmp_path),
                       steps=3)
    with pytest.raises(BundleError, match=problem) as err:
        export_stage(cfg, ray.train.Checkpoint.from_directory(str(tmp_path / "ckpt")), 1.0,
                     TrainOptions(cohort="unused.zarr", out=str(tmp_path / "bundle")))
    assert str(tmp_path / "bundle") in str(err.value)


# -- checkpoint state and augmentation (no Ray) --------------------------------------------------------
def test_checkpoint_round_trip_restores_optimizer_and_ema(tmp_path):
    from diffusers.training_utils import EMAModel

    def parts(seed: int):
        torch.manual_seed(seed)
        model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.SiLU(), torch.nn.Linear(8, 2))
        return model, torch.optim.AdamW(model.parameters(), lr=1e-2), EMAModel(model.parameters(), decay=0.9)

    model, optimizer, ema = parts(0)
    for _ in range(3):
        optimizer.zero_grad()
        model(torch.randn(5, 4)).pow(2).mean().backward()
        optimizer.step()
        ema.step(model.parameters())
    save_state(tmp_path, step=3, modules={"m": model}, optimizers={"m": optimizer}, emas={"m": ema},
               extra={"starts": [0]})
    assert not list(tmp_path.glob("*.pt")) and not list(tmp_path.glob("*.pkl"))
    model2, optimizer2, ema2 = parts(1)
    state = load_state(tmp_path, modules={"m": model2}, optimizers={"m": optimizer2}, emas={"m": ema2})
    assert state["step"] == 3 and state["starts"] == [0]
    for a, b in zip(model.parameters(), model2.parameters()):
        assert torch.equal(a, b)
    for a, b in zip(ema.shadow_params, ema2.shadow_params):
        assert torch.equal(a, b)
    assert ema2.optimization_step == ema.optimization_step == 3
    s1, s2 = optimizer.state_dict(), optimizer2.state_dict()
    assert s1["param_groups"] == s2["param_groups"]
    for pid in s1["state"]:
        for key, value in s1["state"][pid].items():
            assert torch.equal(value, s2["state"][pid][key])


def test_ed_augmentation_recomputes_clinical_values():
    subject = make_subject(n_frames=3, es_frame=2)
    original = clinical_values(subject.mask[0], subject.mask[2], subject.spacing_mm, subject.slice_mask)
    changed = 0
    for seed in range(4):
        image, mask_ed, mask_es = augment_ed(subject.image[0], subject.mask[0], subject.mask[2],
                                             np.random.default_rng(seed))
        assert image.shape == subject.image[0].shape and image.min() >= -1.0 and mask_ed.max() <= 3
        values = clinical_values(mask_ed, mask_es, subject.spacing_mm, subject.slice_mask)
        lv_voxels = np.count_nonzero(mask_ed == 3)
        assert values["edv_ml"] == pytest.approx(lv_voxels * 10 * 2.5 * 2.5 / 1000)
        assert values["n_slices"] == original["n_slices"]
        changed += not math.isclose(values["edv_ml"], original["edv_ml"])
    assert changed, "random affines should change the measured volumes"
    again = augment_ed(subject.image[0], subject.mask[0], subject.mask[2], np.random.default_rng(3))
    assert all(np.array_equal(a, b) for a, b in zip(again, (image, mask_ed, mask_es))), "seeded by its generator"
    for preset in PRESETS.values():  # the augmentation acts in pixel coordinates
        assert preset.geometry.spacing_mm[1] == preset.geometry.spacing_mm[2], preset.name


def test_the_volume_term_reads_clean_latents_and_hard_masks_exactly():
    from factory.data.clinical import label_volumes_ml
    from factory.models.schedulers import training_scheduler
    from factory.train.objectives import noisy_sample, predicted_x0, soft_volumes_ml

    scheduler = training_scheduler(get_preset("tiny").diffusion)
    x0 = torch.randn(3, 4, 6, 8, 8)
    x_t, t, target = noisy_sample(scheduler, x0, torch.Generator().manual_seed(0))
    torch.testing.assert_close(predicted_x0(scheduler, x_t, t, target), x0, atol=1e-4, rtol=1e-4)
    mask = make_subject(n_frames=3).mask  # (T, Z, H, W): hard masks as very confident logits
    logits = torch.nn.functional.one_hot(torch.from_numpy(mask).long(), 4).permute(0, 4, 1, 2, 3).float() * 50
    slices = torch.ones(3, mask.shape[1], dtype=torch.bool)
    slices[:, 4:] = False
    expected = label_volumes_ml(mask[:, :4], (10.0, 2.5, 2.5))
    volumes = soft_volumes_ml(logits, slices, 10 * 2.5 * 2.5 / 1000)
    np.testing.assert_allclose(volumes.numpy(), np.stack([expected["lv"], expected["myo"]], 1), rtol=1e-5)


class IntensityVAE(torch.nn.Module):
    """A stand-in VAE for the store builders' subjects (image = label / 3 * 2 - 1 + noise): the latent is the image,
    the segmentation decoder reads the label off the intensity."""

    levels = torch.tensor([-1.0, -1 / 3, 1 / 3, 1.0])

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x, torch.zeros_like(x)

    def decode_mask_logits(self, z: torch.Tensor) -> torch.Tensor:
        return -50 * (z - self.levels.view(1, 4, 1, 1, 1)) ** 2


def test_unlabeled_cycles_are_pseudo_labeled_from_the_vaes_masks(tmp_path):
    from factory.train.latents import LatentEncoder, LatentSampler, create_latent_store
    from factory.store.reader import open_store

    cohort = open_store(write_store(tmp_path / "cohort.zarr", n=4, n_unlabeled=2))
    labeled_twin = open_store(write_store(tmp_path / "labeled.zarr", n=4))  # the same subjects, with masks
    preset = get_preset("tiny")
    latents = str(tmp_path / "latents.zarr")
    create_latent_store(latents, preset, 4, int(cohort.attrs["max_frames"]), {"vendors": ["A", "B"]})
    encoder = object.__new__(LatentEncoder)  # the actor's state without loading a bundle
    encoder.vae, encoder.teacher, encoder.device = IntensityVAE(), lambda z_ed, z_t: z_t - z_ed, "cpu"
    encoder.vendors, encoder.voxel_ml, encoder.seed = ["A", "B"], preset.geometry.voxel_ml, 0
    encoder.store, encoder.group = cohort, zarr.open_group(latents, mode="r+")
    with torch.no_grad():
        for i in range(4):
            encoder.encode_subject(i)
    group = zarr.open_group(latents, mode="r")
    assert group["pseudo"][:].tolist() == [False, False, True, True]
    assert group["diagnosis"][2:].tolist() == [5, 5], "an unlabeled subject's diagnosis stays unknown (null id)"
    truth = labeled_twin.table
    for i in (2, 3):  # ES found at the smallest predicted LV, values measured on the predicted masks
        es = int(truth.loc[i, "es_frame"])
        assert group["phase"][i, es] == 100.0
        np.testing.assert_allclose(group["clinical_aug"][i, 0, :3], truth.loc[i, ["edv_ml", "esv_ml", "ef_pct"]],
                                   rtol=1e-3)
    sampler = LatentSampler(latents, np.arange(4), latent_scale=1.0, residual_scale=1.0,
                            normalizer=ClinicalNormalizer().fit(truth))
    assert not sampler.conditions(np.array([2, 3]), np.array([0, 1]))["missing"].any()


# -- stage registry, recipes and what bundle.json records (no Ray cluster) ---------------------------------
def test_every_stage_has_a_loop_a_recipe_and_both_ldms_a_denoiser():
    from factory.train import diffusion, teacher, vae
    from factory.train.runner import LOOPS

    assert LOOPS == {"vae": vae.train_loop, "teacher": teacher.train_loop,
                     "anatomy": diffusion.train_loop, "motion": diffusion.train_loop}
    assert list(LOOPS) == list(STAGES) and set(diffusion.DENOISERS) == {"anatomy", "motion"}
    assert all(list(get_recipe(name)) == list(STAGES) for name in PRESETS)


def test_loss_weights_land_in_bundle_json(tmp_path):
    import ray.train

    from factory.train.config import stage_config
    from factory.train.runner import TrainOptions, export_stage

    preset = get_preset("tiny")
    start_bundle(tmp_path / "bundle", preset, {"store": "test", "n_subjects": 0, "table_sha256": None})
    for stage, loss in [("vae", {"kl": 2e-6}), ("teacher", None)]:
        cfg = stage_config(stage, "tiny", cohort="c.zarr", bundle=str(tmp_path / "bundle"), work=str(tmp_path),
                           steps=1, loss=None if loss is None else asdict(get_recipe("tiny")[stage].loss) | loss)
        directory = tmp_path / f"{stage}-checkpoint"
        save_state(directory, step=1, modules={stage: build_model(preset, stage)},
                   extra={"starts": [0], "metrics": {"loss": 1.0}, "latent_scale": 1.0, "residual_scale": 1.0})
        config = export_stage(cfg, ray.train.Checkpoint.from_directory(str(directory)), 1.0,
                              TrainOptions(cohort="c.zarr", out=str(tmp_path / "bundle")))
    recorded = {stage: entry["loss_weights"] for stage, entry in config["stages"].items()}
    assert recorded == {"vae": {"seg": 5.0, "kl": 2e-6, "kl_warmup": 0.5},
                        "teacher": {"seg": 5.0, "latent": 1.0, "identity": 1.0, "magnitude": 1e-3}}
    assert "loss_weights" not in json.dumps(config["preset_config"])
    assert load_bundle(tmp_path / "bundle").stages == ["vae", "teacher"]


# -- bundle validation (no Ray) ------------------------------------------------------------------------
@pytest.fixture
def bundle_dir(tmp_path) -> Path:
    """A tiny bundle of freshly initialised models (all stages), written with the bundle API."""
    preset = get_preset("tiny")
    path = tmp_path / "bundle"
    start_bundle(path, preset, {"store": "test", "n_subjects": 0, "table_sha256": None})
    for stage in STAGES:
        add_stage(path, stage, build_model(preset, stage).state_dict(), {"steps": 0})
    return path


def edit_config(path: Path, **changes) -> None:
    config = json.loads((path / "bundle.json").read_text())
    (path / "bundle.json").write_text(json.dumps(config | changes))


def test_load_bundle_accepts_a_valid_bundle(bundle_dir):
    bundle = load_bundle(bundle_dir, stages=("vae", "motion"))
    assert set(bundle.models) == {"vae", "motion"} and not bundle.motion.training
    with pytest.raises(BundleError, match="lacks stage"):
        bundle.teacher


def test_missing_bundle_json_or_weights(bundle_dir):
    (bundle_dir / "teacher.safetensors").unlink()
    with pytest.raises(BundleError, match=r"teacher\.safetensors: missing"):
        load_bundle(bundle_dir)
    (bundle_dir / "bundle.json").unlink()
    with pytest.raises(BundleError, match=r"bundle\.json: missing"):
        load_bundle(bundle_dir)


def test_wrong_preset_is_refused(bundle_dir):
    with pytest.raises(BundleError, match="bundle is for preset 'tiny', expected 'paper'"):
        load_bundle(bundle_dir, preset="paper")
    edit_config(bundle_dir, preset="paper")
    with pytest.raises(BundleError, match="different definition of preset 'paper'"):
        load_bundle(bundle_dir)
    edit_config(bundle_dir, preset="huge")
    with pytest.raises(BundleError, match="unknown preset 'huge'"):
        load_bundle(bundle_dir)


def test_only_the_preset_parts_a_stage_depends_on_are_checked(bundle_dir):
    config = json.loads((bundle_dir / "bundle.json").read_text())
    config["preset_config"]["diffusion"]["sample_steps"] = 7  # a sampling setting: the weights still fit
    (bundle_dir / "bundle.json").write_text(json.dumps(config))
    load_bundle(bundle_dir, stages=("anatomy",))
    config["preset_config"]["diffusion"]["beta_end"] = 0.03  # the training noise schedule: they do not
    (bundle_dir / "bundle.json").write_text(json.dumps(config))
    with pytest.raises(BundleError, match="stage 'anatomy' was trained with a different definition"):
        load_bundle(bundle_dir)


def test_weights_of_the_wrong_shape_are_refused(bundle_dir):
    shutil.copy(bundle_dir / "vae.safetensors", bundle_dir / "teacher.safetensors")
    stages = json.loads((bundle_dir / "bundle.json").read_text())["stages"]
    stages["teacher"]["sha256"] = stages["vae"]["sha256"]
    edit_config(bundle_dir, stages=stages)
    with pytest.raises(BundleError, match=r"teacher\.safetensors: weights do not fit preset 'tiny'"):
        load_bundle(bundle_dir)


class Tripwire:
    """Unpickling this touches a marker file: proof of whether a loader ever unpickled anything."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_pickled_weights_are_never_loaded(bundle_dir, tmp_path):
    marker = tmp_path / "unpickled"
    torch.save({"weights": Tripwire(marker)}, bundle_dir / "vae.safetensors")
    with pytest.raises(BundleError, match=r"vae\.safetensors: not a readable safetensors file"):
        load_bundle(bundle_dir)
    (bundle_dir / "vae.safetensors").rename(bundle_dir / "vae.pt")
    with pytest.raises(BundleError, match="pickled weights are never loaded"):
        load_bundle(bundle_dir)
    assert not marker.exists()


def test_pack_halves_the_weights_and_keeps_the_models(bundle_dir, tmp_path):
    from factory.bundle.pack import pack_bundle

    (bundle_dir / "training").mkdir()
    (bundle_dir / "training" / "checkpoint.bin").write_bytes(b"x" * 1000)
    packed = tmp_path / "packed"
    pack_bundle(bundle_dir, packed)
    assert sorted(p.name for p in packed.iterdir()) == sorted(p.name for p in bundle_dir.iterdir() if p.is_file())
    for stage in STAGES:
        assert (packed / f"{stage}.safetensors").stat().st_size < 0.6 * (bundle_dir / f"{stage}.safetensors").stat().st_size
    original, half = load_bundle(bundle_dir, stages=("vae",)), load_bundle(packed, stages=("vae",))
    for (name, a), b in zip(original.vae.state_dict().items(), half.vae.state_dict().values()):
        assert b.dtype == a.dtype and torch.allclose(a, b, rtol=1e-3, atol=1e-4), name
    with pytest.raises(StoreError, match="already exists"):
        pack_bundle(bundle_dir, packed)
    pack_bundle(bundle_dir, packed, overwrite=True)  # a packed bundle may be replaced by a new one
    assert sorted(p.name for p in packed.iterdir()) == sorted(p.name for p in bundle_dir.iterdir() if p.is_file())


def test_train_refuses_a_synthetic_cohort_and_a_used_folder(tmp_path):
    from factory.train.runner import TrainOptions, train

    synthetic = write_store(tmp_path / "syn.zarr", n=2, kind="synthetic")
    with pytest.raises(StoreError, match="is a synthetic store, expected a cohort store"):
        train(TrainOptions(cohort=synthetic, out=str(tmp_path / "bundle")))
    cohort = write_store(tmp_path / "cohort.zarr", n=2)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("x")
    with pytest.raises(StoreError, match="give a new folder, or an existing bundle to resume"):
        train(TrainOptions(cohort=cohort, out=str(mine)))
    with pytest.raises(StoreError, match="lies inside the input"):
        train(TrainOptions(cohort=cohort, out=f"{cohort}/bundle"))
    assert sorted(p.name for p in mine.iterdir()) == ["notes.txt"] and not (tmp_path / "bundle").exists()
