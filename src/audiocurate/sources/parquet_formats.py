"""The Parquet source formats: `parquet` (Common Voice style: `id`, encoded `audio_bytes`),
`hf_parquet` (Hugging Face `datasets`: an `audio` struct of `bytes` and `path`) and
`auto_parquet` (either, told from the schema). Reading the files is `sources.parquet`'s."""

from __future__ import annotations

import pyarrow.fs as pafs

from .. import storage
from ..config import SourceConfig
from . import SOURCE_FORMATS, Source, SourceError
from .parquet import check_schema, open_parquet


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
    kind, audio_col = check_schema(uri, schema, config.id_column, config.audio_column, requested)
    root = files[0].rsplit("/", 1)[0] if len(files) == 1 else path
    return Source(uri, kind, config.id_column, audio_col, fs, root, files, list(schema.names))
