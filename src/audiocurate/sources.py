"""Audio datasets into the row contract: an id, the encoded audio, every other column carried.

Three layouts, local or on object storage:
* `parquet`: Ray's Common Voice copy and anything like it (`id`, `audio_bytes`, metadata);
* `hf_parquet`: Hugging Face `datasets` Parquet, an `audio` struct of `bytes` and `path`;
* `folder`: audio files found recursively, joined by path with an optional JSONL/CSV manifest.
  Manifest rows whose file is missing stay in the run and become error rows.
A Dataset the user built themselves enters through `from_dataset`.
"""

from __future__ import annotations

import io
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterator, Optional

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.fs as pafs
import pyarrow.json as pajson
import pyarrow.parquet as pq
import ray

from . import storage
from .config import SourceConfig
from .runtime import split_blocks
from .stages import AudioFetcher

FOLDER_PATH_COLUMN = "path"
_BLOCK_ROWS = 32  # folder sources: rows per block of the listing


class SourceError(ValueError):
    """The input cannot be read as configured; the message says what was found instead."""


@dataclass
class Source:
    """A lazily read audio dataset and what the pipeline needs to know about it."""

    uri: str
    kind: str
    id_column: str
    audio_column: str
    fs: pafs.FileSystem
    root: str
    files: list[str]
    columns: list[str]
    listing: Optional[pa.Table] = field(default=None, repr=False)  # folder sources only

    @property
    def carried_columns(self) -> list[str]:
        """Columns passed through unchanged to every output (all but the audio)."""
        return [c for c in self.columns if c != self.audio_column]

    def fetcher(self) -> AudioFetcher:
        return AudioFetcher(self.fs, self.root)

    def count(self) -> int:
        if self.listing is not None:
            return self.listing.num_rows
        total = 0
        for path in self.files:
            with open_parquet(self.fs, path) as (_, pf):
                total += pf.metadata.num_rows
        return total

    def first_ids(self, n: int) -> tuple[list[str], list[str]]:
        """The first `n` ids in file order, and the files that hold them: a `--limit` that
        picks the same rows on every run, and reads only the files it needs."""
        if self.listing is not None:
            return [str(x) for x in self.listing[self.id_column].to_pylist()[:n]], self.files
        ids: list[str] = []
        used: list[str] = []
        for path in self.files:
            if len(ids) >= n:
                break
            used.append(path)
            with open_parquet(self.fs, path) as (_, pf):
                for batch in pf.iter_batches(columns=[self.id_column], batch_size=4096):
                    ids.extend(str(x) for x in batch.column(0).to_pylist())
                    if len(ids) >= n:
                        break
        return ids[:n], used

    def dataset(self, files: Optional[list[str]] = None, num_cpus: Optional[float] = None,
                block_bytes: int = 8 << 20) -> "ray.data.Dataset":
        """The rows as a lazy Dataset in blocks of about `block_bytes` of encoded input.

        One read task per Parquet file streams it; the blocks are then cut by rows at the
        first file's bytes per row (a streaming split, no shuffle). The files are known
        already, so no listing task runs."""
        if self.listing is not None:
            t = self.listing
            blocks = [t.slice(i, _BLOCK_ROWS) for i in range(0, t.num_rows, _BLOCK_ROWS)] or [t]
            return ray.data.from_arrow(blocks)
        files = files or self.files
        with open_parquet(self.fs, files[0]) as (f, pf):
            rows_per_block = max(1, int(block_bytes * pf.metadata.num_rows / max(f.size(), 1)))
        paths = ray.data.from_items([{"path": p} for p in files], override_num_blocks=len(files))
        ds = paths.map_batches(ParquetFileReader(self.fs), batch_size=1, batch_format="pyarrow",
                               num_cpus=num_cpus, udf_modifying_row_count=True)
        return split_blocks(ds, rows_per_block, num_cpus if num_cpus is not None else 1.0)


@contextmanager
def open_parquet(fs: pafs.FileSystem, path: str) -> Iterator[tuple[Any, pq.ParquetFile]]:
    """A Parquet file and its reader; a file that cannot be read is a `SourceError` naming it
    (pyarrow's own message names no file)."""
    try:
        f = fs.open_input_file(path)
    except OSError as e:
        raise SourceError(f"cannot open {path}: {e}") from None
    with f:
        try:
            pf = pq.ParquetFile(f)
        except (OSError, pa.ArrowException) as e:
            raise SourceError(f"{path} is not a readable Parquet file: {e}") from None
        try:
            yield f, pf
        except (OSError, pa.ArrowException) as e:  # a corrupt row group, met while reading
            raise SourceError(f"{path}: {e}") from None


class ParquetFileReader:
    """A Ray Data UDF: each input row names a Parquet file; yields its record batches."""

    def __init__(self, fs: pafs.FileSystem):
        self.fs = fs

    def __call__(self, batch: pa.Table) -> Iterator[pa.Table]:
        for path in batch["path"].to_pylist():
            with open_parquet(self.fs, path) as (_, pf):
                for record_batch in pf.iter_batches(batch_size=4096):
                    yield pa.Table.from_batches([record_batch])


@dataclass
class DatasetSource(Source):
    """A Dataset the user built: read as it is, counted and sampled through Ray."""

    provided: Optional["ray.data.Dataset"] = field(default=None, repr=False)

    def count(self) -> int:
        return self.provided.count()

    def first_ids(self, n: int) -> tuple[list[str], list[str]]:
        return [str(r[self.id_column]) for r in self.provided.select_columns([self.id_column]).take(n)], self.files

    def dataset(self, files: Optional[list[str]] = None, num_cpus: Optional[float] = None,
                block_bytes: int = 8 << 20) -> "ray.data.Dataset":
        return self.provided


def open_source(uri: str, config: SourceConfig) -> Source:
    fs, path = storage.resolve(uri, config.storage)
    kind = config.format
    exts = tuple(e.lower() for e in config.extensions)
    if kind == "auto":
        kind = _detect(fs, path, exts)
    if kind == "folder":
        return _folder_source(uri, fs, path, config, exts)
    files = storage.expand(fs, path, (".parquet", ".pq"))
    if not files:
        raise SourceError(f"no Parquet files under {uri}")
    with open_parquet(fs, files[0]) as (_, pf):
        schema = pf.schema_arrow
    kind, audio_col = _check_schema(uri, schema, config, kind)
    root = files[0].rsplit("/", 1)[0] if len(files) == 1 else path
    return Source(uri, kind, config.id_column, audio_col, fs, root, files, list(schema.names))


def from_dataset(ds: "ray.data.Dataset", config: SourceConfig) -> Source:
    """A Dataset the user already has (read, joined, filtered their way) as the pipeline's
    input: it needs the id column and an audio column, checked here rather than mid-run."""
    schema = ds.schema()
    if schema is None:
        raise SourceError("the dataset has no schema (is it empty?)")
    names = list(schema.names)
    arrow = pa.schema([pa.field(n, t) for n, t in zip(names, schema.types)
                       if isinstance(t, pa.DataType)])
    kind, audio_col = _check_schema("the dataset", arrow, config, "auto")
    return DatasetSource("<dataset>", kind, config.id_column, audio_col, pafs.LocalFileSystem(), "", [], names,
                         provided=ds)


def _check_schema(uri: str, schema: pa.Schema, config: SourceConfig, kind: str) -> tuple[str, str]:
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


def _detect(fs: pafs.FileSystem, path: str, exts: tuple[str, ...]) -> str:
    if any(ch in path for ch in "*?[") or path.lower().endswith((".parquet", ".pq")):
        return "auto"  # Parquet; which layout is decided from the schema
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.NotFound:
        raise SourceError(f"input not found: {path}")
    if info.type == pafs.FileType.Directory:
        if storage.expand(fs, path, (".parquet", ".pq")):
            return "auto"
        if storage.expand(fs, path, exts):
            return "folder"
        raise SourceError(f"{path} holds neither Parquet files nor audio files ({', '.join(exts)})")
    return "auto"


def _guess_audio_column(schema: pa.Schema, kind: str) -> str:
    if kind == "hf_parquet" or (kind == "auto" and "audio" in schema.names and "audio_bytes" not in schema.names):
        return "audio"
    return "audio_bytes"


def _folder_source(uri: str, fs: pafs.FileSystem, path: str, config: SourceConfig, exts: tuple[str, ...]) -> Source:
    files = storage.expand(fs, path, exts)
    rel = [f[len(path):].lstrip("/") for f in files]
    manifest = _read_manifest(fs, path, config)
    pcol = config.manifest_path_column
    if manifest is not None:
        if pcol not in manifest.column_names:
            raise SourceError(f"manifest has no {pcol!r} column; columns are {manifest.column_names}")
        listed = [str(p).lstrip("./") if str(p).startswith("./") else str(p) for p in manifest[pcol].to_pylist()]
        manifest = manifest.set_column(manifest.schema.get_field_index(pcol), pcol, pa.array(listed, pa.string()))
        extra = sorted(set(rel) - set(listed))
        if extra:
            manifest = pa.concat_tables(
                [manifest, pa.table({pcol: pa.array(extra, pa.string())})], promote_options="default")
        table = manifest
    else:
        table = pa.table({pcol: pa.array(rel, pa.string())})
    if config.id_column not in table.column_names:
        table = table.add_column(0, config.id_column, table[pcol])
    if not table.num_rows:
        raise SourceError(f"no audio files ({', '.join(exts)}) under {uri}")
    return Source(uri, "folder", config.id_column, pcol, fs, path, files, table.column_names, listing=table)


def _read_manifest(fs: pafs.FileSystem, root: str, config: SourceConfig) -> Optional[pa.Table]:
    """The configured manifest, else `manifest.jsonl` / `manifest.csv` in the folder, else None."""
    if config.manifest:
        mfs, mpath = storage.resolve(config.manifest, config.storage)
        if mfs.get_file_info(mpath).type != pafs.FileType.File:
            raise SourceError(f"manifest not found: {config.manifest}")
    else:
        mfs, mpath = fs, None
        for cand in (f"{root}/manifest.jsonl", f"{root}/manifest.csv"):
            if fs.get_file_info(cand).type == pafs.FileType.File:
                mpath = cand
                break
        if mpath is None:
            return None
    with mfs.open_input_stream(mpath) as f:
        data = io.BytesIO(f.read())
    return pacsv.read_csv(data) if mpath.lower().endswith(".csv") else pajson.read_json(data)
