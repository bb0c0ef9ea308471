"""Duplicate input ids, found before a run starts.

Resume, accounting and the outputs' shard names all key rows by id; an input that holds an id
twice cannot be resumed exactly (which copy is done?) and cannot be accounted for. Such an
input is refused at start with the ids named. The check reads the id column alone and counts
ids in Ray tasks spread over the cluster, by hash bucket: the driver holds only the examples.
It runs once per output (recorded in `_state/`), not on every resume.
"""

from __future__ import annotations

from dataclasses import dataclass
import zlib
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

if TYPE_CHECKING:
    from . import Source


class DuplicateIdsError(ValueError):
    """The input holds some id more than once; the message names them."""


@dataclass
class DuplicateIds:
    ids: int  # distinct ids that occur more than once
    rows: int  # rows beyond the first of each
    examples: list[str]


_ROWS_PER_BUCKET = 2_000_000  # ids one counting task holds at once
# Inputs of one bucket in at most this many files are counted in the driver: reading a few id
# columns there takes milliseconds, where the first Ray task of a run waits on a cold worker.
_DRIVER_FILES = 8


def _read_ids(fs: Any, path: str, column: str, buckets: int) -> Any:
    """One file's ids, split into `buckets` by a hash that is the same in every process."""
    from .parquet import open_parquet

    with open_parquet(fs, path) as (_, pf):
        ids = pc.cast(pf.read(columns=[column]).column(0), pa.string()).combine_chunks()
    if buckets == 1:
        return ids
    which = np.fromiter((zlib.crc32((x or "").encode()) % buckets for x in ids.to_pylist()), np.int64, len(ids))
    return tuple(ids.filter(pa.array(which == b)) for b in range(buckets))


def _repeated(examples: int, *parts: pa.Array) -> DuplicateIds:
    """The ids of one bucket that occur more than once."""
    counts = pc.value_counts(pa.chunked_array(parts, pa.string()) if parts else pa.array([], pa.string()))
    many = counts.filter(pc.greater(counts.field("counts"), 1))
    return DuplicateIds(len(many), int(pc.sum(many.field("counts")).as_py() or 0) - len(many),
                        [str(x) for x in many.field("values").to_pylist()[:examples]])


def find_duplicate_ids(source: "Source", examples: int = 10) -> DuplicateIds:
    """Ids that occur more than once in `source`. Parquet: one task per file reads its id column
    and splits it by hash into buckets, one task per bucket counts it (plain Ray tasks on the
    workers already running: no shuffle service, no actors). Only the repeated ids come back.
    An input of one bucket in a few files is counted here, in the driver."""
    import ray

    if source.listing is not None:  # a folder's listing is in this process already
        return _repeated(examples, source.listing[source.id_column].combine_chunks().cast(pa.string()))
    if not source.partitioned:
        raise TypeError("the duplicate-id check reads Parquet files or a folder listing, not a user's own Dataset")
    buckets = max(1, -(-source.count() // _ROWS_PER_BUCKET))
    if buckets == 1 and len(source.files) <= _DRIVER_FILES:
        return _repeated(examples, *(_read_ids(source.fs, path, source.id_column, 1) for path in source.files))
    read = ray.remote(num_cpus=0.25, num_returns=buckets)(_read_ids)
    parts = [read.remote(source.fs, path, source.id_column, buckets) for path in source.files]
    by_bucket = [parts] if buckets == 1 else [[p[b] for p in parts] for b in range(buckets)]
    count = ray.remote(num_cpus=0.25)(_repeated)
    found = ray.get([count.remote(examples, *refs) for refs in by_bucket])
    return DuplicateIds(sum(f.ids for f in found), sum(f.rows for f in found),
                        sorted(x for f in found for x in f.examples)[:examples])


def refuse_duplicate_ids(source: "Source") -> None:
    found = find_duplicate_ids(source)
    if found.ids:
        shown = ", ".join(repr(x) for x in found.examples) + (" ..." if found.ids > len(found.examples) else "")
        raise DuplicateIdsError(
            f"the input has {found.ids} id(s) that occur more than once ({found.rows} extra rows): {shown}. "
            f"Every row needs its own `{source.id_column}` for resume and accounting to be exact: "
            "deduplicate the input, or set source.id_column to a column that is unique.")
