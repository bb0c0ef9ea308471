"""Audio datasets into the row contract: an id, the encoded audio, every other column carried.

Three layouts, local or on object storage:
* `parquet`: Ray's Common Voice copy and anything like it (`id`, `audio_bytes`, metadata);
* `hf_parquet`: Hugging Face `datasets` Parquet, an `audio` struct of `bytes` and `path`;
* `folder`: audio files found recursively, joined by path with an optional JSONL/CSV manifest.
  Manifest rows whose file is missing stay in the run and become error rows.
A Dataset the user built themselves enters through `from_dataset`.

A source kind is one module registering its opener with `@SOURCE_FORMATS.register("name")`:
`open(uri, fs, path, config) -> Source`; `source.format` takes every registered name. This module
imports nothing that imports `config`, which validates `source.format` against `SOURCE_FORMATS`.
Imports among sources point one way: the openers (`parquet_formats`, `folder`) and the audio
fetch by id (`audio_by_id`) import this package, which imports only `storage`, the audio cells'
reader (`audio_cells`) and, where it reads, the Parquet reader (`parquet`) and `blocks`, which
import neither; none of them imports `resume` or `sinks`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Optional, Protocol

import pyarrow as pa
import pyarrow.fs as pafs

from .. import storage
from ..core.registry import Registry
from ..storage import StorageConfig
from .audio_cells import AudioFetcher
from .errors import SourceError

if TYPE_CHECKING:
    import ray

_BLOCK_ROWS = 32  # folder sources: rows per block of the listing

# Source formats by `source.format`; each module registers its opener,
# `open(uri, fs, path, config) -> Source`.
SOURCE_FORMATS: Registry[Any] = Registry("source format", lazy={
    "parquet": "audiocurate.sources.parquet_formats", "hf_parquet": "audiocurate.sources.parquet_formats",
    "auto_parquet": "audiocurate.sources.parquet_formats", "folder": "audiocurate.sources.folder",
})


class SourceSettings(Protocol):
    """The `source` section (`config.SourceConfig`) as opening an input reads it here; the
    opener a format registered gets the whole section. Named by its fields, not imported:
    `config` imports this package to check `source.format`."""

    format: str
    id_column: str
    audio_column: Optional[str]
    extensions: list[str]
    storage: StorageConfig


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
        from .parquet import open_parquet

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
        from .parquet import open_parquet

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

    @property
    def partitioned(self) -> bool:
        """Resumed by row group (`resume`): Parquet files. A folder listing or a user's
        Dataset has no stable partitions and resumes by id."""
        return self.listing is None

    def dataset(self, files: Optional[list[str]] = None, num_cpus: Optional[float] = None,
                block_bytes: int = 8 << 20, reads: Optional[list[dict[str, Any]]] = None,
                segmented: bool = False) -> "ray.data.Dataset":
        """The rows as a lazy Dataset in blocks of about `block_bytes` of encoded input (a folder
        listing: 32 files, or one when `segmented`, as a file's size is not known here; a
        recording's segments stay in its block, which must stay well under Ray's block limit).

        One read task per Parquet file streams the row groups its plan item names (`reads`,
        from `resume.plan_reads`; all of them by default: `parquet.whole_reads`); the blocks are
        then cut by rows at the first file's bytes per row (a streaming split, no shuffle). The files are known
        already, so no listing task runs."""
        import ray

        from ..blocks import split_blocks
        from .parquet import ParquetFileReader, open_parquet, whole_reads

        if self.listing is not None:
            t = self.listing
            step = 1 if segmented else _BLOCK_ROWS
            blocks = [t.slice(i, step) for i in range(0, t.num_rows, step)] or [t]
            return ray.data.from_arrow(blocks)
        if reads is None:
            reads = whole_reads(self.fs, self.root, files or self.files)
        if not reads:
            return ray.data.from_items([{"path": ""}]).limit(0)
        with open_parquet(self.fs, reads[0]["path"]) as (f, pf):
            rows_per_block = max(1, int(block_bytes * pf.metadata.num_rows / max(f.size(), 1)))
        plan = ray.data.from_items(reads, override_num_blocks=len(reads))
        ds = plan.map_batches(ParquetFileReader(self.fs, self.id_column, lean=segmented), batch_size=1,
                              batch_format="pyarrow",
                              num_cpus=num_cpus, udf_modifying_row_count=True)
        return split_blocks(ds, rows_per_block, num_cpus if num_cpus is not None else 1.0)


@dataclass
class DatasetSource(Source):
    """A Dataset the user built: read as it is, counted and sampled through Ray."""

    provided: Optional["ray.data.Dataset"] = field(default=None, repr=False)

    @property
    def partitioned(self) -> bool:
        return False

    def count(self) -> int:
        return self.provided.count()

    def first_ids(self, n: int) -> tuple[list[str], list[str]]:
        return [str(r[self.id_column]) for r in self.provided.select_columns([self.id_column]).take(n)], self.files

    def dataset(self, files: Optional[list[str]] = None, num_cpus: Optional[float] = None,
                block_bytes: int = 8 << 20, reads: Optional[list[dict[str, Any]]] = None,
                segmented: bool = False) -> "ray.data.Dataset":
        return self.provided  # its blocks as you made them


def open_source(uri: str, config: SourceSettings) -> Source:
    """The input at `uri` as the configured (or detected) source format."""
    fs, path = storage.resolve(uri, config.storage)
    kind = config.format
    exts = tuple(e.lower() for e in config.extensions)
    if kind == "auto":
        kind = _detect(fs, path, exts)
    return SOURCE_FORMATS.get(kind)(uri, fs, path, config)


def from_dataset(ds: "ray.data.Dataset", config: SourceSettings) -> Source:
    """A Dataset the user already has (read, joined, filtered their way) as the pipeline's
    input: it needs the id column and an audio column, checked here rather than mid-run."""
    schema = ds.schema()
    if schema is None:
        raise SourceError("the dataset has no schema (is it empty?)")
    names = list(schema.names)
    arrow = pa.schema([pa.field(n, t) for n, t in zip(names, schema.types)
                       if isinstance(t, pa.DataType)])
    from .parquet import check_schema

    kind, audio_col = check_schema("the dataset", arrow, config.id_column, config.audio_column, "auto")
    return DatasetSource("<dataset>", kind, config.id_column, audio_col, pafs.LocalFileSystem(), "", [], names,
                         provided=ds)


def _detect(fs: pafs.FileSystem, path: str, exts: tuple[str, ...]) -> str:
    if any(ch in path for ch in "*?[") or path.lower().endswith((".parquet", ".pq")):
        return "auto_parquet"  # which Parquet layout is decided from the schema
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.NotFound:
        raise SourceError(f"input not found: {path}")
    if info.type == pafs.FileType.Directory:
        if storage.expand(fs, path, (".parquet", ".pq")):
            return "auto_parquet"
        if storage.expand(fs, path, exts):
            return "folder"
        raise SourceError(f"{path} holds neither Parquet files nor audio files ({', '.join(exts)})")
    return "auto_parquet"


