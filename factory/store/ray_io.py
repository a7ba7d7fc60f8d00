"""`factory.store.read(url) -> ray.data.Dataset`: a store as rows for Ray Data / Ray Train ingestion.

Ray's own `read_zarr` only understands Zarr v2, so this is a small custom Datasource: the driver
lists the samples (one per real frame, or one per subject), each read task reads a contiguous run
of them straight from the store's chunks. Rows carry the same fields as `CineStream` samples.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import ray.data
from ray.data.block import Block, BlockAccessor, BlockMetadata
from ray.data.datasource import Datasource, ReadTask

from factory.store.samples import SamplePool

ROW_MODES = {"frame": "frame", "subject": "sequence"}
BLOCK_BYTES = 64 * 2**20  # a read task yields blocks of about this size


def _blocks(pool: SamplePool, keys: np.ndarray, rows_per_block: int) -> Iterator[Block]:
    """The samples of `keys` as blocks of at most `rows_per_block` rows, one column per field."""
    for start in range(0, len(keys), rows_per_block):
        samples = pool.read(keys[start:start + rows_per_block])
        columns = {}
        for name in samples[0]:
            values = [s[name] for s in samples]
            same_shape = len({np.shape(v) for v in values}) == 1
            columns[name] = np.stack(values) if same_shape else values  # ragged: variable-shaped tensors
        yield BlockAccessor.batch_to_block(columns)


class StoreDatasource(Datasource):
    """Rows of one complete store: per real frame (`per="frame"`) or per subject (`per="subject"`)."""

    def __init__(self, url: str, per: str = "frame", labeled_only: bool = False):
        super().__init__()
        if per not in ROW_MODES:
            raise ValueError(f"per must be one of {sorted(ROW_MODES)}, got {per!r}")
        self.pool = SamplePool(url, ROW_MODES[per], labeled_only, follow=False)
        keys = self.pool.keys
        frames = len(keys) if per == "frame" else sum(self.pool.rows[int(i)]["n_frames"] for i in keys[:, 0])
        self._bytes = int(frames * np.prod(self.pool.geometry)) * 5  # float32 image + uint8 label

    def estimate_inmemory_data_size(self) -> int:
        return self._bytes

    def get_read_tasks(self, parallelism: int, per_task_row_limit: int | None = None,
                       data_context=None) -> list[ReadTask]:
        keys = self.pool.keys
        n_rows = len(keys)
        rows_per_block = max(1, BLOCK_BYTES * n_rows // max(self._bytes, 1))
        tasks = []
        for part in np.array_split(keys, max(1, min(parallelism, n_rows))):
            if len(part):
                metadata = BlockMetadata(num_rows=len(part), size_bytes=int(self._bytes * len(part) / n_rows),
                                         input_files=[self.pool.url], exec_stats=None)
                tasks.append(ReadTask(lambda part=part: _blocks(self.pool, part, rows_per_block), metadata,
                                      per_task_row_limit=per_task_row_limit))
        return tasks


def read(url: str, per: str = "frame", labeled_only: bool = False, **read_args) -> ray.data.Dataset:
    """A complete store as a Ray Dataset, one row per real frame (or per subject with `per="subject"`).

    Columns: `image` float32 (1, Z, H, W) in [-1, 1] and `label` uint8 (per subject: (1, T, Z, H, W),
    variable T), `labeled`, `phase`, `frame`, `index`, `subject_id`, `diagnosis`, `vendor` and the
    clinical values. For `iter_torch_batches`, select the numeric columns first (strings do not
    become tensors). `read_args` go to `ray.data.read_datasource` (e.g. `override_num_blocks`).
    """
    return ray.data.read_datasource(StoreDatasource(str(url), per, labeled_only), **read_args)
