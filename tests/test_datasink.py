"""The hand-off from sampler actors to the store: work units from the plan itself (as many for every actor),
native columns through a Ray Data block, every metadata column and every array kept, nothing recomputed."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
from ray.data.block import BlockAccessor

from factory.bundle import load_bundle
from factory.errors import StoreError
from factory.presets import get_preset
from factory.sample.job import (DEMO_BUNDLE, GROUP, RunSpec, actor_pool, plan_groups, prepare_store, work_unit_count,
                                work_units)
from factory.sample.pipeline import CinePipeline, SamplerSettings
from factory.sample.plan import make_plan
from factory.store.datasink import ZarrDatasink, column_subjects, subject_columns
from factory.store.layout import table_columns
from factory.store.reader import open_store
from factory.store.writer import StoreWriter

TINY = get_preset("tiny")


@pytest.fixture(scope="module")
def generated():
    """Three subjects of different cycle lengths (ragged arrays), sampled with a tolerance (its two extra columns)."""
    pipeline = CinePipeline.from_bundle(load_bundle(DEMO_BUNDLE, stages=("vae", "anatomy", "motion")),
                                        SamplerSettings(steps=1, max_gate_attempts=1, tolerance="ef=100",
                                                        max_motion_attempts=1))
    plan = make_plan(3, TINY, seed=2, frames=3)
    plan["frames"], plan["es_frame"] = [3, 4, 5], [1, 2, 2]
    return pipeline(plan)


def as_block(generated):
    """The columns of `generated` as the datasink receives them: a Ray Data block."""
    columns = subject_columns([g.row["plan_row"] for g in generated], [g.subject for g in generated],
                              [g.row for g in generated])
    assert all(isinstance(c, np.ndarray) for c in columns.values())
    return BlockAccessor.batch_to_block(columns)


def test_the_hand_off_keeps_every_metadata_column_and_array(generated):
    back = list(column_subjects(as_block(generated), TINY.geometry.spacing_mm))
    assert [i for i, _, _ in back] == [g.row["plan_row"] for g in generated]
    for g, (_, subject, row) in zip(generated, back):
        assert row == g.row and list(row) == list(g.row), "every column, its value and its order"
        assert {"within_tolerance", "motion_attempts", "requested_vendor", "gate_reasons"} <= set(row)
        json.dumps(row)  # plain Python values: the commit record is JSON
        assert subject.subject_id == g.subject.subject_id and subject.es_frame == g.subject.es_frame
        np.testing.assert_array_equal(subject.image, g.subject.image.astype(np.float16))
        for name in ("mask", "labeled", "phase", "slice_mask"):
            np.testing.assert_array_equal(getattr(subject, name), getattr(g.subject, name), err_msg=name)
            assert getattr(subject, name).dtype == getattr(g.subject, name).dtype, name


def test_the_datasink_commits_the_rows_the_pipeline_made(tmp_path, generated):
    url = str(tmp_path / "syn.zarr")
    writer = StoreWriter.create(url, n_subjects=3, preset=TINY, kind="synthetic", max_frames=5)
    assert ZarrDatasink(url).write([as_block(generated)], None) == 3
    writer.finalize()
    table = open_store(url).table
    for g, (_, stored) in zip(generated, table.iterrows()):
        for name, value in g.row.items():
            assert stored[name] == value or (pd.isna(stored[name]) and value in (None, "")), name
    assert set(generated[0].row) <= set(table.columns) and set(table_columns()) & set(table.columns)


def test_metadata_may_not_shadow_a_subject_column(generated):
    with pytest.raises(StoreError, match="es_frame"):
        subject_columns([0], [generated[0].subject], [{**generated[0].row, "es_frame": 1}])


def test_work_units_come_from_the_plan_itself():
    plan = make_plan(7, TINY, seed=0)
    units = work_units(plan, plan_groups(len(plan), 3))
    assert [len(u) for u in units] == [3, 2, 2] and [set(u[GROUP]) for u in units] == [{0}, {1}, {2}]
    pd.testing.assert_frame_equal(pd.concat(units).drop(columns=GROUP), plan)


@pytest.mark.parametrize("n, workers, batch_size, sizes", [
    (10, 2, 4, [3, 3, 2, 2]),  # `make demo` before: groups of 4, 4, 2 left one actor alone for the last third
    (10, 2, 8, [5, 5]), (8, 1, 2, [2, 2, 2, 2]), (1, 4, 8, [1]), (3, 2, 8, [2, 1]), (100, 3, 8, [7] * 10 + [6] * 5),
])
def test_every_actor_gets_as_many_work_units(n, workers, batch_size, sizes):
    groups = plan_groups(n, work_unit_count(n, workers, batch_size))
    assert [len(g) for g in groups] == sizes and sum(groups, []) == list(range(n))
    assert len(groups) % workers == 0 or len(groups) == n


def test_an_autoscaling_pool_is_grouped_for_its_most_actors(tmp_path):
    out, plan = str(tmp_path / "syn.zarr"), make_plan(10, TINY, seed=0, frames=3)
    spec = RunSpec(bundle=str(DEMO_BUNDLE), out=out, settings=SamplerSettings(), batch_size=8, workers=2,
                   min_workers=1, cpus_per_worker=1)
    pool = actor_pool(spec)
    assert (pool.min_size, pool.max_size) == (1, 2)
    fixed = actor_pool(replace(spec, min_workers=None))
    assert fixed.min_size == fixed.max_size == 2
    assert prepare_store(spec, plan, resume=False, overwrite=False).attrs["sampler"]["work_units"] == 2


def test_a_resumed_run_keeps_its_work_units(tmp_path):
    """The grouping is recorded at the start: resuming with another worker count regroups nothing."""
    out, plan = str(tmp_path / "syn.zarr"), make_plan(10, TINY, seed=0, frames=3)
    spec = RunSpec(bundle=str(DEMO_BUNDLE), out=out, settings=SamplerSettings(), batch_size=4, workers=2,
                   cpus_per_worker=1)
    assert prepare_store(spec, plan, resume=False, overwrite=False).attrs["sampler"]["work_units"] == 4
    resumed = prepare_store(replace(spec, workers=3), plan, resume=True, overwrite=False)
    assert resumed.attrs["sampler"]["work_units"] == 4
    with pytest.raises(StoreError, match="sampler settings"):
        prepare_store(replace(spec, batch_size=2), plan, resume=True, overwrite=False)


def test_a_run_started_before_motion_keyframes_resumes_with_every_frame(tmp_path):
    """A store whose sampler settings predate `motion_keyframes` was sampled with every frame (0): resuming
    it so works, and the new default is refused with a message that names the setting and both values."""
    out, plan = str(tmp_path / "syn.zarr"), make_plan(10, TINY, seed=0, frames=3)
    spec = RunSpec(bundle=str(DEMO_BUNDLE), out=out, settings=SamplerSettings(motion_keyframes=0), batch_size=4,
                   workers=2, cpus_per_worker=1)
    writer = prepare_store(spec, plan, resume=False, overwrite=False)
    writer.group.attrs["sampler"] = {k: v for k, v in writer.attrs["sampler"].items() if k != "motion_keyframes"}
    assert prepare_store(spec, plan, resume=True, overwrite=False).attrs["sampler"].get("motion_keyframes") is None
    with pytest.raises(StoreError, match=r"motion_keyframes 8 \(the store: 0\)$"):
        prepare_store(replace(spec, settings=SamplerSettings()), plan, resume=True, overwrite=False)
