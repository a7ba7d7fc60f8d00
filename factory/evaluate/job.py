"""The evaluation run: controllability, coherence, vendor faithfulness and (optionally) downstream -> report files."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

from factory.bundle import read_config, training_fingerprint
from factory.errors import FactoryError, unwrapped
from factory.evaluate.coherence import mask_coherence
from factory.evaluate.controllability import controllability
from factory.evaluate.downstream import downstream
from factory.evaluate.features import store_features
from factory.evaluate.report import write_report
from factory.evaluate.vendor import vendor_fidelity
from factory.evaluate.video import fvd
from factory.outputs import check_output, replacing
from factory.store.reader import Store, open_store


KIND = "evaluation"  # the output folder's kind: --overwrite replaces only an earlier evaluation


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
    inputs = [url for url in (spec.synthetic, spec.cohort, spec.test, spec.i3d) if url]
    check_output(spec.out, overwrite=overwrite, accept=(KIND,), inputs=inputs)  # before hours of work
    cohort, synthetic = open_store(spec.cohort, kind="cohort"), open_store(spec.synthetic, kind="synthetic")
    test = open_store(spec.test, kind="cohort") if spec.test else None
    synthetic_masks, curves = mask_coherence([synthetic])
    report = {
        "inputs": {k: v for k, v in asdict(spec).items() if v is not None},
        "protocol": {"generator": generator_provenance(synthetic, cohort)},
        "controllability": controllability(synthetic.table, store_features(cohort), store_features(synthetic),
                                           spec.n_boot, spec.seed),
        "coherence": {"fvd": fvd(cohort, synthetic, spec.i3d, spec.extractor_steps, spec.seed),
                      "masks": {"synthetic": synthetic_masks,
                                "real": mask_coherence([s for s in (cohort, test) if s is not None])[0]}},
        "vendor": vendor_fidelity(synthetic, cohort, spec.seed),
    }
    if spec.downstream:
        with unwrapped():  # a bad store found inside a Ray task is reported as itself
            report["downstream"] = downstream(spec.cohort, spec.synthetic, spec.test, train_vendor=spec.train_vendor,
                                              arms=spec.arms, seeds=spec.seeds, steps=spec.steps,
                                              batch_size=spec.batch_size, n_extra=spec.n_extra, seed=spec.seed)
    report["seconds"] = round(time.perf_counter() - start, 1)
    with replacing(spec.out, KIND, overwrite=overwrite, inputs=inputs) as staging:
        write_report(report, synthetic.table, curves, staging)
    return report
