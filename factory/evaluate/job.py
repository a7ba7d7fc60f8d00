"""The evaluation run: controllability, coherence and (optionally) the downstream experiment -> report files."""

from __future__ import annotations

import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from factory.bundle import read_config, training_fingerprint
from factory.errors import FactoryError, StoreError
from factory.evaluate.coherence import mask_coherence
from factory.evaluate.controllability import controllability
from factory.evaluate.downstream import downstream
from factory.evaluate.features import store_features
from factory.evaluate.report import write_report
from factory.evaluate.video import fvd
from factory.store.reader import Store, open_store


@dataclass(frozen=True)
class EvaluationSpec:
    """Inputs and settings of one evaluation (all of them are recorded in the report)."""

    synthetic: str
    cohort: str
    out: str
    test: str | None = None
    downstream: bool = False
    seeds: int = 3
    steps: int = 300
    batch_size: int = 4
    arms: tuple[str, ...] = ("real", "augmented", "synthetic")
    train_vendor: str = "A"
    n_extra: int | None = None
    i3d: str | None = None
    extractor_steps: int = 300
    n_boot: int = 1000
    seed: int = 0


def prepare_out(path: str, overwrite: bool) -> Path:
    """The output directory, created; an existing non-empty one is refused unless it holds an earlier
    evaluation (report.json) and `overwrite` is set."""
    out = Path(path)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        if not (overwrite and (out / "report.json").is_file()):
            raise StoreError(f"{out}: already exists and is not empty; choose another --out"
                             + (" (--overwrite only replaces an earlier evaluation's output)" if overwrite
                                else " or pass --overwrite to replace an earlier evaluation"))
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    return out


def generator_provenance(synthetic: Store, cohort: Store) -> str:
    """Which data trained the generator of `synthetic`, as far as its bundle says, and whether it is `cohort`."""
    bundle = synthetic.attrs.get("bundle", {}).get("path")
    if not bundle:
        return "unknown (the synthetic store names no model bundle)"
    try:
        trained = read_config(bundle)["training_data"]
    except FactoryError:
        return f"unknown (bundle {bundle} is not readable here)"
    same = trained.get("table_sha256") and trained.get("table_sha256") == training_fingerprint(cohort)["table_sha256"]
    return (f"{trained.get('n_subjects')} subjects of {trained.get('store')}"
            + (" (this cohort store: labeled and unlabeled subjects alike)" if same else " (not this cohort store)"))


def evaluate(spec: EvaluationSpec, overwrite: bool = False) -> dict:
    """Evaluate `spec.synthetic` against `spec.cohort`, write report.json / report.md into `spec.out`."""
    start = time.perf_counter()
    out = prepare_out(spec.out, overwrite)
    cohort, synthetic = open_store(spec.cohort), open_store(spec.synthetic)
    test = open_store(spec.test) if spec.test else None
    synthetic_masks, curves = mask_coherence([synthetic])
    report = {
        "inputs": {k: v for k, v in asdict(spec).items() if v is not None},
        "protocol": {"generator": generator_provenance(synthetic, cohort)},
        "controllability": controllability(synthetic.table, store_features(cohort), store_features(synthetic),
                                           spec.n_boot, spec.seed),
        "coherence": {"fvd": fvd(cohort, synthetic, spec.i3d, spec.extractor_steps, spec.seed),
                      "masks": {"synthetic": synthetic_masks,
                                "real": mask_coherence([s for s in (cohort, test) if s is not None])[0]}},
    }
    if spec.downstream:
        report["downstream"] = downstream(spec.cohort, spec.synthetic, spec.test, train_vendor=spec.train_vendor,
                                          arms=spec.arms, seeds=spec.seeds, steps=spec.steps,
                                          batch_size=spec.batch_size, n_extra=spec.n_extra, seed=spec.seed)
    report["seconds"] = round(time.perf_counter() - start, 1)
    write_report(report, synthetic.table, curves, out)
    return report
