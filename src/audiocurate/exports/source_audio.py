"""`rejected/` keeps no audio (it is not training data): to export or listen to rejected rows,
their clips are read back from the run's input by id and encoded as 16 kHz mono FLAC."""

from __future__ import annotations

import functools
from typing import Any, Optional

import pyarrow as pa
import pyarrow.compute as pc

from .. import contract as C
from ..audio import AudioDecodeError, decode_audio, encode_flac
from ..config import SourceConfig, StorageConfig


class SourceAudio:
    """Adds an `audio` {bytes, path} column to rows, read from the input by their ids."""

    def __init__(self, input_uri: Optional[str], storage: Optional[StorageConfig], run_config: dict[str, Any]):
        if not input_uri:
            raise ValueError("this output records no input; pass the input to read rejected clips from")
        source = dict(run_config.get("source") or {})
        if storage is not None:
            source["storage"] = storage.model_dump()
        self.input_uri = input_uri
        self.config = SourceConfig.model_validate(source)

    def raw_audio(self, ids: list[str]) -> dict[str, Optional[bytes]]:
        """The input's encoded audio for these ids (None where it cannot be read)."""
        from ..stages import audio_bytes_of

        by_id, fetcher = self._lookup(pa.array(sorted(set(ids)), pa.string()))
        out: dict[str, Optional[bytes]] = {}
        for clip_id in ids:
            try:
                out[clip_id] = audio_bytes_of(by_id.get(clip_id), fetcher) or None
            except (AudioDecodeError, ValueError):
                out[clip_id] = None
        return out

    @functools.cached_property
    def source(self) -> Any:
        """The input, opened once per process (it lists files and reads a schema)."""
        from ..sources import open_source

        return open_source(self.input_uri, self.config)

    def _lookup(self, wanted: pa.Array) -> tuple[dict[str, Any], Any]:
        src = self.source
        if src.listing is not None:
            found = src.listing.filter(pc.is_in(pc.cast(src.listing[src.id_column], pa.string()), wanted))
        else:
            found = _rows_with_ids(src, wanted)
        return (dict(zip(pc.cast(found[src.id_column], pa.string()).to_pylist(), found[src.audio_column].to_pylist())),
                src.fetcher())

    def __call__(self, table: pa.Table) -> pa.Table:
        from ..stages import audio_bytes_of

        ids = pc.cast(table[self.config.id_column], pa.string()).to_pylist()
        # Segment rows are read from their recording and cut at their times.
        segmented = "parent_id" in table.column_names and "start_s" in table.column_names
        parents = table["parent_id"].to_pylist() if segmented else ids
        starts = table["start_s"].to_pylist() if segmented else [None] * len(ids)
        ends = table["end_s"].to_pylist() if segmented else [None] * len(ids)
        by_id, fetcher = self._lookup(pa.array(sorted(set(map(str, parents))), pa.string()))
        audio = []
        for clip_id, parent, start, end in zip(ids, parents, starts, ends):
            parent = str(parent)
            if parent not in by_id:
                raise ValueError(f"{clip_id}: {parent} is not in the input {self.input_uri} any more")
            try:
                pcm = decode_audio(audio_bytes_of(by_id[parent], fetcher), target_rate=16000).pcm
            except AudioDecodeError as e:
                raise ValueError(f"{clip_id}: the input's audio no longer decodes ({e.reason})") from None
            if start is not None and end is not None:
                pcm = pcm[int(start * 16000):int(end * 16000)]
            name = clip_id if "@" in clip_id else clip_id.rsplit(".", 1)[0]
            audio.append({"bytes": encode_flac(pcm), "path": f"{name.rsplit('/', 1)[-1]}.flac"})
        table = table.drop_columns([c for c in (C.AUDIO,) if c in table.column_names])
        return table.append_column(C.AUDIO, pa.array(audio, C.AUDIO_TYPE))


def _rows_with_ids(src: Any, wanted: pa.Array) -> pa.Table:
    """The id and audio of the input rows with these ids: the id column of every row group, and
    the audio of only the groups that hold one (memory: one row group; I/O: ids + those groups)."""
    from ..sources.parquet import open_parquet

    parts = []
    for path in src.files:
        with open_parquet(src.fs, path) as (_, pf):
            for g in range(pf.metadata.num_row_groups):
                ids = pc.cast(pf.read_row_group(g, columns=[src.id_column]).column(0), pa.string())
                mask = pc.is_in(ids, value_set=wanted)
                if pc.any(mask).as_py():
                    parts.append(pf.read_row_group(g, columns=[src.id_column, src.audio_column]).filter(mask))
    if not parts:
        return pa.table({src.id_column: pa.array([], pa.string()), src.audio_column: pa.array([], pa.binary())})
    return pa.concat_tables(parts)
