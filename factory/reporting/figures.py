"""Figures both reports draw (matplotlib object API, Agg canvas: no global backend is switched)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from factory.reporting.stats import pearson


def requested_vs_measured_figure(table: pd.DataFrame, measures, path: Path) -> None:
    """Requested vs measured scatter plots of `measures` ((column, label) pairs), per diagnosis."""
    fig = Figure(figsize=(4 * len(measures), 4), layout="constrained")
    for ax, (column, label) in zip(np.atleast_1d(fig.subplots(1, len(measures))), measures):
        requested, measured = table[f"requested_{column}"].astype(float), table[column].astype(float)
        r, n = pearson(requested, measured)
        for diagnosis, group in table.groupby(table["diagnosis"].fillna("unknown")):
            ax.scatter(requested[group.index], measured[group.index], s=12, alpha=0.7, label=diagnosis)
        finite = np.concatenate([requested[np.isfinite(requested)], measured[np.isfinite(measured)]])
        if len(finite):
            ax.plot([finite.min(), finite.max()], [finite.min(), finite.max()], "k--", lw=0.8)
        ax.set(xlabel=f"requested {label}", ylabel=f"measured {label}", title=f"{label}: r = {r:.3f} (n = {n})")
    fig.axes[0].legend(fontsize=7)
    fig.savefig(path, dpi=100)
