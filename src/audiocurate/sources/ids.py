"""Null and duplicate input ids, found before a run starts.

Resume, accounting and the outputs' shard names all key rows by id; an input that holds an id
twice cannot be resumed exactly (which copy is done?) and cannot be accounted for, and a row
with no id cannot be told from another. Such an input is refused at start: null ids with
their count and where the first one is, duplicates with the ids named. The check reads the id
column alone and counts ids in Ray tasks spread over the cluster, by hash bucket: the driver
holds only the examples. It runs once per output (recorded in `_state/`), not on every resume.
"""

from __future__ import annotations

from dataclasses import dataclass
import zlib
from typing import TYPE_CHECKING, Any, Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

if TYPE_CHECKING:
    from ..config import RayConfig
    from . import Source


class InvalidIdsError(ValueError):
    """The input's ids cannot key its rows (null or repeated); the message says which."""


class DuplicateIdsError(InvalidIdsError):
    """The input holds some id more than once; the message names them."""


class NullIdsError(InvalidIdsError):
    """The input has rows whose id is null; the message counts them and says where the first is."""


@dataclass
class DuplicateIds:
    ids: int  # distinct ids that occur more than once
    rows: int  # rows beyond the first of each
    examples: list[str]
    null_rows: int = 0  # rows whose id is null (not counted as duplicates)
    first_null: Optional[str] = None  # where the first of them is, e.g. "row index 5 of /data/in.parquet"


@dataclass(frozen=True)
class NullIds:
    """The null ids of one file (or listing): how many, and the row index of the first."""

    count: int
    first_row: int  # -1 where there is none


def null_ids(ids: pa.Array) -> NullIds:
    """How many of `ids` are null, and the index of the first."""
    count = ids.null_count
    return NullIds(count, int(pc.index(ids.is_null(), True).as_py()) if count else -1)


_ROWS_PER_BUCKET = 2_000_000  # ids one counting task holds at once
# Inputs of one bucket in at most this many files are counted in the driver: reading a few id
# columns there takes milliseconds, where the first Ray task of a run waits on a cold worker.
_DRIVER_FILES = 8


def _read_ids(fs: Any, path: str, column: str, buckets: int) -> tuple[Any, ...]:
    """One file's null ids, then its other ids split into `buckets` by a hash that is the same
    in every process."""
    from .parquet import open_parquet

    with open_parquet(fs, path) as (_, pf):
        ids = pc.cast(pf.read(columns=[column]).column(0), pa.string()).combine_chunks()
    nulls = null_ids(ids)
    ids = ids.drop_null() if nulls.count else ids
    if buckets == 1:
        return nulls, ids
    which = np.fromiter((zlib.crc32(x.encode()) % buckets for x in ids.to_pylist()), np.int64, len(ids))
    return (nulls, *(ids.filter(pa.array(which == b)) for b in range(buckets)))


def _repeated(examples: int, *parts: pa.Array) -> DuplicateIds:
    """The ids of one bucket that occur more than once."""
    counts = pc.value_counts(pa.chunked_array(parts, pa.string()) if parts else pa.array([], pa.string()))
    many = counts.filter(pc.greater(counts.field("counts"), 1))
    return DuplicateIds(len(many), int(pc.sum(many.field("counts")).as_py() or 0) - len(many),
                        [str(x) for x in many.field("values").to_pylist()[:examples]])


def _with_nulls(found: DuplicateIds, nulls: list[tuple[str, NullIds]]) -> DuplicateIds:
    """`found` with the null ids of each file (in file order) counted, and the first located."""
    found.null_rows = sum(n.count for _, n in nulls)
    first = next(((where, n) for where, n in nulls if n.count), None)
    if first is not None:
        found.first_null = f"row index {first[1].first_row} of {first[0]}"
    return found


def find_duplicate_ids(source: "Source", examples: int = 10, ray_config: Optional["RayConfig"] = None) -> DuplicateIds:
    """Ids that occur more than once in `source`, and its null ids. Parquet: one task per file
    reads its id column, counts its nulls and splits the rest by hash into buckets, one task per
    bucket counts it (plain Ray tasks on the workers already running: no shuffle service, no
    actors). Only the repeated ids and the null counts come back. An input of one bucket in a
    few files is counted here, in the driver. `ray_config`: what each task reserves
    (`ray.id_check_task_cpus`), else the default."""
    import ray

    from ..config import RayConfig

    cpus = (ray_config or RayConfig()).id_check_task_cpus

    if source.listing is not None:  # a folder's listing is in this process already
        ids = source.listing[source.id_column].combine_chunks().cast(pa.string())
        nulls = null_ids(ids)
        where = "the folder's listing (manifest rows first, then files the manifest does not name)"
        return _with_nulls(_repeated(examples, ids.drop_null()), [(where, nulls)])
    if not source.partitioned:
        raise TypeError("the duplicate-id check reads Parquet files or a folder listing, not a user's own Dataset")
    buckets = max(1, -(-source.count() // _ROWS_PER_BUCKET))
    if buckets == 1 and len(source.files) <= _DRIVER_FILES:
        read_here = [_read_ids(source.fs, path, source.id_column, 1) for path in source.files]
        return _with_nulls(_repeated(examples, *(ids for _, ids in read_here)),
                           [(path, nulls) for path, (nulls, _) in zip(source.files, read_here)])
    read = ray.remote(num_cpus=cpus, num_returns=buckets + 1)(_read_ids)
    parts = [read.remote(source.fs, path, source.id_column, buckets) for path in source.files]
    by_bucket = [[p[1 + b] for p in parts] for b in range(buckets)]
    count = ray.remote(num_cpus=cpus)(_repeated)
    found = ray.get([count.remote(examples, *refs) for refs in by_bucket])
    nulls = ray.get([p[0] for p in parts])
    return _with_nulls(DuplicateIds(sum(f.ids for f in found), sum(f.rows for f in found),
                                    sorted(x for f in found for x in f.examples)[:examples]),
                       list(zip(source.files, nulls)))


def refuse_duplicate_ids(source: "Source", ray_config: Optional["RayConfig"] = None) -> None:
    """Refuse an input with null ids (first: they cannot be counted as duplicates of each
    other) or with an id twice."""
    found = find_duplicate_ids(source, ray_config=ray_config)
    if found.null_rows:
        values = "value" if found.null_rows == 1 else "values"
        raise NullIdsError(
            f"the id column `{source.id_column}` has {found.null_rows} null {values} (the first at "
            f"{found.first_null}). Every row needs an id for resume and accounting to be exact: fill "
            "them in, drop those rows, or set source.id_column to a column that has a value in every row.")
    if found.ids:
        shown = ", ".join(repr(x) for x in found.examples) + (" ..." if found.ids > len(found.examples) else "")
        raise DuplicateIdsError(
            f"the input has {found.ids} id(s) that occur more than once ({found.rows} extra rows): {shown}. "
            f"Every row needs its own `{source.id_column}` for resume and accounting to be exact: "
            "deduplicate the input, or set source.id_column to a column that is unique.")
