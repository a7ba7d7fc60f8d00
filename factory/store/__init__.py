"""Zarr v3 stores of subjects (real cohorts and synthetic output share one schema)."""
