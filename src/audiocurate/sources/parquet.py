"""Parquet sources: Common Voice style (`id`, encoded `audio_bytes`) and Hugging Face
`datasets` layout (an `audio` struct of `bytes` and `path`)."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator, Optional

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from .. import storage
from ..config import SourceConfig
from . import SOURCE_FORMATS, Source, SourceError


LEAN_BUFFER_BYTES = 8 << 20  # reads of a file opened `lean`


@SOURCE_FORMATS.register("parquet")
@SOURCE_FORMATS.register("hf_parquet")
@SOURCE_FORMATS.register("auto_parquet")
def open_parquet_source(uri: str, fs: pafs.FileSystem, path: str, config: SourceConfig) -> Source:
    files = storage.expand(fs, path, (".parquet", ".pq"))
    if not files:
        raise SourceError(f"no Parquet files under {uri}")
    with open_parquet(fs, files[0]) as (_, pf):
        schema = pf.schema_arrow
    requested = config.format if config.format in ("parquet", "hf_parquet") else "auto"
    kind, audio_col = check_schema(uri, schema, config, requested)
    root = files[0].rsplit("/", 1)[0] if len(files) == 1 else path
    return Source(uri, kind, config.id_column, audio_col, fs, root, files, list(schema.names))


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


class ParquetFileReader:
    """A Ray Data UDF: each input row is one file's read plan (`resume.ReadPlan`): the row
    groups to read, how many of their rows, and the ids already done; yields record batches
    whose rows carry their row group's key (`_part`)."""

    def __init__(self, fs: pafs.FileSystem, id_column: str, lean: bool = False):
        self.fs = fs
        self.id_column = id_column
        self.lean = lean  # `open_parquet`'s; and Arrow's freed pages handed back after each row group

    def __call__(self, batch: pa.Table) -> Iterator[pa.Table]:
        from ..resume import read_planned

        for item in batch.to_pylist():
            with open_parquet(self.fs, item["path"], lean=self.lean) as (f, pf):
                # Large row groups (long recordings) through a reader without pre-buffering.
                lean = pf if self.lean else pq.ParquetFile(f, metadata=pf.metadata, pre_buffer=False,
                                                           buffer_size=LEAN_BUFFER_BYTES)
                yield from read_planned(pf, item, self.id_column, release=self.lean, lean=lean)


def check_schema(uri: str, schema: pa.Schema, config: SourceConfig, kind: str) -> tuple[str, str]:
    """The layout and audio column of a Parquet-like schema, or a SourceError saying what is off."""
    audio_col = config.audio_column or _guess_audio_column(schema, kind)
    if audio_col not in schema.names:
        raise SourceError(f"{uri}: no audio column {audio_col!r}; columns are {schema.names}. Set source.audio_column.")
    t = schema.field(audio_col).type
    if kind == "auto":
        kind = "hf_parquet" if pa.types.is_struct(t) else "parquet"
    if config.id_column not in schema.names:
        raise SourceError(f"{uri}: no id column {config.id_column!r}; columns are {schema.names}. Set source.id_column.")
    if not (pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_string(t)
            or pa.types.is_large_string(t) or (pa.types.is_struct(t) and t.get_field_index("bytes") >= 0)):
        raise SourceError(f"{uri}: audio column {audio_col!r} is {t}, not bytes, a path, or a {{bytes, path}} struct")
    return kind, audio_col


def _guess_audio_column(schema: pa.Schema, kind: str) -> str:
    if kind == "hf_parquet" or (kind == "auto" and "audio" in schema.names and "audio_bytes" not in schema.names):
        return "audio"
    return "audio_bytes"


