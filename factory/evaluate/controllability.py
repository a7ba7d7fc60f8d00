"""Controllability: requested vs measured clinical values, diagnosis faithfulness, quality-gate failures."""

from __future__ import annotations

import numpy as np
import pandas as pd

from factory.evaluate.classifier import SoftmaxClassifier, cross_validated_accuracy
from factory.evaluate.features import FEATURES
from factory.reporting.stats import bootstrap_ci, mae, pearson

TARGETS: tuple[tuple[str, str], ...] = (("edv_ml", "EDV (ml)"), ("esv_ml", "ESV (ml)"), ("ef_pct", "EF (%)"),
                                        ("myo_mass_g", "myocardial mass (g)"))
CLASSIFIER = "multinomial logistic regression (L2, standardised features) trained on the real cohort"


def requested_targets(table: pd.DataFrame) -> list[tuple[str, str]]:
    """The TARGETS that the table records a requested value for."""
    return [(c, label) for c, label in TARGETS if f"requested_{c}" in table and table[f"requested_{c}"].notna().any()]


def agreement(requested, measured, n_boot: int, seed: int) -> dict:
    """Pearson r and MAE between requested and measured values, each with a bootstrap 95 % interval."""
    requested, measured = np.asarray(requested, float), np.asarray(measured, float)
    r, n = pearson(requested, measured)
    return {"n": n, "pearson_r": r, "pearson_r_ci95": bootstrap_ci(lambda a, b: pearson(a, b)[0], requested, measured,
                                                                     n_boot=n_boot, seed=seed),
            "mae": mae(requested, measured), "mae_ci95": bootstrap_ci(mae, requested, measured, n_boot=n_boot,
                                                                      seed=seed)}


def gate_outcomes(table: pd.DataFrame) -> dict:
    """Subjects per quality-gate status and the share that never passed."""
    if "status" not in table:
        return {"status": {}, "gate_failed": 0, "gate_failure_rate": None, "mean_gate_attempts": None}
    status = table["status"].fillna("unknown")
    attempts = table["gate_attempts"].dropna() if "gate_attempts" in table else pd.Series(dtype=float)
    return {"status": {k: int(v) for k, v in status.value_counts().sort_index().items()},
            "gate_failed": int((status == "gate_failed").sum()),
            "gate_failure_rate": float((status == "gate_failed").mean()),
            "mean_gate_attempts": float(attempts.mean()) if len(attempts) else None}


def diagnosis_faithfulness(real: pd.DataFrame, synthetic: pd.DataFrame, n_boot: int, seed: int) -> dict:
    """Accuracy and confusion matrix of a classifier fitted on real features, predicting synthetic diagnoses."""
    real = real.dropna(subset=["diagnosis"])
    synthetic = synthetic.dropna(subset=["diagnosis"])
    if real["diagnosis"].nunique() < 2 or synthetic.empty:
        return {"classifier": CLASSIFIER, "note": "needs real subjects of two or more diagnoses with labeled ED/ES"
                                                  " frames and synthetic subjects with a diagnosis"}
    x = real[list(FEATURES)].to_numpy(float)
    model = SoftmaxClassifier().fit(x, real["diagnosis"].to_numpy())
    requested = synthetic["diagnosis"].to_numpy()
    predicted = model.predict(synthetic[list(FEATURES)].to_numpy(float))
    correct = (predicted == requested).astype(float)
    labels = sorted(set(model.classes) | set(requested))
    confusion = pd.crosstab(pd.Series(requested, name="requested"), pd.Series(predicted, name="predicted"))
    confusion = confusion.reindex(index=labels, columns=labels, fill_value=0)
    return {"classifier": CLASSIFIER, "features": list(FEATURES), "n_real": len(real),
            "real_cv_accuracy": cross_validated_accuracy(x, real["diagnosis"].to_numpy(), seed=seed),
            "n_synthetic": len(synthetic), "accuracy": float(correct.mean()),
            "accuracy_ci95": bootstrap_ci(np.mean, correct, n_boot=n_boot, seed=seed),
            "labels": labels, "confusion": confusion.to_numpy().tolist()}


def controllability(table: pd.DataFrame, real_features: pd.DataFrame, synthetic_features: pd.DataFrame,
                    n_boot: int = 1000, seed: int = 0) -> dict:
    """The `controllability` report section for a synthetic store's table (all subjects, gate failures included)."""
    diagnosis = table["diagnosis"].fillna("unknown")
    targets = {}
    for column, label in requested_targets(table):
        requested, measured = table[f"requested_{column}"], table[column]
        targets[column] = {
            "label": label, "overall": agreement(requested, measured, n_boot, seed),
            "per_diagnosis": {d: agreement(requested[rows.index], measured[rows.index], n_boot, seed)
                              for d, rows in table.groupby(diagnosis)}}
    return {"n_subjects": len(table), "targets": targets, "gate": gate_outcomes(table),
            "diagnosis_faithfulness": diagnosis_faithfulness(real_features, synthetic_features, n_boot, seed)}
