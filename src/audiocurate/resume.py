"""Resume by input partition: what is finished is known per Parquet row group, from the output
shards' footers, never from a list of every finished id.

* Every row read from a Parquet input carries `_part`, its row group's key (the file's path
  and size, and the group's index; `sources.parquet.read_planned`). The sink counts the rows
  of each part in a shard and stores the counts in the shard's Parquet footer
  (`audiocurate.parts`, `sinks.with_part_footer`); `_part` itself is not written. A segment row counts 1/segments of its recording, so a part is finished when
  the counts reach its rows whichever way recordings were cut.
* On resume the driver reads only the footers: its memory and requests grow with the shards
  and row groups, not with the rows. Finished row groups are not read at all. Row groups that
  were being worked on when the run stopped are read with the ids already written, taken from
  just the shards that hold their rows, and those rows are dropped in the read task: in
  parallel, per file, never through one actor.
* `--limit N` is the first N rows in file order, as whole row groups and one group's head.

Sources with no stable partitions (a folder listing, a user's own Dataset) resume by id.

This module plans; it imports the sinks (footers, written ids) and the Parquet reader (row
groups), and neither imports it.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Optional

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from . import contract as C
from .contract import WRITTEN_SEGMENTS
from .sinks import FOOTER_KEY, written_ids
from .sources.parquet import Partition, group_ids, plan_items, row_groups

if TYPE_CHECKING:
    from .sinks import OutputDir
    from .sources import Source

_EPS = 1e-6


@dataclass
class Progress:
    """What the output's footers say: rows written per part, and which shards hold each part."""

    written: dict[str, float] = field(default_factory=dict)
    shards: dict[str, list[str]] = field(default_factory=dict)
    unpartitioned_shards: list[str] = field(default_factory=list)
    rows: dict[str, int] = field(default_factory=dict)  # rows in each shard, by path


def read_progress(out: "OutputDir", splits: tuple[str, ...]) -> Progress:
    from concurrent.futures import ThreadPoolExecutor

    def footer(path: str) -> tuple[dict[bytes, bytes], int]:
        with out.fs.open_input_file(path) as f:
            pf = pq.ParquetFile(f)
            return pf.schema_arrow.metadata or {}, pf.metadata.num_rows

    progress = Progress()
    written: dict[str, float] = defaultdict(float)
    paths = [p for split in splits for p in out.part_files(split)]
    # Footers are independent small reads: on object storage, their latency is what costs.
    with ThreadPoolExecutor(max_workers=32) as pool:
        footers = list(pool.map(footer, paths))
    for path, (meta, rows) in zip(paths, footers):
        progress.rows[path] = rows
        if FOOTER_KEY not in meta:
            progress.unpartitioned_shards.append(path)
            continue
        for key, n in json.loads(meta[FOOTER_KEY]).items():
            written[key] += n
            progress.shards.setdefault(key, []).append(path)
    progress.written = dict(written)
    return progress


@dataclass
class ReadPlan:
    """The Parquet reads of one attempt: per file, the row groups to read (and how many of
    their rows), and the ids already finished in groups that were cut off mid-way."""

    items: list[dict[str, Any]]
    input_rows: int  # rows in scope (all, or the first N)
    finished_rows: int  # of those, finished before this attempt (whole groups, and ids of cut-off ones)
    skip_segments: list[str]  # segments already written of recordings not finished
    groups: dict[str, int] = field(default_factory=dict)  # in scope / finished / cut off / read by id

    @property
    def remaining(self) -> bool:
        return bool(self.items) and self.finished_rows < self.input_rows


def partitions(source: "Source") -> list[Partition]:
    """The input's row groups in file order, from the files' footers."""
    return row_groups(source.fs, source.root, source.files)


def plan_reads(source: "Source", out: "OutputDir", splits: tuple[str, ...], *, resumed: bool,
               limit: Optional[int] = None, segmented: bool = False) -> ReadPlan:
    scope: list[tuple[Partition, int]] = []
    left = limit
    every = partitions(source)
    for p in every:
        if left is not None and left <= 0:
            break
        take = p.rows if left is None else min(p.rows, left)
        scope.append((p, take))
        if left is not None:
            left -= take
    progress = read_progress(out, splits) if resumed else Progress()
    if progress.unpartitioned_shards:
        raise RuntimeError(f"{len(progress.unpartitioned_shards)} shards of this output carry no partition "
                           "counts (written by an older audiocurate); run it again with --restart")
    unknown = set(progress.written) - {p.key for p in every}
    if unknown:
        raise RuntimeError(f"{len(unknown)} row groups this output holds rows of are not in the input any more (a file "
                           "was rewritten, resized or moved since): resuming could write their rows twice. Restore "
                           "the input, or run again with --restart")
    todo: list[tuple[Partition, int]] = []
    finished = 0
    for p, take in scope:
        n = progress.written.get(p.key, 0.0)
        if take == p.rows and n >= p.rows - _EPS:
            finished += p.rows
        elif take > 0:
            todo.append((p, take))
    # Groups cut off mid-way: the ids written, from the shards that hold their rows only; each
    # file's plan item gets those of its own cut-off groups (their id column is read here).
    cut_off = [(p, take) for p, take in todo if progress.shards.get(p.key)]
    partial_shards = sorted({s for p, _ in cut_off for s in progress.shards[p.key]})
    done_ids, skip_segments = written_ids(out, partial_shards, source.id_column, segmented)
    done_set = set(done_ids)
    by_parent: dict[str, list[str]] = defaultdict(list)
    for sid in skip_segments:
        by_parent[sid.rsplit("@", 1)[0]].append(sid)
    items = plan_items(todo)
    for p, take in cut_off:
        ids = _group_ids(source, p)
        item = items[p.path]
        item["done"].extend(i for i in ids if i in done_set)
        item["segments_done"].extend({"parent": i, "segments": by_parent[i]} for i in ids if i in by_parent)
        finished += sum(1 for i in ids[:take] if i in done_set)  # done ids count as far as they are in scope
    groups = {"in_scope": len(scope), "finished": len(scope) - len(todo), "cut_off": len(cut_off),
              "shards_read_for_ids": len(partial_shards)}
    return ReadPlan(list(items.values()), sum(t for _, t in scope), finished, skip_segments, groups)


def _group_ids(source: "Source", p: Partition) -> list[str]:
    """The ids of one input row group (its id column only)."""
    return group_ids(source.fs, p, source.id_column)


class DropWrittenSegments:
    """Drop the segments of a cut-off recording that were written already (each segment row
    carries its recording's list), in a task per block. Twice: right after segmenting, those
    that settled there (`settled_only`), so they are not written again; after transcription,
    the rest, which were transcribed again only so the transcript filters that judge a
    segment against its recording's others (`filters.speaking_rate`) see all of them, as the
    uninterrupted run did."""

    def __init__(self, id_column: str, settled_only: bool = False):
        self.id_column = id_column
        self.settled_only = settled_only

    def __call__(self, table: pa.Table) -> pa.Table:
        if WRITTEN_SEGMENTS not in table.column_names:
            return table
        ids = pc.cast(table[self.id_column], pa.string()).to_pylist()
        written = [bool(w and i in w) for i, w in zip(ids, table[WRITTEN_SEGMENTS].to_pylist())]
        if self.settled_only:
            active = C.active_mask(C.ensure_status(table))
            return table.filter(pa.array([not (w and not a) for w, a in zip(written, active)], pa.bool_()))
        return table.filter(pa.array([not w for w in written], pa.bool_())).drop_columns([WRITTEN_SEGMENTS])
