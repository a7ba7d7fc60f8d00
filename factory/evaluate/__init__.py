"""Evaluation of a synthetic store against the real cohort: controllability, coherence, downstream value.

`factory.evaluate.job.evaluate` runs it and writes `report.json` + `report.md`; `jobs/evaluate.py`
is its Ray entry point.
"""
