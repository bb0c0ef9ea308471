"""Reading Parquet inputs: a file and its reader, a row group's rows in batches, the input's
row groups (the partitions resume counts by), and a read plan's rows (`ParquetFileReader`).

The source formats that open Parquet inputs are `sources.parquet_formats`; what is finished and
what is left to read is `resume`'s. This module imports neither, nor the `sources` package."""

from __future__ import annotations

import hashlib
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator, Optional

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from ..contract import PART, WRITTEN_SEGMENTS
from .errors import SourceError

LEAN_BUFFER_BYTES = 8 << 20  # reads of a file opened `lean`
LARGE_GROUP_BYTES = 32 << 20
"""A row group this large (decoded) is read without pre-buffering (`read_planned`'s `lean`)."""
BATCH_BYTES = 32 << 20
"""What one read batch holds at most, unless one row alone is larger: a batch is a block."""


@dataclass(frozen=True)
class Partition:
    """One row group of an input file: the unit resume counts finished rows by."""

    key: str
    path: str
    group: int  # Parquet row group
    rows: int


def part_key(root: str, path: str, size: int, group: int) -> str:
    """Stable across runs for the same file, wherever the input is mounted (the path is taken
    relative to the input's root); a file rewritten with another size gets new keys."""
    relative = path[len(root):].lstrip("/") if root and path.startswith(root) else path
    return f"{hashlib.sha1(f'{relative}|{size}'.encode()).hexdigest()[:16]}:{group}"


def row_groups(fs: pafs.FileSystem, root: str, files: list[str]) -> list[Partition]:
    """The row groups of `files` in file order, from the files' footers."""
    out = []
    for path in files:
        with open_parquet(fs, path) as (f, pf):
            size = f.size()
            for g in range(pf.metadata.num_row_groups):
                out.append(Partition(part_key(root, path, size, g), path, g, pf.metadata.row_group(g).num_rows))
    return out


def group_ids(fs: pafs.FileSystem, p: Partition, id_column: str) -> list[str]:
    """The ids of one input row group (its id column only)."""
    with open_parquet(fs, p.path) as (_, pf):
        return pc.cast(pf.read_row_group(p.group, columns=[id_column]).column(0), pa.string()).to_pylist()


def plan_items(todo: list[tuple[Partition, int]]) -> dict[str, dict[str, Any]]:
    """One read-plan item per file: its row groups to read and how many rows of each."""
    items: dict[str, dict[str, Any]] = {}
    for p, take in todo:
        item = items.setdefault(p.path, {"path": p.path, "groups": [], "done": [], "segments_done": []})
        item["groups"].append({"group": p.group, "take": take, "key": p.key})
    return items


def whole_reads(fs: pafs.FileSystem, root: str, files: list[str]) -> list[dict[str, Any]]:
    """The read plan of every row of `files`."""
    return list(plan_items([(p, p.rows) for p in row_groups(fs, root, files)]).values())


@contextmanager
def open_parquet(fs: pafs.FileSystem, path: str, lean: bool = False) -> Iterator[tuple[Any, pq.ParquetFile]]:
    """A Parquet file and its reader; a file that cannot be read is a `SourceError` naming it
    (pyarrow's own message names no file). `lean`: read in 8 MB pieces without pre-buffering
    (segmented runs: one row may hold an hour of FLAC, and pre-buffering keeps a second copy of
    the column chunk while it is decoded; elsewhere pre-buffering's coalesced reads win on S3)."""
    try:
        f = fs.open_input_file(path)
    except OSError as e:
        raise SourceError(f"cannot open {path}: {e}") from None
    with f:
        try:
            pf = pq.ParquetFile(f, pre_buffer=False, buffer_size=LEAN_BUFFER_BYTES) if lean else pq.ParquetFile(f)
        except (OSError, pa.ArrowException) as e:
            raise SourceError(f"{path} is not a readable Parquet file: {e}") from None
        try:
            yield f, pf
        except (OSError, pa.ArrowException) as e:  # a corrupt row group, met while reading
            raise SourceError(f"{path}: {e}") from None


def row_group_batches(pf: pq.ParquetFile, group: int, take: int, rows: int, release: bool = False,
                      columns: Optional[list[str]] = None) -> Iterator[pa.RecordBatch]:
    """The first `take` rows of a row group, `rows` at a time. The last batch comes after the
    reader is closed: it holds the page of the last value it read until it reads on, and for
    a recording of hours that page is a second copy of the cell. `release`: Arrow's allocator
    hands that page back to the system first (it keeps freed pages for itself otherwise)."""
    batches = pf.iter_batches(batch_size=rows, row_groups=[group], columns=columns)
    read = 0
    try:
        for batch in batches:
            if read + batch.num_rows >= take:
                batches.close()
                if release:
                    pa.default_memory_pool().release_unused()
                yield batch.slice(0, take - read) if read + batch.num_rows > take else batch
                return
            read += batch.num_rows
            yield batch
    finally:
        batches.close()


def audio_chunk_bytes(pf: pq.ParquetFile, group: int, audio_column: str) -> int:
    """The decoded size of a row group's audio (a struct's `bytes`), from the file's footer:
    what reading any of its cells may cost, and a cell's size where the group holds one row."""
    meta = pf.metadata.row_group(group)
    leaves = (audio_column, f"{audio_column}.bytes")
    return sum(meta.column(i).total_uncompressed_size for i in range(meta.num_columns)
               if meta.column(i).path_in_schema in leaves)


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
    the reader is closed (`row_group_batches`)."""
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


class ParquetFileReader:
    """A Ray Data UDF: each input row is one file's read plan (`resume.ReadPlan`'s items): the row
    groups to read, how many of their rows, and the ids already done; yields record batches
    whose rows carry their row group's key (`_part`)."""

    def __init__(self, fs: pafs.FileSystem, id_column: str, lean: bool = False):
        self.fs = fs
        self.id_column = id_column
        self.lean = lean  # `open_parquet`'s; and Arrow's freed pages handed back after each row group

    def __call__(self, batch: pa.Table) -> Iterator[pa.Table]:
        for item in batch.to_pylist():
            with open_parquet(self.fs, item["path"], lean=self.lean) as (f, pf):
                # Large row groups (long recordings) through a reader without pre-buffering.
                lean = pf if self.lean else pq.ParquetFile(f, metadata=pf.metadata, pre_buffer=False,
                                                           buffer_size=LEAN_BUFFER_BYTES)
                yield from read_planned(pf, item, self.id_column, release=self.lean, lean=lean)


def check_schema(uri: str, schema: pa.Schema, id_column: str, audio_column: Optional[str], kind: str
                 ) -> tuple[str, str]:
    """The layout and audio column of a Parquet-like schema, or a SourceError saying what is off
    (`audio_column`: as configured, or None to guess it from the layout)."""
    audio_col = audio_column or _guess_audio_column(schema, kind)
    if audio_col not in schema.names:
        raise SourceError(f"{uri}: no audio column {audio_col!r}; columns are {schema.names}. Set source.audio_column.")
    t = schema.field(audio_col).type
    if kind == "auto":
        kind = "hf_parquet" if pa.types.is_struct(t) else "parquet"
    if id_column not in schema.names:
        raise SourceError(f"{uri}: no id column {id_column!r}; columns are {schema.names}. Set source.id_column.")
    if not (pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_string(t)
            or pa.types.is_large_string(t) or (pa.types.is_struct(t) and t.get_field_index("bytes") >= 0)):
        raise SourceError(f"{uri}: audio column {audio_col!r} is {t}, not bytes, a path, or a {{bytes, path}} struct")
    return kind, audio_col


def _guess_audio_column(schema: pa.Schema, kind: str) -> str:
    if kind == "hf_parquet" or (kind == "auto" and "audio" in schema.names and "audio_bytes" not in schema.names):
        return "audio"
    return "audio_bytes"


