"""Is the store reader fast enough to feed training? Prints JSON with samples per second of:

- `cinestream`: CineStream in frame mode through a DataLoader (2 workers, batch 4), one epoch;
- `memmap`: the same frames, same order and DataLoader, read from plain numpy memmaps of the arrays;
- `train_step`: a tiny MONAI 3D segmentation UNet training on in-memory batches (its consumption rate);
- `train_from_stream`: the same training fed by CineStream (what a training loop actually gets).

Usage: python benchmarks/stream.py [--store STORE] [--subjects 40] [--workers 2] [--batch-size 4]
Without --store it writes a store of small synthetic subjects (tiny preset geometry) to a temp dir.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset

from factory.presets import get_preset
from factory.record import Subject
from factory.store.reader import open_store
from factory.store.writer import StoreWriter
from factory.stream import CineStream


def beating_subject(i: int, n_frames: int, shape: tuple[int, int, int], rng: np.random.Generator) -> Subject:
    """A disc-shaped LV, ring myocardium and offset RV that contract at ES, with noise like a cine image."""
    z, h, w = shape
    es = n_frames // 3
    yy, xx = np.mgrid[:h, :w]
    mask = np.zeros((n_frames, z, h, w), np.uint8)
    for t in range(n_frames):
        squeeze = 1 - 0.35 * np.sin(np.pi * min(t / es, (n_frames - t) / (n_frames - es)) / 2)
        r_lv = (6 + i % 4) * squeeze
        d = np.hypot(yy - h / 2, xx - w / 2)
        frame = np.where(d < r_lv + 3, 2, 0)
        frame = np.where(d < r_lv, 3, frame)
        frame = np.where((np.hypot(yy - h / 2, xx - w / 2 - r_lv - 8) < 5 * squeeze) & (frame == 0), 1, frame)
        mask[t, 2:z - 2] = frame
    image = np.clip(mask / 3.0 * 1.6 - 0.8 + rng.normal(0, 0.08, mask.shape), -1, 1).astype(np.float32)
    labeled = np.zeros(n_frames, bool)
    labeled[[0, es]] = True
    return Subject(f"bench{i:03d}", image, mask, labeled, (10.0, 2.5, 2.5), es,
                   meta={"source": "benchmark", "vendor": "A", "diagnosis": "NOR"})


def write_benchmark_store(url: str, n_subjects: int, n_frames: int = 25) -> str:
    """A cohort-kind store of `n_subjects` beating subjects in the tiny preset's geometry."""
    preset = get_preset("tiny")
    writer = StoreWriter.create(url, n_subjects=n_subjects, preset=preset, kind="cohort", overwrite=True)
    rng = np.random.default_rng(0)
    empty = {"edv_ml": None, "esv_ml": None, "ef_pct": None, "myo_mass_g": None}
    for i in range(n_subjects):
        subject = beating_subject(i, n_frames, preset.geometry.shape, rng)
        writer.write_subject(i, subject, {"source": "benchmark", "vendor": "A", "diagnosis": "NOR", **empty})
    writer.finalize()
    return url


class MemmapFrames(IterableDataset):
    """The same frames as a CineStream epoch, read from numpy memmaps (the no-format-overhead baseline)."""

    def __init__(self, folder: Path, order: list[tuple[int, int]]):
        self.folder, self.order = folder, order

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        image = np.load(self.folder / "image.npy", mmap_mode="r")
        mask = np.load(self.folder / "mask.npy", mmap_mode="r")
        for i, t in self.order[worker::workers]:
            yield {"image": torch.from_numpy(image[i, t].astype(np.float32)[None]),
                   "label": torch.from_numpy(np.array(mask[i, t])[None])}


def write_memmaps(url: str, folder: Path) -> None:
    """Copy the store's image and mask arrays to .npy files (memory-mappable, uncompressed)."""
    group = open_store(url).group
    for name in ("image", "mask"):
        np.save(folder / f"{name}.npy", group[name][:])


def rate(loader: DataLoader, consume=None, max_batches: int | None = None) -> dict:
    """Samples per second after the first batch (worker start-up is reported apart), over one pass or
    `max_batches`, each batch handed to `consume` (a training step) when given."""
    start = time.perf_counter()
    first, samples, batches = None, 0, 0
    for batch in loader:
        if first is None:
            first = time.perf_counter()
        else:
            samples += len(batch["image"])
        if consume is not None:
            consume(batch)
        batches += 1
        if batches == max_batches:
            break
    end = time.perf_counter()
    return {"samples_per_s": round(samples / (end - first), 1), "first_batch_s": round(first - start, 2),
            "batches": batches}


def tiny_unet_step(device: str):
    """A training step of a tiny MONAI 3D segmentation UNet (in-plane downsampling only, 4 classes).

    The step ends by reading the loss, as a training loop that logs it does (on a GPU: a sync point).
    """
    from monai.losses import DiceCELoss
    from monai.networks.nets import UNet

    torch.manual_seed(0)
    net = UNet(spatial_dims=3, in_channels=1, out_channels=4, channels=(16, 32, 64),
               strides=((1, 2, 2), (1, 2, 2)), num_res_units=1).to(device)
    optimiser = torch.optim.Adam(net.parameters(), lr=1e-3)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)

    def step(batch: dict) -> float:
        optimiser.zero_grad()
        loss = loss_fn(net(batch["image"].to(device)), batch["label"].to(device))
        loss.backward()
        optimiser.step()
        return loss.item()

    return step


def train_rate(batch: dict, steps: int, device: str) -> float:
    """Samples per second a training step consumes, on one in-memory batch (after one warm-up step)."""
    step = tiny_unet_step(device)
    step(batch)
    start = time.perf_counter()
    for _ in range(steps):
        step(batch)
    return round(steps * len(batch["image"]) / (time.perf_counter() - start), 1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", help="an existing complete store (default: write one to a temp dir)")
    parser.add_argument("--subjects", type=int, default=40, help="subjects of the generated store")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--train-steps", type=int, default=5)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="where the training step runs (default: cuda when available)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="stream-bench-") as tmp:
        tmp = Path(tmp)
        url = args.store or write_benchmark_store(str(tmp / "bench.zarr"), args.subjects)
        stream = CineStream(url, mode="frame", seed=0)
        order = [(int(s), int(t)) for s, t, _ in stream.sources[0].keys[
            np.random.default_rng(0).permutation(len(stream.sources[0].keys))]]
        write_memmaps(url, tmp)

        def loader(dataset):
            return DataLoader(dataset, batch_size=args.batch_size, num_workers=args.workers)

        results = {"store": url if args.store else f"generated ({args.subjects} subjects)",
                   "frames": len(order), "frame_shape": list(stream.sources[0].geometry),
                   "workers": args.workers, "batch_size": args.batch_size, "cpu_count": os.cpu_count(),
                   "load_avg_1min": round(os.getloadavg()[0], 2), "torch_threads": torch.get_num_threads()}
        results["cinestream"] = rate(loader(stream))
        results["memmap"] = rate(loader(MemmapFrames(tmp, order)))
        batch = next(iter(loader(stream)))
        results["train_step"] = {"device": args.device, "samples_per_s": train_rate(batch, args.train_steps,
                                                                                    args.device)}
        results["train_from_stream"] = rate(loader(stream), tiny_unet_step(args.device),
                                            max_batches=args.train_steps + 1)
        results["reader_headroom"] = round(results["cinestream"]["samples_per_s"]
                                           / results["train_step"]["samples_per_s"], 1)
    json.dump(results, sys.stdout, indent=1)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
