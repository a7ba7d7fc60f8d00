"""Exports of stores to files other tools read: per-subject 4D NIfTI, and nnU-Net v2 raw datasets."""
