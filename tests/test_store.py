"""Store contract: write, commit, finalise, read back, refuse incomplete or reused paths, verify."""

from __future__ import annotations

import collections
import json
import re
import subprocess
import sys
from pathlib import Path

import crc32c
import numpy as np
import pytest
import zarr

from factory.cli import main
from factory.data.clinical import empty_measurement, measure
from factory.errors import StoreError
from factory.presets import get_preset
from factory.store import shards
from factory.store.info import summary
from factory.store.reader import open_store
from factory.store.verify import verify_store
from factory.store.writer import StoreWriter

from conftest import make_subject
from store_builders import corrupt_frame, shard_index, shard_path, write_chunk_per_frame_store
from store_builders import write_store as build_store


ROW = {"source": "t", "vendor": "A", "diagnosis": "NOR", **empty_measurement()}


def write_store(path: Path, n: int = 3, finalize: bool = True) -> StoreWriter:
    writer = StoreWriter.create(str(path), n_subjects=n, preset=get_preset("tiny"), kind="cohort")
    for i in range(n):
        subject = make_subject(f"s{i}", n_frames=5 + i, seed=i)
        row = {"source": "test", "vendor": "A", "diagnosis": "NOR",
               **measure(subject.mask, subject.spacing_mm, subject.es_frame)}
        writer.write_subject(i, subject, row)
    if finalize:
        writer.finalize()
    return writer


def test_round_trip(tmp_path):
    path = tmp_path / "s.zarr"
    write_store(path)
    store = open_store(str(path))
    assert store.n_subjects == 3 and list(store.table["subject_id"]) == ["s0", "s1", "s2"]
    assert store.attrs["label_map"] == {"0": "background", "1": "RV", "2": "MYO", "3": "LV"}
    assert store.attrs["spacing_mm"] == [10.0, 2.5, 2.5]
    original = make_subject("s2", n_frames=7, seed=2)
    back = store.subject(2)
    assert back.image.shape == original.image.shape
    np.testing.assert_allclose(back.image, original.image, atol=1e-3)  # float16 storage
    np.testing.assert_array_equal(back.mask[original.labeled], original.mask[original.labeled])
    assert not back.mask[~original.labeled].any(), "unlabeled frames must not carry masks"
    assert back.phase[0] == 0 and back.phase[back.es_frame] == 100
    assert verify_store(str(path)) == []
    assert main(["verify", str(path)]) == 0
    assert main(["info", str(path)]) == 0
    assert "frames stored shard-per-subject" in summary(str(path))
    gone = subprocess.run(["bash", "-c", f"set -o pipefail; {sys.executable} -m factory.cli info {path} | true"],
                          capture_output=True, text=True)  # a reader that leaves before reading (`| head`)
    assert gone.returncode == 0 and gone.stderr == "", gone.stderr


def test_incomplete_store_is_refused(tmp_path):
    path = tmp_path / "s.zarr"
    writer = write_store(path, finalize=False)
    with pytest.raises(StoreError, match="incomplete"):
        open_store(str(path))
    assert open_store(str(path), require_complete=False).table.shape[0] == 3
    assert main(["verify", str(path)]) == 1
    writer.finalize()
    assert verify_store(str(path)) == []


def test_finalize_requires_every_subject(tmp_path):
    writer = StoreWriter.create(str(tmp_path / "s.zarr"), n_subjects=2, preset=get_preset("tiny"), kind="cohort")
    writer.write_subject(0, make_subject("a"), ROW)
    with pytest.raises(StoreError, match="not committed"):
        writer.finalize()


def test_rows_must_have_required_columns(tmp_path):
    writer = StoreWriter.create(str(tmp_path / "s.zarr"), n_subjects=1, preset=get_preset("tiny"), kind="cohort")
    with pytest.raises(StoreError, match="edv_ml"):
        writer.write_subject(0, make_subject("a"), {"source": "t", "vendor": "A", "diagnosis": "NOR"})


def test_existing_output_is_refused(tmp_path):
    path = tmp_path / "s.zarr"
    write_store(path, n=1)
    with pytest.raises(StoreError, match="already exists"):
        StoreWriter.create(str(path), n_subjects=1, preset=get_preset("tiny"), kind="cohort")
    StoreWriter.create(str(path), n_subjects=1, preset=get_preset("tiny"), kind="cohort", overwrite=True)


def test_verify_reports_corruption(tmp_path):
    path = tmp_path / "s.zarr"
    write_store(path)
    corrupt_frame(path, "image", 1, 0)
    problems = verify_store(str(path))
    assert any("subject 1" in p and "unreadable" in p for p in problems), problems


def test_verify_reports_bad_labels_and_table_edits(tmp_path):
    path = tmp_path / "s.zarr"
    write_store(path)
    zarr.open_group(str(path), mode="r+")["mask"][0, 0, 3, 30, 30] = 7
    table_path = path / "metadata.parquet"
    original = table_path.read_bytes()
    table_path.write_bytes(original + b"x")
    problems = verify_store(str(path))
    assert problems == [f"{path}/metadata.parquet: checksum differs from manifest.json (modified or corrupt table)"]
    with pytest.raises(StoreError, match="checksum differs"):  # every reader refuses the altered table
        open_store(str(path)).table
    table_path.write_bytes(original)
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["table"]["sha256"] = __import__("hashlib").sha256((path / "metadata.parquet").read_bytes()).hexdigest()
    (path / "manifest.json").write_text(json.dumps(manifest))
    problems = verify_store(str(path))
    assert any("subject 0" in p and "outside 0..3" in p for p in problems), problems


def test_store_on_an_fsspec_url():
    url = "memory://stores/s.zarr"
    writer = StoreWriter.create(url, n_subjects=1, preset=get_preset("tiny"), kind="cohort", overwrite=True)
    writer.write_subject(0, make_subject(), ROW)
    writer.finalize()
    assert verify_store(url) == []


def test_frame_arrays_are_one_shard_per_subject(tmp_path):
    path = build_store(tmp_path / "s.zarr", n=3)
    store = open_store(path)
    assert store.attrs["frame_storage"] == "shard-per-subject"
    for name in ("image", "mask"):
        assert store.group[name].shards == (1, 35, 12, 64, 64) and store.group[name].chunks == (1, 1, 12, 64, 64)
        assert store.manifest["arrays"][name]["shards"] == [1, 35, 12, 64, 64]
        for i, n_frames in enumerate(store.table["n_frames"]):  # every real frame stored (blank masks too), no padding
            stored = shard_index(path, name, i)[:, 0] != shards.EMPTY
            assert stored[:n_frames].all() and not stored[n_frames:].any()
    group = zarr.open_group(path, mode="r")  # zarr's own sharding codec, to check the reader's view of the shards
    pairs = [(2, 3), (0, 0), (1, 4), (2, 6), (2, 5)]
    for name, frames in zip(("image", "mask"), store.read_frames(pairs)):
        np.testing.assert_array_equal(frames, [group[name][i, t] for i, t in pairs])
        np.testing.assert_array_equal(store.read(name, 1), group[name][1])
    files = collections.Counter()
    for file in Path(path).rglob("*"):
        parts = file.relative_to(path).parts
        if file.is_file() and file.name not in ("zarr.json", "manifest.json", "metadata.parquet"):
            files[int(file.stem) if parts[0] == "rows" else int(parts[2])] += 1  # rows/<i>.json, <array>/c/<i>/...
    assert files == {0: 6, 1: 6, 2: 6}  # image and mask shards, labeled, phase, slice_mask, the commit record


@pytest.mark.parametrize("array", ["image", "mask", "labeled"])
def test_verify_reports_a_deleted_chunk_by_name(tmp_path, array):
    path = build_store(tmp_path / "s.zarr", n=2)
    chunk = {"image": "image/c/1/0/0/0/0", "mask": "mask/c/1/0/0/0/0", "labeled": "labeled/c/1/0"}[array]
    (Path(path) / chunk).unlink()
    problems = verify_store(path)
    assert len(problems) == 1 and "subject 1 (s001)" in problems[0] and chunk in problems[0], problems


def test_verify_reports_a_frame_missing_from_its_shard(tmp_path):
    path = build_store(tmp_path / "s.zarr", n=2)
    index = shard_index(path, "mask", 1).copy()
    index[1] = shards.EMPTY  # an unlabeled frame's mask: all background, so it would read as the same zeros
    pairs = index.astype("<u8").tobytes()
    shard = shard_path(path, "mask", 1)
    payload = shard.read_bytes()
    shard.write_bytes(payload[:-len(pairs) - 4] + pairs + crc32c.crc32c(pairs).to_bytes(4, "little"))
    assert not open_store(path).frame(1, 1)[1].any()
    problems = verify_store(path)
    assert len(problems) == 1 and "subject 1 (s001)" in problems[0] and "mask/c/1/0/0/0/0 frame 1" in problems[0], \
        problems


def test_a_corrupt_shard_index_is_reported(tmp_path):
    path = build_store(tmp_path / "s.zarr", n=2)
    shard = shard_path(path, "image", 1)
    payload = bytearray(shard.read_bytes())
    payload[-10] ^= 0xFF  # inside the index at the shard's end
    shard.write_bytes(bytes(payload))
    problems = verify_store(path)
    assert problems == [f"subject 1 (s001): array 'image', shard image/c/1/0/0/0/0: shard index fails its crc32c"
                        " checksum (corrupt or truncated shard)"], problems
    store = open_store(path)
    store.table
    for read in (lambda: store.read_frames([(0, 1), (1, 2)]), lambda: store.subject(1)):
        with pytest.raises(StoreError, match=re.escape("array 'image', subject 1 (s001), frame ")):
            read()


def test_a_store_of_per_frame_chunks_is_still_read(tmp_path):
    old = write_chunk_per_frame_store(tmp_path / "old.zarr", n=3)
    new = build_store(tmp_path / "new.zarr", n=3)
    old_store, new_store = open_store(old), open_store(new)
    assert "frame_storage" not in old_store.attrs and old_store.group["image"].shards is None
    assert verify_store(old) == []
    for i in range(3):
        np.testing.assert_array_equal(old_store.subject(i).image, new_store.subject(i).image)
        np.testing.assert_array_equal(old_store.subject(i).mask, new_store.subject(i).mask)
    pairs = [(2, 3), (0, 1), (1, 0), (2, 4)]
    for a, b in zip(old_store.read_frames(pairs), new_store.read_frames(pairs)):
        np.testing.assert_array_equal(a, b)
    (Path(old) / "mask/c/1/1/0/0/0").unlink()  # an unlabeled frame's mask: all background, yet it has a chunk
    problems = verify_store(old)
    assert len(problems) == 1 and "subject 1 (s001)" in problems[0] and "mask/c/1/1/0/0/0" in problems[0], problems


def test_an_unknown_frame_storage_is_refused(tmp_path, capsys):
    path = build_store(tmp_path / "s.zarr", n=1)
    metadata = json.loads((Path(path) / "zarr.json").read_text())
    metadata["attributes"]["frame_storage"] = "shard-per-cohort"
    (Path(path) / "zarr.json").write_text(json.dumps(metadata))
    with pytest.raises(StoreError, match="zarr.json: store-attributes field 'frame_storage': 'shard-per-cohort'"):
        open_store(path)
    assert main(["verify", path]) == 1
    assert "shard-per-cohort" in capsys.readouterr().out


def test_an_independent_zarr_implementation_reads_the_arrays(tmp_path):
    tensorstore = pytest.importorskip("tensorstore")
    path = build_store(tmp_path / "s.zarr", n=3)
    group = zarr.open_group(path, mode="r")
    for name in ("image", "mask", "labeled", "phase", "slice_mask"):
        array = tensorstore.open({"driver": "zarr3", "kvstore": {"driver": "file", "path": f"{path}/{name}/"}},
                                 read=True).result()
        np.testing.assert_array_equal(array.read().result(), group[name][:])
    corrupt_frame(path, "image", 1, 3)  # tensorstore checks the crc32c of each frame's chunk too
    array = tensorstore.open({"driver": "zarr3", "kvstore": {"driver": "file", "path": f"{path}/image/"}},
                             read=True).result()
    array[1, 2].read().result()
    with pytest.raises(ValueError, match="Digest mismatch"):
        array[1, 3].read().result()


def test_a_corrupt_chunk_is_named_by_array_subject_and_frame(tmp_path, capsys):
    path = build_store(tmp_path / "s.zarr", n=2)
    corrupt_frame(path, "image", 1, 3)
    expected = "array 'image', subject 1 (s001), frame 3: chunk unreadable"
    assert any(expected in p for p in verify_store(path))
    with pytest.raises(StoreError, match=re.escape(expected)):
        open_store(path).subject(1)
    assert main(["verify", path]) == 1
    assert "Task was destroyed" not in capsys.readouterr().err


def test_batched_reads_equal_frame_by_frame_reads(tmp_path):
    store = open_store(build_store(tmp_path / "s.zarr", n=4))
    rng = np.random.default_rng(0)
    real = [(i, t) for i, n in enumerate(store.table["n_frames"]) for t in range(n)]
    pairs = [real[k] for k in rng.integers(len(real), size=25)] + [(2, 0), (2, 1), (2, 2), (2, 2), (0, 3)]
    images, masks = store.read_frames(pairs)  # random order, repeats, and a run of consecutive frames
    assert images.dtype == np.float32 and masks.dtype == np.uint8 and images.shape == (30, 12, 64, 64)
    for (i, t), image, mask in zip(pairs, images, masks):
        expected_image, expected_mask = store.frame(i, t)
        np.testing.assert_array_equal(image, expected_image)
        np.testing.assert_array_equal(mask, expected_mask)
    masks_only, = store.read_frames(pairs, ("mask",))
    np.testing.assert_array_equal(masks_only, masks)
    assert [a.shape for a in store.read_frames([])] == [(0, 12, 64, 64)] * 2
    keys = [(i, t, z) for (i, t), z in zip(pairs, rng.integers(12, size=len(pairs)))]
    slices = store.read_slices(keys)
    np.testing.assert_array_equal(slices[0], images[np.arange(30), [z for _, _, z in keys]])
    np.testing.assert_array_equal(slices[1], masks[np.arange(30), [z for _, _, z in keys]])
    for i, (image, mask) in zip([3, 0, 1], store.read_sequences([3, 0, 1], per_read=2)):
        subject = store.subject(i)
        np.testing.assert_array_equal(image, subject.image)
        np.testing.assert_array_equal(mask, subject.mask)


def test_a_corrupt_chunk_inside_a_batched_read_is_named(tmp_path):
    path = build_store(tmp_path / "s.zarr", n=3)
    corrupt_frame(path, "mask", 1, 3)
    store = open_store(path)
    store.table  # loaded, as every reader of a complete store has it: the subject id is named too
    expected = "array 'mask', subject 1 (s001), frame 3: chunk unreadable"
    with pytest.raises(StoreError, match=re.escape(expected)):
        store.read_frames([(0, 1), (2, 0), (1, 2), (1, 3), (1, 4), (0, 0)])
    with pytest.raises(StoreError, match=re.escape(expected)):
        list(store.read_sequences([0, 1, 2]))
    with pytest.raises(StoreError, match=re.escape(expected)):
        store.read_slices([(0, 0, 5), (1, 3, 5)])


@pytest.mark.parametrize("damaged", ["manifest.json", "zarr.json", "metadata.parquet"])
def test_garbage_metadata_files_are_clear_errors(tmp_path, damaged, capsys):
    path = build_store(tmp_path / "s.zarr", n=1)
    (Path(path) / damaged).write_text("garbage")
    assert main(["info", path]) == 2
    err = capsys.readouterr().err
    assert damaged in err and "Traceback" not in err, err
    assert main(["verify", path]) == 1


def test_create_never_replaces_a_folder_that_is_not_a_store(tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("precious")
    with pytest.raises(StoreError, match="did not write"):
        StoreWriter.create(str(folder), n_subjects=1, preset=get_preset("tiny"), kind="cohort", overwrite=True)
    assert (folder / "notes.txt").read_text() == "precious"
    build_store(tmp_path / "s.zarr", n=1)
    build_store(tmp_path / "s.zarr", n=2, overwrite=True)  # a store is replaced
    assert open_store(str(tmp_path / "s.zarr")).n_subjects == 2
