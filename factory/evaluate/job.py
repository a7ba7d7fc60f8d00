"""The evaluation run: controllability, coherence and realism, vendor faithfulness and (optionally) downstream -> report
files. Every input is checked, and the downstream experiment planned, before any work starts."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

from factory.bundle import sha256_file
from factory.errors import unwrapped
from factory.evaluate.coherence import mask_coherence
from factory.evaluate.controllability import controllability
from factory.evaluate.downstream import DownstreamSpec, downstream, plan_downstream
from factory.evaluate.features import store_features
from factory.evaluate.finished_runs import FinishedRuns, section_key
from factory.evaluate.generator import check_regime, describe, generator_training
from factory.evaluate.report import write_report
from factory.evaluate.two_sample import classifier_two_sample_test
from factory.evaluate.vendor import vendor_fidelity
from factory.evaluate.video import fvd
from factory.outputs import check_output, replacing
from factory.store.reader import open_store


KIND = "evaluation"  # the output folder's kind: --overwrite replaces only an earlier evaluation


@dataclass(frozen=True)
class EvaluationSpec:
    """Inputs and settings of one evaluation (all of them are recorded in the report)."""

    synthetic: str
    cohort: str
    out: str
    test: str | None = None
    bundle: str | None = None  # the generator's bundle (default: the one the synthetic store names)
    downstream: DownstreamSpec | None = None
    i3d: str | None = None
    extractor_steps: int = 300
    c2st_steps: int = 500
    n_boot: int = 1000
    seed: int = 0


def recorded(settings: dict) -> dict:
    """The settings that were given or have a default (None = not given), nested ones included, for the report."""
    return {k: recorded(v) if isinstance(v, dict) else v for k, v in settings.items() if v is not None}


def evaluate(spec: EvaluationSpec, overwrite: bool = False, resume: bool = False) -> dict:
    """Evaluate `spec.synthetic` against `spec.cohort`, write report.json / report.md into `spec.out`.

    `resume`: reuse the downstream runs and expensive sections an interrupted evaluation into the same
    `spec.out` finished (each only where its inputs and settings are the same)."""
    start = time.perf_counter()
    inputs = [url for url in (spec.synthetic, spec.cohort, spec.test, spec.bundle, spec.i3d) if url]
    check_output(spec.out, overwrite=overwrite, accept=(KIND,), inputs=inputs)  # before hours of work
    cohort, synthetic = open_store(spec.cohort, kind="cohort"), open_store(spec.synthetic, kind="synthetic")
    test = open_store(spec.test, kind="cohort") if spec.test else None
    generator = generator_training(synthetic, cohort, spec.bundle)
    plan, finished = None, FinishedRuns(spec.out)
    if not resume:
        finished.discard()
    if spec.downstream is not None:
        check_regime(spec.downstream.regime, generator)
        plan = plan_downstream(spec.cohort, spec.synthetic, spec.test, spec.downstream, generator, spec.seed)
    stores = [spec.synthetic, spec.cohort, *([spec.test] if spec.test else [])]
    i3d = sha256_file(spec.i3d) if spec.i3d else None
    synthetic_masks, curves = mask_coherence([synthetic])
    report = {
        "inputs": recorded(asdict(spec)),
        "protocol": {"generator": describe(generator)},
        "generator": generator,
        "controllability": controllability(synthetic.table, store_features(cohort), store_features(synthetic),
                                           spec.n_boot, spec.seed),
        "coherence": {
            "fvd": finished.section("fvd", section_key("fvd", stores[:2], {"i3d": i3d, "steps": spec.extractor_steps,
                                                                          "seed": spec.seed}),
                                    lambda: fvd(cohort, synthetic, spec.i3d, spec.extractor_steps, spec.seed)),
            "c2st": finished.section("c2st", section_key("c2st", stores, {"steps": spec.c2st_steps, "seed": spec.seed,
                                                                          "n_boot": spec.n_boot}),
                                     lambda: classifier_two_sample_test(synthetic, cohort, test, spec.c2st_steps,
                                                                        spec.seed, spec.n_boot)),
            "masks": {"synthetic": synthetic_masks,
                      "real": mask_coherence([s for s in (cohort, test) if s is not None])[0]}},
        "vendor": finished.section("vendor", section_key("vendor", stores[:2], {"seed": spec.seed}),
                                   lambda: vendor_fidelity(synthetic, cohort, spec.seed)),
    }
    if plan is not None:
        with unwrapped():  # a bad store found inside a Ray task is reported as itself
            report["downstream"] = downstream(plan, spec.n_boot, spec.seed, finished)
    report["seconds"] = round(time.perf_counter() - start, 1)
    with replacing(spec.out, KIND, overwrite=overwrite, inputs=inputs) as staging:
        write_report(report, synthetic.table, curves, staging)
    finished.clear()  # the report holds them now
    return report
