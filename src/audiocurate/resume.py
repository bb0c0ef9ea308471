"""What is left to do of a source's rows, for every source kind: one `ResumePlan`, from the
output's progress (`run_state`) and the source.

By partition (Parquet inputs), from the output shards' footers, never from a list of every
finished id:

* Every row read from a Parquet input carries `_part`, its row group's key (the file's path
  and size, and the group's index; `sources.parquet.read_planned`). The sink counts the rows
  of each part in a shard and stores the counts in the shard's Parquet footer
  (`audiocurate.parts`, `sinks.with_part_footer`); `_part` itself is not written. A segment row
  counts 1/segments of its recording, so a part is finished when the counts reach its rows
  whichever way recordings were cut.
* On resume the driver reads only the footers: its memory and requests grow with the shards
  and row groups, not with the rows. Finished row groups are not read at all. Row groups that
  were being worked on when the run stopped are read with the ids already written, taken from
  just the shards that hold their rows, and those rows are dropped in the read task: in
  parallel, per file, never through one actor.
* `--limit N` is the first N rows in file order, as whole row groups and one group's head.

By id, sources with no stable partitions (a folder listing, a user's own Dataset, a finished
output's stored rows for `refilter`): the ids every shard holds, and the first N ids for `--limit`.

This module plans; it imports the run state (footers, written ids) and the Parquet reader (row
groups), and neither imports it.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Optional, Protocol

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs

from . import contract as C
from .contract import WRITTEN_SEGMENTS
from .run_state import SPLITS, OutputFiles, Progress, RunState, read_progress, written_ids
from .sources.parquet import Partition, group_ids, plan_items, row_groups

_EPS = 1e-6


class Source(Protocol):
    """What a plan needs of a source (`sources.Source` and its kinds), named here so this module
    stays below the sources and the sinks."""

    id_column: str
    fs: pafs.FileSystem
    root: str
    files: list[str]

    @property
    def partitioned(self) -> bool: ...
    def count(self) -> int: ...
    def first_ids(self, n: int) -> tuple[list[str], list[str]]: ...


@dataclass
class ResumePlan:
    """One attempt's scope and what of it is done, in the unit the source resumes by: row
    groups (`reads`, a Parquet source) or rows (`skip_ids`, every other source).

    `done`, `partial` and `left` count that unit: finished, cut off mid-way (some of its output
    rows written: a row group's rows, a recording's segments), untouched."""

    unit: str  # "row group" or "row"
    input_rows: int  # rows in scope (all, or the first N)
    finished_rows: int  # of those, finished before this attempt
    done: int
    partial: int
    left: int
    skip_segments: list[str] = field(default_factory=list)  # segments written of recordings not finished
    keep_ids: Optional[list[str]] = None  # `--limit`: the ids in scope (the report's scope too)
    reads: Optional[list[dict[str, Any]]] = None  # by row group: per file, the groups to read and ids done
    skip_ids: list[str] = field(default_factory=list)  # by row: the input rows finished
    files: Optional[list[str]] = None  # by row with `--limit`: the files that hold the scope
    groups: Optional[dict[str, int]] = None  # by row group: as recorded in the attempt (`row_groups`)

    @property
    def remaining(self) -> int:
        """Rows of the scope still to process."""
        if self.reads is not None and not self.reads:
            return 0
        return max(0, self.input_rows - self.finished_rows)


def plan_resume(source: Source, out: OutputFiles, *, resumed: bool, limit: Optional[int] = None,
                segmented: bool = False) -> ResumePlan:
    """What this attempt reads of `source` into `out`: everything, unless `resumed` (the output
    holds an unfinished run of the same configuration and input), and then what is not done."""
    if source.partitioned:
        return _by_row_group(source, out, resumed=resumed, limit=limit, segmented=segmented)
    return _by_row(source, out, resumed=resumed, limit=limit, segmented=segmented)


def _by_row_group(source: Source, out: OutputFiles, *, resumed: bool, limit: Optional[int],
                  segmented: bool) -> ResumePlan:
    plan = plan_reads(source, out, SPLITS, resumed=resumed, limit=limit, segmented=segmented)
    g = plan.groups
    return ResumePlan(
        unit="row group", input_rows=plan.input_rows, finished_rows=plan.finished_rows, done=g["finished"],
        partial=g["cut_off"], left=g["in_scope"] - g["finished"] - g["cut_off"], skip_segments=plan.skip_segments,
        keep_ids=source.first_ids(limit)[0] if limit is not None else None, reads=plan.items, groups=g)


def _by_row(source: Source, out: OutputFiles, *, resumed: bool, limit: Optional[int],
            segmented: bool) -> ResumePlan:
    keep_ids, files = source.first_ids(limit) if limit is not None else (None, None)
    input_rows = len(keep_ids) if keep_ids is not None else source.count()
    done, skip_segments = RunState(out).segment_progress(source.id_column, segmented) if resumed else ([], [])
    scope = set(keep_ids) if keep_ids is not None else None
    done_in_scope = len(set(done) & scope) if scope is not None else len(set(done))
    partial = {sid.rsplit("@", 1)[0] for sid in skip_segments}
    partial_in_scope = len(partial & scope) if scope is not None else len(partial)
    return ResumePlan(
        unit="row", input_rows=input_rows, finished_rows=done_in_scope, done=done_in_scope,
        partial=partial_in_scope, left=max(0, input_rows - done_in_scope - partial_in_scope),
        skip_segments=skip_segments, keep_ids=keep_ids, skip_ids=done, files=files)


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


def partitions(source: Source) -> list[Partition]:
    """The input's row groups in file order, from the files' footers."""
    return row_groups(source.fs, source.root, source.files)


def plan_reads(source: Source, out: OutputFiles, splits: tuple[str, ...], *, resumed: bool,
               limit: Optional[int] = None, segmented: bool = False) -> ReadPlan:
    """A Parquet source's reads by row group (`plan_resume`'s half for partitioned sources)."""
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


def _group_ids(source: Source, p: Partition) -> list[str]:
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
