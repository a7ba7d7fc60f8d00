"""CineStream: sample selection, mixing, sharding over workers x ranks, following a writer, training, Ray Data."""

from __future__ import annotations

import collections
import multiprocessing
import re

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from factory.errors import StoreError
from factory.presets import get_preset
from factory.store.reader import open_store
from factory.store.writer import StoreWriter
from factory.stream import CineStream
from factory.stream import plan

from store_builders import corrupt_frame, write_chunk_per_frame_store, write_in_two_parts, write_store


@pytest.fixture(scope="module")
def stores(tmp_path_factory) -> tuple[str, str]:
    """A cohort-like store (ED/ES labeled) and a synthetic-like store (all frames labeled)."""
    root = tmp_path_factory.mktemp("stores")
    return write_store(root / "cohort.zarr", n=6), write_store(root / "synthetic.zarr", n=4, kind="synthetic",
                                                               prefix="syn")


def real_frames(url: str, labeled_only: bool = False) -> set[tuple[int, int]]:
    """(subject, frame) of every real (and, if asked, labeled) frame of a store, read independently."""
    store = open_store(url)
    labeled = store.group["labeled"][:]
    return {(i, t) for i, n in enumerate(store.table["n_frames"]) for t in range(n)
            if labeled[i, t] or not labeled_only}


def key(sample: dict) -> tuple[int, int, int]:
    return int(sample["store"]), int(sample["index"]), int(sample["frame"])


def test_quotas_and_draws_are_exact():
    assert plan.quotas([10, 3], None, None) == [10, 3]
    assert plan.quotas([10, 3], [0.7, 0.3], 101) == [71, 30]
    assert sum(plan.quotas([5, 5, 5], [1, 1, 1], 100)) == 100
    drawn = plan.draw(7, 30, np.random.default_rng(0))
    assert set(np.bincount(drawn, minlength=7)) <= {4, 5}, "oversampling must be balanced"
    order = plan.epoch_order([7, 4], [30, 2], shuffle=True, seed=1, epoch=0)
    shards = [plan.shard(order, s, 3) for s in range(3)]
    assert sorted(map(tuple, np.concatenate(shards))) == sorted(map(tuple, order))
    assert max(map(len, shards)) - min(map(len, shards)) <= 1
    assert {len(plan.shard(order, s, 3, even=True)) for s in range(3)} == {10}


def test_samples_are_real_frames_with_metadata(stores):
    cohort, _ = stores
    samples = list(CineStream(cohort, shuffle=False))
    assert {(int(s["index"]), s["frame"]) for s in samples} == real_frames(cohort)
    first = samples[0]
    assert first["image"].shape == (1, 12, 64, 64) and first["image"].dtype == torch.float32
    assert first["label"].shape == (1, 12, 64, 64) and first["label"].dtype == torch.uint8
    store = open_store(cohort)
    image, mask = store.frame(0, 0)
    np.testing.assert_array_equal(first["image"][0].numpy(), image)
    np.testing.assert_array_equal(first["label"][0].numpy(), mask)
    assert first["subject_id"] == "s000" and first["diagnosis"] == "NOR" and first["phase"] == 0.0
    assert first["labeled"] and np.isfinite(first["edv_ml"])


def test_labeled_only_slice_and_sequence_modes(stores):
    cohort, _ = stores
    labeled = list(CineStream(cohort, labeled_only=True, seed=3))
    assert all(s["labeled"] for s in labeled)
    assert {(int(s["index"]), s["frame"]) for s in labeled} == real_frames(cohort, labeled_only=True)
    slices = list(CineStream(cohort, mode="slice", labeled_only=True))
    assert len(slices) == 10 * len(labeled) and max(s["slice"] for s in slices) == 9, "padding slices yielded"
    assert slices[0]["image"].shape == (1, 64, 64)
    sequences = list(CineStream(cohort, mode="sequence", shuffle=False))
    assert [s["image"].shape[1] for s in sequences] == list(open_store(cohort).table["n_frames"])
    assert sequences[0]["labeled"].shape == sequences[0]["phase"].shape == (sequences[0]["image"].shape[1],)


def test_mixing_proportions_and_epochs(stores):
    cohort, synthetic = stores
    stream = CineStream({cohort: 0.25, synthetic: 0.75}, epoch_size=120, seed=5)
    epoch0 = [key(s) for s in stream]
    assert len(epoch0) == stream.samples_per_epoch == 120
    counts = collections.Counter(k[0] for k in epoch0)
    assert counts == {0: 30, 1: 90}
    # the synthetic store has 22 frames: each is drawn 4 or 5 times for its 90 draws
    assert set(collections.Counter(k for k in epoch0 if k[0] == 1).values()) <= {4, 5}
    assert epoch0 == [key(s) for s in stream], "same epoch, same order"
    stream.set_epoch(1)
    assert [key(s) for s in stream] != epoch0


def loader(dataset: CineStream, workers: int, context: str = "spawn") -> DataLoader:
    return DataLoader(dataset, batch_size=None, num_workers=workers, multiprocessing_context=context)


def test_no_duplicates_no_gaps_across_workers_and_ranks(stores):
    cohort, synthetic = stores
    seen = []
    for rank, start_method in ((0, "spawn"), (1, "fork")):  # both start methods, one rank each
        stream = CineStream([cohort, synthetic], rank=rank, world_size=2, seed=11)
        seen += [key(s) for s in loader(stream, workers=2, context=start_method)]
    expected = {(0, *f) for f in real_frames(cohort)} | {(1, *f) for f in real_frames(synthetic)}
    duplicates = [k for k, n in collections.Counter(seen).items() if n > 1]
    assert not duplicates and set(seen) == expected


def test_follow_consumes_a_store_while_it_is_written(tmp_path):
    url, go_file = str(tmp_path / "growing.zarr"), tmp_path / "first-sample-arrived"
    StoreWriter.create(url, n_subjects=5, preset=get_preset("tiny"), kind="cohort")
    with pytest.raises(StoreError, match="incomplete"):
        CineStream(url)
    writer = multiprocessing.get_context("spawn").Process(target=write_in_two_parts, args=(url, str(go_file)))
    writer.start()
    try:
        stream = CineStream(url, follow=True, labeled_only=True, poll_interval_s=0.1, follow_timeout_s=120)
        keys, complete_at_first = [], None
        for sample in loader(stream, workers=2, context="fork"):
            if complete_at_first is None:
                complete_at_first = open_store(url, require_complete=False).complete
                go_file.touch()
            keys.append(key(sample))
    finally:
        writer.join(timeout=120)
    assert writer.exitcode == 0 and complete_at_first is False, "the first sample must arrive mid-write"
    assert len(keys) == len(set(keys)) and {k[1:] for k in keys} == real_frames(url, labeled_only=True)


def test_monai_unet_trains_from_the_dataloader(stores):
    from monai.losses import DiceCELoss
    from monai.networks.nets import UNet
    from monai.transforms import RandFlipd

    cohort, synthetic = stores
    stream = CineStream([cohort, synthetic], labeled_only=True, seed=2,
                        transform=RandFlipd(keys=["image", "label"], prob=0.5, spatial_axis=2))
    loader = DataLoader(stream, batch_size=2)
    net = UNet(spatial_dims=3, in_channels=1, out_channels=4, channels=(4, 8), strides=((1, 2, 2),))
    optimiser = torch.optim.Adam(net.parameters(), lr=1e-3)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    losses = []
    for _, batch in zip(range(2), loader):
        assert batch["image"].shape == (2, 1, 12, 64, 64) and len(batch["subject_id"]) == 2
        optimiser.zero_grad()
        loss = loss_fn(net(batch["image"]), batch["label"])
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    assert len(losses) == 2 and all(np.isfinite(losses))


def test_bad_inputs_name_the_store(tmp_path, stores):
    missing = str(tmp_path / "missing.zarr")
    with pytest.raises(StoreError, match="missing.zarr"):
        CineStream(missing)
    with pytest.raises(ValueError, match="follow"):
        CineStream({stores[0]: 1.0}, follow=True)
    with pytest.raises(ValueError, match="mode"):
        CineStream(stores[0], mode="volume")
    with pytest.raises(ValueError, match="epoch_size"):
        CineStream(stores[0], epoch_size=10)


def test_a_corrupt_chunk_is_named_by_the_stream(tmp_path):
    url = write_store(tmp_path / "s.zarr", n=3)
    corrupt_frame(url, "image", 1, 3)
    with pytest.raises(StoreError, match=re.escape("array 'image', subject 1 (s001), frame 3: chunk unreadable")):
        list(CineStream(url, seed=0))


def test_a_store_of_per_frame_chunks_streams_the_same_samples(tmp_path):
    old = write_chunk_per_frame_store(tmp_path / "old.zarr", n=4)  # the layout before per-subject shards
    new = write_store(tmp_path / "new.zarr", n=4)
    for mode in ("frame", "slice", "sequence"):
        from_old, from_new = (list(CineStream(url, mode=mode, seed=2)) for url in (old, new))
        assert len(from_old) == len(from_new) > 0
        for a, b in zip(from_old, from_new):
            assert int(a["index"]) == int(b["index"]) and a.get("frame") == b.get("frame")
            assert torch.equal(a["image"], b["image"]) and torch.equal(a["label"], b["label"])


@pytest.mark.slow
def test_ray_data_reader(stores):
    ray = pytest.importorskip("ray")
    from factory.store import read

    cohort, _ = stores
    ray.init(address="local", num_cpus=1, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        dataset = read(cohort)
        assert dataset.count() == len(real_frames(cohort))
        assert read(cohort, per="subject").count() == 6
        rows = 0
        for batch in dataset.select_columns(["image", "label", "frame", "labeled"]).iter_torch_batches(batch_size=8):
            assert batch["image"].shape[1:] == (1, 12, 64, 64) and batch["image"].dtype == torch.float32
            rows += len(batch["frame"])
        assert rows == len(real_frames(cohort))
    finally:
        ray.shutdown()
