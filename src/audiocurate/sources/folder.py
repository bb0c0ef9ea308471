"""Folder sources: audio files found recursively, optionally joined with a manifest."""

from __future__ import annotations

import io
from typing import Optional

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.fs as pafs
import pyarrow.json as pajson

from .. import storage
from ..config import SourceConfig
from . import SOURCE_FORMATS, Source, SourceError


@SOURCE_FORMATS.register("folder")
def open_folder_source(uri: str, fs: pafs.FileSystem, path: str, config: SourceConfig) -> Source:
    exts = tuple(e.lower() for e in config.extensions)
    return _folder_source(uri, fs, path, config, exts)


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
