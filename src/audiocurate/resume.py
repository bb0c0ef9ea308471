"""Resume by input partition: what is finished is known per Parquet row group, from the output
shards' footers, never from a list of every finished id.

* Every row read from a Parquet input carries `_part`, its row group's key (the file's path
  and size, and the group's index). The sink counts the rows of each part in a shard and
  stores the counts in the shard's Parquet footer (`audiocurate.parts`); `_part` itself is
  not written. A segment row counts 1/segments of its recording, so a part is finished when
  the counts reach its rows whichever way recordings were cut.
* On resume the driver reads only the footers: its memory and requests grow with the shards
  and row groups, not with the rows. Finished row groups are not read at all. Row groups that
  were being worked on when the run stopped are read with the ids already written, taken from
  just the shards that hold their rows, and those rows are dropped in the read task: in
  parallel, per file, never through one actor.
* `--limit N` is the first N rows in file order, as whole row groups and one group's head.

Sources with no stable partitions (a folder listing, a user's own Dataset) resume by id.
"""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterator, Optional

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

if TYPE_CHECKING:
    from .sinks import OutputDir
    from .sources import Source

from . import contract as C
from .contract import PART, WRITTEN_SEGMENTS

FOOTER_KEY = b"audiocurate.parts"
_EPS = 1e-6


@dataclass(frozen=True)
class Partition:
    key: str
    path: str
    group: int  # Parquet row group
    rows: int


def part_key(root: str, path: str, size: int, group: int) -> str:
    """Stable across runs for the same file, wherever the input is mounted (the path is taken
    relative to the input's root); a file rewritten with another size gets new keys."""
    relative = path[len(root):].lstrip("/") if root and path.startswith(root) else path
    return f"{hashlib.sha1(f'{relative}|{size}'.encode()).hexdigest()[:16]}:{group}"


def part_counts(table: pa.Table, segmented: bool) -> dict[str, float]:
    """Rows of each part in `table`; in a segmented run a segment row counts 1/segments of its
    recording (an input's own `segments` column means nothing here)."""
    if PART not in table.column_names or not table.num_rows:
        return {}
    parts = table[PART].to_pylist()
    if segmented and "segments" in table.column_names:
        weights = [1.0 / max(n or 1, 1) for n in table["segments"].to_pylist()]
    else:
        weights = [1.0] * len(parts)
    out: dict[str, float] = defaultdict(float)
    for p, w in zip(parts, weights):
        out[p] += w
    return dict(out)


def with_part_footer(table: pa.Table, segmented: bool) -> pa.Table:
    """`table` without `_part`, its part counts in the schema metadata (the Parquet footer)."""
    table = table.drop_columns([c for c in (WRITTEN_SEGMENTS,) if c in table.column_names])
    if PART not in table.column_names:
        return table
    counts = part_counts(table, segmented)
    table = table.drop_columns([PART])
    meta = dict(table.schema.metadata or {})
    meta[FOOTER_KEY] = json.dumps(counts, separators=(",", ":")).encode()
    return table.replace_schema_metadata(meta)


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
    from .sources.parquet import open_parquet

    out = []
    for path in source.files:
        with open_parquet(source.fs, path) as (f, pf):
            size = f.size()
            for g in range(pf.metadata.num_row_groups):
                out.append(Partition(part_key(source.root, path, size, g), path, g, pf.metadata.row_group(g).num_rows))
    return out


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
    items = _items(todo)
    for p, take in cut_off:
        ids = _group_ids(source, p)
        item = items[p.path]
        item["done"].extend(i for i in ids if i in done_set)
        item["segments_done"].extend({"parent": i, "segments": by_parent[i]} for i in ids if i in by_parent)
        finished += sum(1 for i in ids[:take] if i in done_set)  # done ids count as far as they are in scope
    groups = {"in_scope": len(scope), "finished": len(scope) - len(todo), "cut_off": len(cut_off),
              "shards_read_for_ids": len(partial_shards)}
    return ReadPlan(list(items.values()), sum(t for _, t in scope), finished, skip_segments, groups)


def _items(todo: list[tuple[Partition, int]]) -> dict[str, dict[str, Any]]:
    """One read-plan item per file: its row groups to read and how many rows of each."""
    items: dict[str, dict[str, Any]] = {}
    for p, take in todo:
        item = items.setdefault(p.path, {"path": p.path, "groups": [], "done": [], "segments_done": []})
        item["groups"].append({"group": p.group, "take": take, "key": p.key})
    return items


def whole_reads(source: "Source", files: Optional[list[str]] = None) -> list[dict[str, Any]]:
    """The read plan of every row of `files` (all of the source's by default)."""
    wanted = set(files or source.files)
    return list(_items([(p, p.rows) for p in partitions(source) if p.path in wanted]).values())


def written_ids(out: "OutputDir", shards: list[str], id_column: str, segmented: bool) -> tuple[list[str], list[str]]:
    """(ids of input rows whose output rows are all in `shards`, segment ids of the others).
    Unsegmented, a row is its own input row; segmented, rows name their recording (`parent_id`)
    and how many segments it was cut into (`segments`), in every output, errors included."""
    seen: dict[str, list[str]] = {}
    expected: dict[str, int] = {}
    for path in shards:
        with out.fs.open_input_file(path) as f:
            names = pq.ParquetFile(f).schema_arrow.names
            segment_rows = segmented and "parent_id" in names
            t = pq.read_table(f, columns=[id_column, *(("parent_id", "segments") if segment_rows else ())])
        ids = pc.cast(t[id_column], pa.string()).to_pylist()
        parents = pc.cast(t["parent_id"], pa.string()).to_pylist() if segment_rows else ids
        totals = t["segments"].to_pylist() if segment_rows else [1] * len(ids)
        for i, p, n in zip(ids, parents, totals):
            p = p if p is not None else i  # a recording that failed before it was cut is its own row
            seen.setdefault(p, []).append(i)
            expected[p] = max(expected.get(p, 1), n or 1)
    done = [p for p, ids in seen.items() if len(ids) >= expected[p]]
    partial = [i for p, ids in seen.items() if len(ids) < expected[p] for i in ids]
    return done, partial


def _group_ids(source: "Source", p: Partition) -> list[str]:
    """The ids of one input row group (its id column only)."""
    from .sources.parquet import open_parquet

    with open_parquet(source.fs, p.path) as (_, pf):
        return pc.cast(pf.read_row_group(p.group, columns=[source.id_column]).column(0), pa.string()).to_pylist()


LARGE_GROUP_BYTES = 32 << 20
"""A row group this large (decoded) is read without pre-buffering (`read_planned`'s `lean`)."""
BATCH_BYTES = 32 << 20
"""What one read batch holds at most, unless one row alone is larger: a batch is a block."""


def read_planned(pf: pq.ParquetFile, item: dict[str, Any], id_column: str, batch_rows: int = 4096,
                 release: bool = False, lean: Optional[pq.ParquetFile] = None) -> Iterator[pa.Table]:
    """The rows of one file's plan item: its groups' first `take` rows, minus the ids done,
    each row tagged with its part. `release`: Arrow's freed pages go back after each group.

    Memory: a batch holds about `BATCH_BYTES` (one row, where a row is larger), and a group of
    `LARGE_GROUP_BYTES` or more is read through `lean` (the same file without pre-buffering:
    pre-buffering holds the group's whole column chunks besides the rows read from them).
    A huge cell (a recording of hours) thus costs twice its size at most while it is read
    (the page read and the array decoded from it) and once when handed on: the reader lets go
    of that page only when it reads on or closes, so a group's last batch is handed on after
    the reader is closed (`sources.parquet.row_group_batches`)."""
    from .sources.parquet import row_group_batches

    done = pa.array(item.get("done") or [], pa.string())
    written = {d["parent"]: d["segments"] for d in item.get("segments_done") or []}
    for g in item["groups"]:
        group, take, key = g["group"], g["take"], g["key"]
        meta = pf.metadata.row_group(group)
        large = meta.total_byte_size >= LARGE_GROUP_BYTES
        rows = max(1, min(batch_rows, int(BATCH_BYTES * meta.num_rows / max(meta.total_byte_size, 1))))
        for batch in row_group_batches(lean if large and lean is not None else pf, group, take, rows, release=large):
            t = pa.Table.from_batches([batch])
            if len(done):
                keep = pc.invert(pc.is_in(pc.cast(t[id_column], pa.string()), value_set=done))
                if not pc.all(keep).as_py():  # filtering copies every kept cell: only when some go
                    t = t.filter(keep)
            if t.num_rows:
                t = t.append_column(PART, pa.array([key] * t.num_rows, pa.string()))
                if written:
                    ids = pc.cast(t[id_column], pa.string()).to_pylist()
                    t = t.append_column(WRITTEN_SEGMENTS, pa.array([written.get(i) for i in ids], pa.list_(pa.string())))
                yield t
            del batch, t
        if release or large:
            # Reading a page of long recordings held it compressed and decompressed; hand those
            # pages back now, or they stay with Arrow's allocator while decoding (whose buffers
            # come from another allocator) needs its own, in this worker and the next task it runs.
            pa.default_memory_pool().release_unused()


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
