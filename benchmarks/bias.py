"""Where the measured-vs-requested bias of generated hearts comes from: anatomy guidance, motion guidance, VAE, teacher.

    python benchmarks/bias.py [--bundle DIR] [--n 20] [--frames 8] [--cohort cohort.zarr]

Prints JSON, mean signed error (measured - requested) and mean absolute error, overall and per diagnosis:
- `anatomy`: EDV of the decoded ED masks (the quality gate applied as in generation) for each anatomy
  guidance scale in --guidances;
- `motion`: ESV and EF of full sequences (anatomy at guidance 3) for each motion guidance scale in
  --motion-guidances, with the share of subjects whose smallest LV is the requested ES frame and the
  myocardial volume's coefficient of variation over the cycle;
- `teacher` (with --cohort): on the cohort's labeled subjects, ESV and myocardial volume of the ES mask
  decoded from the VAE's own ES latent and from z_ED + teacher(z_ED, z_ES), against the real ES mask:
  separates the VAE's and the teacher's share of an ESV error from the motion LDM's;
- `animation` (with --cohort): the motion LDM alone, animating the cohort's real ED frames (`--from`) at EFs
  drawn from their diagnoses' priors: ESV / EF error, ES timing and myocardial constancy without the
  anatomy stage's share.
Sections whose stages the bundle lacks are left out (a bundle of VAE, teacher and motion LDM only
animates).
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import pandas as pd
import torch

from factory.bundle import load_bundle
from factory.data.clinical import label_volumes_ml
from factory.presets import get_preset
from factory.sample.job import DEMO_BUNDLE
from factory.sample.pipeline import CinePipeline, SamplerSettings
from factory.sample.plan import animation_plan, make_plan
from factory.store.reader import open_store


def errors(table: pd.DataFrame, measured: str, requested: str) -> dict:
    """Mean signed and absolute error of `measured` against `requested`, overall and per diagnosis."""
    diff = table[measured] - table[requested]
    return {"mean_signed": round(float(diff.mean()), 2), "mae": round(float(diff.abs().mean()), 2),
            "per_diagnosis_signed": {d: round(float(v), 2) for d, v in diff.groupby(table["diagnosis"]).mean().items()}}


def anatomy_bias(pipeline: CinePipeline, plan: pd.DataFrame, guidances: list[float]) -> list[dict]:
    """EDV error of the gated ED anatomies per anatomy guidance scale."""
    results = []
    for g in guidances:
        pipeline.settings = SamplerSettings(guidance=g)
        _, _, reasons, edv = pipeline.sample_anatomy(plan, pipeline.conditions(plan))
        table = plan.assign(measured_edv_ml=edv)
        results.append({"guidance": g, "edv": errors(table, "measured_edv_ml", "edv_ml"),
                        "gate_failures": int(sum(bool(r) for r in reasons))})
    return results


def motion_bias(pipeline: CinePipeline, plan: pd.DataFrame, guidances: list[float],
                sources: tuple[np.ndarray, np.ndarray] | None = None) -> list[dict]:
    """ESV / EF error, ES timing and myocardial constancy of full sequences per motion guidance scale (of real
    subjects' ED frames animated, with `sources`)."""
    results = []
    for g in guidances:
        pipeline.settings = SamplerSettings(motion_guidance=g)
        generated = pipeline(plan, sources)
        table = pd.DataFrame([x.row for x in generated])
        myo_cv = [float(np.std(v) / np.mean(v)) for v in
                  (label_volumes_ml(x.subject.mask, x.subject.spacing_mm)["myo"] for x in generated)]
        ef = table["ef_pct"] - table["requested_ef_pct"]
        results.append({"motion_guidance": g, "edv": errors(table, "edv_ml", "requested_edv_ml"),
                        "esv": errors(table, "esv_ml", "requested_esv_ml"),
                        "ef": errors(table, "ef_pct", "requested_ef_pct"),
                        "ef_r": round(float(np.corrcoef(table["ef_pct"], table["requested_ef_pct"])[0, 1]), 3),
                        "ef_within_5": round(float((ef.abs() <= 5).mean()), 3),
                        "es_at_requested_frame": round(float((table["lv_min_frame"] == plan["es_frame"]).mean()), 3),
                        "myo_volume_cv": round(float(np.mean(myo_cv)), 4)})
    return results


def animation_bias(pipeline: CinePipeline, cohort_url: str, n: int, frames: int, seed: int,
                   guidances: list[float]) -> list[dict]:
    """`motion_bias` of the motion LDM alone: the cohort's real ED frames animated at EFs drawn from the priors."""
    store = open_store(cohort_url, kind="cohort")
    plan = animation_plan(store.table, n, pipeline.preset, seed=seed, frames=frames)
    plan["vendor"] = plan["vendor"].where(plan["vendor"].isin(pipeline.vendors), "")
    position = {name: i for i, name in enumerate(store.table["subject_id"])}
    index = np.array([position[name] for name in plan["source_subject"]])
    return motion_bias(pipeline, plan, guidances, store.read_frames(np.stack([index, np.zeros_like(index)], 1)))


@torch.no_grad()
def teacher_bias(bundle, cohort_url: str, limit: int) -> dict:
    """ESV and myocardial volume of the ES mask through the VAE alone and through the teacher, vs the real mask."""
    store = open_store(cohort_url, kind="cohort")
    rows = []
    for index in store.table.index[store.table["es_frame"].notna() & (store.table["n_labeled_frames"] >= 2)][:limit]:
        es = int(store.table.loc[index, "es_frame"])
        (ed_image, _), (es_image, es_mask) = store.frame(index, 0), store.frame(index, es)
        z = bundle.vae.encode(torch.from_numpy(np.stack([ed_image, es_image]))[:, None])[0]
        through = {"vae": z[1:], "teacher": z[:1] + bundle.teacher(z[:1], z[1:])}
        volumes = {"real": label_volumes_ml(es_mask, store.spacing_mm)}
        for name, latent in through.items():
            mask = bundle.vae.decode_mask_logits(latent).argmax(1)[0].numpy().astype(np.uint8)
            volumes[name] = label_volumes_ml(mask, store.spacing_mm)
        rows.append({f"{name}_{part}": float(v[part]) for name, v in volumes.items() for part in ("lv", "myo")})
    table = pd.DataFrame(rows)
    return {"subjects": len(table),
            **{f"esv_{name}_minus_real_ml": round(float((table[f"{name}_lv"] - table["real_lv"]).mean()), 2)
               for name in ("vae", "teacher")},
            **{f"es_myo_{name}_over_real": round(float((table[f"{name}_myo"] / table["real_myo"]).mean()), 4)
               for name in ("vae", "teacher")}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", default=str(DEMO_BUNDLE))
    parser.add_argument("--n", type=int, default=20, help="plan rows (balanced over diagnoses)")
    parser.add_argument("--frames", type=int, default=8, help="frames per generated cycle (motion section)")
    parser.add_argument("--guidances", default="1,2,3", help="anatomy guidance scales to compare")
    parser.add_argument("--motion-guidances", default="1,3", help="motion guidance scales to compare")
    parser.add_argument("--cohort", help="cohort store for the VAE / teacher section")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    bundle = load_bundle(args.bundle)
    plan = make_plan(args.n, get_preset(bundle.config["preset"]), seed=args.seed, balance="diagnosis",
                     frames=args.frames)
    pipeline = CinePipeline.from_bundle(bundle)
    motion_guidances = [float(g) for g in args.motion_guidances.split(",")]
    report = {"bundle": args.bundle, "subjects": args.n, "frames": args.frames,
              "torch_threads": torch.get_num_threads()}
    if "anatomy" in bundle.models:
        report |= {"anatomy": anatomy_bias(pipeline, plan, [float(g) for g in args.guidances.split(",")]),
                   "motion": motion_bias(pipeline, plan, motion_guidances)}
    if args.cohort:
        report["animation"] = animation_bias(pipeline, args.cohort, args.n, args.frames, args.seed, motion_guidances)
        report["teacher"] = teacher_bias(bundle, args.cohort, args.n)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
