"""`report.json` (NaN written as null) and `report.md` with its PNG figures (matplotlib object API, Agg canvas)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from factory.evaluate.arms import arm_label
from factory.evaluate.controllability import requested_targets
from factory.evaluate.statistics import ALL, KEYS
from factory.reporting.figures import requested_vs_measured_figure
from factory.reporting.tables import md_table, num
from factory.store.fs import json_safe
from factory.vocabulary import STRUCTURES


def with_ci(value, ci) -> str:
    """`value [low, high]`."""
    return f"{num(value)} [{num(ci[0])}, {num(ci[1])}]"


def spread(summary: dict) -> str:
    """`mean ± SD` of a `mean_sd` summary."""
    return f"{num(summary['mean'])} ± {num(summary['sd'])}"


def controllability_lines(section: dict, table: pd.DataFrame, out: Path) -> list[str]:
    """Requested-vs-measured tables and scatter plots, gate outcomes, diagnosis faithfulness."""
    lines = ["## Controllability", "",
             f"{section['n_subjects']} synthetic subjects (gate failures included). Pearson r and mean absolute"
             " error between requested and measured values, with seeded bootstrap 95 % intervals.", ""]
    rows = [[t["label"], t["overall"]["n"], with_ci(t["overall"]["pearson_r"], t["overall"]["pearson_r_ci95"]),
             with_ci(t["overall"]["mae"], t["overall"]["mae_ci95"])] for t in section["targets"].values()]
    lines += md_table(["value", "n", "Pearson r [95 % CI]", "MAE [95 % CI]"], rows) + [""]
    if section["targets"]:
        diagnoses = sorted({d for t in section["targets"].values() for d in t["per_diagnosis"]})
        rows = [[d, *(f"{num(t['per_diagnosis'][d]['pearson_r'])} / {num(t['per_diagnosis'][d]['mae'], 1)}"
                      for t in section["targets"].values())] for d in diagnoses]
        lines += ["Per diagnosis (Pearson r / MAE):", "",
                  *md_table(["diagnosis", *(t["label"] for t in section["targets"].values())], rows), ""]
        requested_vs_measured_figure(table, requested_targets(table), out / "controllability.png")
        lines += ["![requested vs measured](controllability.png)", ""]
    gate = section["gate"]
    lines += ["### Quality gate", "", f"Status counts: {gate['status'] or 'no status column'}; gate failures:"
              f" {gate['gate_failed']} (rate {num(gate['gate_failure_rate'])}), mean gate attempts"
              f" {num(gate['mean_gate_attempts'], 2)}.", ""]
    faith = section["diagnosis_faithfulness"]
    lines += ["### Diagnosis faithfulness", "", f"Classifier: {faith['classifier']}."]
    if "accuracy" not in faith:
        return lines + ["", f"Not computed: {faith['note']}.", ""]
    lines += [f"Features: {', '.join(faith['features'])}.", "",
              f"Accuracy on {faith['n_synthetic']} synthetic subjects (requested diagnosis):"
              f" {with_ci(faith['accuracy'], faith['accuracy_ci95'])}; cross-validated accuracy on the"
              f" {faith['n_real']} real subjects it was fitted on: {num(faith['real_cv_accuracy'])}.", "",
              *md_table(["requested \\ predicted", *faith["labels"]],
                        [[label, *row] for label, row in zip(faith["labels"], faith["confusion"])]), ""]
    fig = Figure(figsize=(4, 3.5), layout="constrained")
    ax = fig.subplots()
    image = ax.imshow(np.array(faith["confusion"]), cmap="Blues")
    ax.set(xticks=range(len(faith["labels"])), xticklabels=faith["labels"], yticks=range(len(faith["labels"])),
           yticklabels=faith["labels"], xlabel="predicted", ylabel="requested", title="Diagnosis confusion")
    fig.colorbar(image)
    fig.savefig(out / "diagnosis_confusion.png", dpi=100)
    return lines + ["![diagnosis confusion](diagnosis_confusion.png)", ""]


def mask_rows(synthetic: dict, real: dict) -> list[list]:
    """Rows of the mask-coherence table: measure, synthetic, real reference."""
    def cell(section: dict, key: str, structure: str | None = None) -> str:
        if not section.get("n_subjects"):
            return "n/a"
        value = section[key][structure] if structure else section[key]
        return spread(value) if isinstance(value, dict) else num(value)

    rows = [[f"volume smoothness {s} (mean abs 2nd difference / max volume)", cell(synthetic, "volume_smoothness", s),
             cell(real, "volume_smoothness", s)] for s in STRUCTURES]
    rows += [[f"frame-to-frame Dice {s}", cell(synthetic, "frame_to_frame_dice", s),
              cell(real, "frame_to_frame_dice", s)] for s in STRUCTURES]
    rows += [[label, cell(synthetic, key), cell(real, key)] for key, label in (
        ("es_at_requested_frame_share", "share with ES (min LV volume) at the phase-100 frame"),
        ("es_frame_abs_error", "ES frame absolute error (frames)"), ("es_phase_error", "ES phase error (phase units)"),
        ("myo_volume_cv", "myocardial volume CV over the cycle"),
        ("gate_pass_share", "share of frames passing the gate"))]
    return rows


def curves_figure(curves: list[dict], path: Path) -> None:
    """Each synthetic subject's RV / MYO / LV volume over the cycle, divided by its largest value."""
    fig = Figure(figsize=(12, 3.5), layout="constrained")
    for ax, structure in zip(fig.subplots(1, 3, sharey=True), STRUCTURES):
        for curve in curves:
            volume = curve[structure.lower()]
            if volume.max() > 0:
                ax.plot(curve["phase"], volume / volume.max(), color="tab:gray", lw=0.6, alpha=0.5)
        ax.set(xlabel="phase (0 ED, 100 ES, 200 next ED)", title=f"{structure} volume / max")
    fig.savefig(path, dpi=100)


def coherence_lines(section: dict, curves: list[dict], out: Path) -> list[str]:
    """FVD table, mask-coherence table and the volume-curve figure."""
    fvd = section["fvd"]
    lines = ["## Temporal coherence and realism", "", f"### {fvd['metric']}", "",
             f"Extractor: {fvd['extractor']}. Clips: {fvd['clip']}. Both distances use the same reference half"
             f" ({fvd['n_reference']} real subjects) and {fvd['n_compared']} compared subjects.", "",
             *md_table(["comparison", "Fréchet distance"], [["real vs real (floor)", num(fvd["real_vs_real"])],
                                                           ["real vs synthetic", num(fvd["real_vs_synthetic"])]])]
    if fvd.get("extractor_held_out_accuracy") is not None:
        lines += ["", "Extractor diagnosis accuracy on held-out real clips:"
                      f" {num(fvd['extractor_held_out_accuracy'])}."]
    lines += ["", *two_sample_lines(section["c2st"])]
    masks = section["masks"]
    lines += ["### Mask-based coherence", "",
              f"Subjects with every frame labeled: {masks['synthetic'].get('n_subjects', 0)} synthetic,"
              f" {masks['real'].get('n_subjects', 0)} real (mean ± SD over subjects).", "",
              *md_table(["measure", "synthetic", "real"], mask_rows(masks["synthetic"], masks["real"])), ""]
    if curves:
        curves_figure(curves, out / "volume_curves.png")
        lines += ["![volume curves](volume_curves.png)", ""]
    return lines


def downstream_figure(section: dict, path: Path) -> None:
    """Dice per structure and arm over every test subject: bars at the mean over seeds, one dot per seed."""
    arms = list(section["arms"])
    fig = Figure(figsize=(9, 3.5), layout="constrained")
    ax = fig.subplots()
    width = 0.8 / len(arms)
    for k, arm in enumerate(arms):
        x = np.arange(len(KEYS)) + k * width
        result = section["arms"][arm]
        ax.bar(x, [result["dice"][ALL][key]["mean"] for key in KEYS], width, label=arm_label(arm), alpha=0.7)
        for seed in result["seeds"]:
            ax.plot(x, [seed["dice"][ALL][key] for key in KEYS], "k.", ms=4)
    ax.set(xticks=np.arange(len(KEYS)) + 0.4 - width / 2, xticklabels=list(KEYS), ylabel="Dice (test vendors)",
           title="Downstream segmentation")
    ax.legend(fontsize=7)
    fig.savefig(path, dpi=100)


def interval(values: list) -> str:
    """`[low, high]` of a 95 % interval."""
    return f"[{num(values[0])}, {num(values[1])}]"


def downstream_lines(section: dict, out: Path) -> list[str]:
    """Protocol, cohort split, per-arm Dice / HD95 (per structure and test vendor), steps used, paired differences."""
    protocol, split = section["protocol"], section["cohort_split"]
    pseudo = len(split["pseudo_subjects"])
    lines = ["## Downstream cross-vendor segmentation", "",
             *(f"- {key}: {value}" for key, value in protocol.items() if key != "arms"),
             *(f"- {arm}: {description}" for arm, description in protocol["arms"].items()), "",
             f"Cohort split ({split['regime']} regime): {len(split['train_subjects'])} training and"
             f" {len(split['validation_subjects'])} validation subjects of vendor {split['train_vendor']}"
             f" ({split['validation_frames']} validation frames), {split['unlabeled_pool']} unlabeled cohort subjects"
             f" ({f'{pseudo} of them pseudo-labelled for arm (f)' if pseudo else 'none used: arm (f) not run'}),"
             f" {len(split['synthetic_subjects'])} synthetic"
             f" subjects; test subjects per vendor {split['test']['subjects_per_vendor']}"
             f" ({split['test']['frames']} frames). Subject ids: report.json `downstream.cohort_split`.", ""]
    arms = section["arms"]
    groups = [ALL, *sorted({g for result in arms.values() for g in result["dice"]} - {ALL})]
    for metric, label in (("dice", "Dice"), ("hd95", "HD95 (mm)")):
        for group in groups:
            rows = [[arm_label(arm), *(spread(result[metric][group][k]) for k in KEYS)] for arm, result in arms.items()]
            title = "every test subject" if group == ALL else f"test vendor {group}"
            lines += [f"{label}, {title}, mean ± SD over seeds:", "", *md_table(["arm", *KEYS], rows), ""]
    rows = [[arm_label(arm), spread(result["steps"]["best_step"]), spread(result["steps"]["steps_run"]),
             ", ".join(f"{num(s['training']['best_validation_dice'])} @ {s['training']['best_step']}"
                       for s in result["seeds"])] for arm, result in arms.items()]
    lines += ["Steps used (validation Dice chose the checkpoint):", "",
              *md_table(["arm", "best step", "steps run", "best validation Dice @ step, per seed"], rows), ""]
    for name, difference in section["paired_differences"].items():
        rows = [[label, group if group != ALL else "all", *(
            f"{num(cell['mean'])} {interval(cell['ci95_test_subjects'])} {interval(cell['ci95_seeds'])}"
            for cell in (difference[metric][group][k] for k in KEYS))]
            for metric, label in (("dice", "Dice"), ("hd95", "HD95 (mm)")) for group in groups]
        lines += [f"Paired difference {name} (same seed, same test subjects): mean [95 % CI over test subjects]"
                  " [95 % CI over seeds]:", "", *md_table(["metric", "test vendor", *KEYS], rows), ""]
    downstream_figure(section, out / "downstream_dice.png")
    return lines + ["![downstream Dice](downstream_dice.png)", ""]


def two_sample_lines(section: dict) -> list[str]:
    """The classifier two-sample test: per vendor, the held-out ROC AUC (0.5 = indistinguishable)."""
    lines = ["### Classifier two-sample test", "", f"Classifier: {section['classifier']}, {section['steps']} steps;"
             f" {section['frames_per_subject']} frames per subject; subjects split in halves (train / held out)."
             " ROC AUC on the held-out half: 0.5 = real and synthetic frames indistinguishable, 1.0 = always told"
             " apart; 95 % bootstrap interval over held-out subjects.", ""]
    if section.get("note"):
        lines += [f"Note: {section['note']}.", ""]
    rows = [[vendor, r["real"], "skipped: " + r["skipped"] if "skipped" in r else with_ci(r["auc"], r["auc_ci95"]),
             r.get("n_subjects_per_side", ""), r.get("n_held_out_frames", "")]
            for vendor, r in section["per_vendor"].items()]
    return lines + [*md_table(["vendor", "real frames from", "ROC AUC [95 % CI]", "subjects per side",
                               "held-out frames"], rows), ""]


def vendor_lines(section: dict) -> list[str]:
    """Vendor classifier reference and per-requested-vendor accuracy, confusion matrix, per-vendor realism."""
    lines = ["## Vendor faithfulness", ""]
    if "skipped" in section:
        return lines + [f"Not computed: {section['skipped']}.", ""]
    reference = section["reference"]
    lines += [f"Classifier: {section['classifier']}; heart region: {section['heart_region']};"
              f" {section['frames_per_subject']} frames per subject. Classes: {', '.join(section['classes'])}.", "",
              f"Reference: accuracy {num(reference['accuracy'])} on {reference['n_held_out']} held-out real subjects"
              f" ({reference['split']}).", ""]
    if section.get("note"):
        lines += [f"Note: {section['note']}.", ""]
    rows = [[v, r["n"], num(r["accuracy"])] for v, r in section["per_requested_vendor"].items()]
    if rows:
        lines += [f"Accuracy on {section['n_synthetic']} synthetic subjects (requested vendor, column"
                  f" `{section['requested_vendor_column']}`): {num(section['accuracy'])}.", "",
                  *md_table(["requested vendor", "n", "accuracy"], rows), ""]
    confusion = section["confusion"]
    lines += [*md_table(["requested \\ predicted", *confusion["predicted"]],
                        [[v, *row] for v, row in zip(confusion["requested"], confusion["counts"])]), ""]
    rows = [[v, f"{r['n_real']} / {r['n_synthetic']}", num(r["histogram_distance"]),
             num(r["histogram_distance_real_halves"]),
             *(f"{num(r[k]['real'], 4)} / {num(r[k]['synthetic'], 4)} ({num(r[k]['difference'], 4)})"
               for k in ("noise", "sharpness"))] for v, r in section["realism"].items()]
    lines += [f"Realism of the heart region per vendor, real vs synthetic; histogram distance:"
              f" {section['histogram_distance']}.", "",
              *md_table(["vendor", "subjects real / synthetic", "histogram distance", "real halves (floor)",
                         "noise real / synthetic (diff)", "edge sharpness real / synthetic (diff)"], rows), ""]
    return lines


def write_report(report: dict, synthetic_table: pd.DataFrame, curves: list[dict], out: Path) -> None:
    """Write `out/report.json` and `out/report.md` (with its figures) for an evaluation `report`."""
    (out / "report.json").write_text(json.dumps(json_safe(report), indent=1, allow_nan=False) + "\n")
    inputs = report["inputs"]
    lines = ["# Evaluation report", "", *(f"- {key}: {value}" for key, value in inputs.items()),
             f"- generator training data: {report['protocol']['generator']}", f"- took {report['seconds']:.0f} s", ""]
    lines += controllability_lines(report["controllability"], synthetic_table, out)
    lines += coherence_lines(report["coherence"], curves, out)
    if "vendor" in report:
        lines += vendor_lines(report["vendor"])
    if "downstream" in report:
        lines += downstream_lines(report["downstream"], out)
    (out / "report.md").write_text("\n".join(lines) + "\n")
