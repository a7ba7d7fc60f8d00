"""Streaming stores into training loops: `CineStream`, a PyTorch IterableDataset (see `dataset`)."""

from factory.stream.dataset import CineStream

__all__ = ["CineStream"]
