"""Sampling: plans (what to generate), the cascade pipeline (how), the quality gate."""
