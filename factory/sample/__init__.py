"""Sampling: plans (what to generate), the cascade pipeline (how), and the Ray Data generation job."""
