"""Dataset report of a store: `report.md` beside its PNG figures.

Sections: subjects per diagnosis; requested vs measured EDV / ESV / EF with Pearson r (stores that
record requested values, i.e. synthetic ones) or the distributions of the measured values (cohorts);
LV volume over the cardiac cycle per diagnosis, from the masks of labeled frames; quality-gate
outcomes when the table has them; links to the per-subject previews. Figures use matplotlib's
object API (Agg canvas), so no global backend is switched.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from factory.data.clinical import label_volumes_ml
from factory.reporting.figures import requested_vs_measured_figure
from factory.reporting.stats import pearson
from factory.reporting.tables import md_table
from factory.store.reader import Store
from factory.vocabulary import PHASE_CYCLE

MEASURES = (("edv_ml", "EDV (ml)"), ("esv_ml", "ESV (ml)"), ("ef_pct", "EF (%)"))
PHASE_BINS = np.linspace(0.0, PHASE_CYCLE, 11)


def diagnosis_section(table: pd.DataFrame, out: Path) -> list[str]:
    """Subjects (and labeled frames) per diagnosis: a table and a bar chart."""
    diagnosis = table["diagnosis"].fillna("unknown")
    counts = diagnosis.value_counts().sort_index()
    labeled = table.groupby(diagnosis)["n_labeled_frames"].sum()
    fig = Figure(figsize=(5, 3), layout="constrained")
    ax = fig.subplots()
    ax.bar(counts.index, counts.values, color="tab:blue")
    ax.set(ylabel="subjects", title="Subjects per diagnosis")
    fig.savefig(out / "diagnosis_counts.png", dpi=100)
    rows = [[d, int(counts[d]), int(labeled[d])] for d in counts.index]
    return ["## Subjects per diagnosis", "", *md_table(["diagnosis", "subjects", "labeled frames"], rows), "",
            "![subjects per diagnosis](diagnosis_counts.png)", ""]


def controllability_section(table: pd.DataFrame, out: Path) -> list[str]:
    """Requested vs measured EDV / ESV / EF scatter plots with Pearson r and the identity line."""
    requested_vs_measured_figure(table, MEASURES, out / "controllability.png")
    rows = [[label, *pearson(table[f"requested_{column}"], table[column])] for column, label in MEASURES]
    return ["## Requested vs measured", "", *md_table(["value", "Pearson r", "subjects"], rows), "",
            "![requested vs measured](controllability.png)", ""]


def distribution_section(table: pd.DataFrame, out: Path) -> list[str]:
    """Histograms of measured EDV / ESV / EF per diagnosis (stores without requested values)."""
    fig = Figure(figsize=(12, 4), layout="constrained")
    rows = []
    for ax, (column, label) in zip(fig.subplots(1, 3), MEASURES):
        values = table[column].astype(float)
        for diagnosis, group in table.groupby(table["diagnosis"].fillna("unknown")):
            finite = values[group.index].dropna()
            if len(finite):
                ax.hist(finite, bins=15, alpha=0.5, label=diagnosis)
        ax.set(xlabel=label, ylabel="subjects", title=label)
        finite = values.dropna()
        rows.append([label, float(finite.mean()) if len(finite) else math.nan,
                     float(finite.std()) if len(finite) > 1 else math.nan, len(finite)])
    fig.axes[0].legend(fontsize=7)
    fig.savefig(out / "clinical_distributions.png", dpi=100)
    return ["## Measured clinical values", "", *md_table(["value", "mean", "sd", "subjects"], rows), "",
            "![distributions](clinical_distributions.png)", ""]


def lv_curves(store: Store, table: pd.DataFrame, per_diagnosis: int, seed: int) -> dict[str, list[tuple]]:
    """(phase, LV volume ml) of the labeled frames of up to `per_diagnosis` random subjects per diagnosis."""
    rng = np.random.default_rng(seed)
    labeled = store.group["labeled"]
    curves: dict[str, list[tuple]] = {}
    with_labels = table[table["n_labeled_frames"] > 0]
    for diagnosis, group in with_labels.groupby(with_labels["diagnosis"].fillna("unknown")):
        chosen = rng.choice(group.index.to_numpy(), size=min(per_diagnosis, len(group)), replace=False)
        for i in sorted(int(i) for i in chosen):
            frames = np.flatnonzero(labeled[i])
            masks = store.group["mask"].get_orthogonal_selection((i, frames))
            volumes = label_volumes_ml(masks, store.spacing_mm)["lv"]
            curves.setdefault(diagnosis, []).append((store.group["phase"][i][frames], volumes))
    return curves


def lv_curve_section(curves: dict[str, list[tuple]], out: Path) -> list[str]:
    """One panel per diagnosis: each subject's LV volume over the cycle, and the mean per phase bin."""
    if not curves:
        return ["## LV volume over the cycle", "", "No labeled frames.", ""]
    fig = Figure(figsize=(4 * len(curves), 3.5), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(curves), sharey=True))
    for ax, (diagnosis, subject_curves) in zip(axes, sorted(curves.items())):
        for phase, volume in subject_curves:
            ax.plot(phase, volume, "-o", color="tab:gray", lw=0.6, ms=2, alpha=0.5)
        phase = np.concatenate([p for p, _ in subject_curves])
        volume = np.concatenate([v for _, v in subject_curves])
        bins = np.digitize(phase, PHASE_BINS[1:-1])
        centres = (PHASE_BINS[:-1] + PHASE_BINS[1:]) / 2
        present = np.unique(bins)
        ax.plot(centres[present], [volume[bins == b].mean() for b in present], "-", color="tab:red", lw=2,
                label="mean")
        ax.set(xlabel="phase (0 ED, 100 ES, 200 next ED)", title=f"{diagnosis} (n = {len(subject_curves)})")
    axes[0].set_ylabel("LV volume (ml)")
    axes[0].legend(fontsize=7)
    fig.savefig(out / "lv_volume_curves.png", dpi=100)
    return ["## LV volume over the cycle", "", "From the masks of labeled frames; red: mean per phase bin.", "",
            "![LV volume curves](lv_volume_curves.png)", ""]


def gate_section(table: pd.DataFrame, out: Path) -> list[str]:
    """Quality-gate outcomes per diagnosis (`status`) and the distribution of `gate_attempts`."""
    lines = ["## Quality gate", ""]
    if "status" in table:
        status = pd.crosstab(table["diagnosis"].fillna("unknown"), table["status"].fillna("unknown"))
        lines += md_table(["diagnosis", *status.columns], [[d, *map(int, r)] for d, r in status.iterrows()]) + [""]
    if "gate_attempts" in table:
        attempts = table["gate_attempts"].dropna().astype(int).value_counts().sort_index()
        fig = Figure(figsize=(5, 3), layout="constrained")
        ax = fig.subplots()
        ax.bar(attempts.index.astype(str), attempts.values, color="tab:orange")
        ax.set(xlabel="gate attempts", ylabel="subjects", title="Quality-gate attempts per subject")
        fig.savefig(out / "gate_attempts.png", dpi=100)
        lines += ["![gate attempts](gate_attempts.png)", ""]
    return lines


def write_report(store: Store, out: Path, previews: list[tuple[str, str, str]] = (), curves_per_diagnosis: int = 20,
                 seed: int = 0) -> Path:
    """Write `out/report.md` and its figures; `previews` are (subject_id, gif, png) paths relative to `out`."""
    out.mkdir(parents=True, exist_ok=True)
    table = store.table
    z, h, w = store.attrs["geometry"]
    lines = [f"# Dataset report: {store.url}", "",
             f"{store.kind} store, preset {store.attrs['preset']}, {len(table)} subjects, "
             f"{int(table['n_frames'].sum())} frames ({int(table['n_labeled_frames'].sum())} labeled), "
             f"frames {z} x {h} x {w} (Z x H x W) at {store.spacing_mm} mm"
             + ("" if store.complete else " (INCOMPLETE: still being written or unfinished)"), ""]
    lines += diagnosis_section(table, out)
    has_requested = all(f"requested_{c}" in table and table[f"requested_{c}"].notna().any() for c, _ in MEASURES)
    lines += controllability_section(table, out) if has_requested else distribution_section(table, out)
    lines += lv_curve_section(lv_curves(store, table, curves_per_diagnosis, seed), out)
    if "status" in table or "gate_attempts" in table:
        lines += gate_section(table, out)
    if previews:
        rows = [[s, f"![{s}]({gif})", f"[montage]({png})"] for s, gif, png in previews]
        lines += ["## Subject previews", "", *md_table(["subject", "cycle (mid-ventricular slice)", "slices x frames"],
                                                       rows)]
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path
