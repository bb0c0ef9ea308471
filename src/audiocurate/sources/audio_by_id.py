"""A clip's audio fetched by id from a run's input: `rejected/` keeps no audio (it is not
training data), so to export or listen to rejected rows (`exports`, the report's players,
`corpus.replay`) their clips are read back from the input and encoded as 16 kHz mono FLAC.

A cell is handed to the decoder as a slice of the Arrow buffer it was read into, never as a
Python `bytes` copy: one cell can hold hours of audio (`audio.cell_buffer`)."""

from __future__ import annotations

import functools
from typing import Any, Optional, Union

import pyarrow as pa
import pyarrow.compute as pc

from .. import contract as C
from ..audio import AudioDecodeError, AudioInput, CellTooLarge, cell_buffer, decode_audio, encode_flac
from ..config import SourceConfig
from ..storage import StorageConfig
from .audio_cells import AudioFetcher, audio_input_of

_BATCH_BYTES = 8 << 20  # rows read at a time from a row group, unless one row alone is larger


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

    def raw_audio(self, ids: list[str], max_cell_bytes: Optional[int] = None
                  ) -> dict[str, Union[AudioInput, CellTooLarge, None]]:
        """The input's encoded audio for these ids, to decode as it is: an Arrow buffer, or a
        file opened where it lies (the caller closes it); None where it cannot be read.
        `max_cell_bytes`: a Parquet cell the footer shows is larger is not read at all (a
        `CellTooLarge` instead): reading one costs about twice the cell."""
        found, too_large = self._lookup(pa.array(sorted(set(ids)), pa.string()), max_cell_bytes)
        row_of = _row_positions(found, self.source.id_column)
        audio = found[self.source.audio_column]
        fetcher = self.source.fetcher()
        out: dict[str, Union[AudioInput, CellTooLarge, None]] = {}
        for clip_id in ids:
            if clip_id in too_large:
                out[clip_id] = too_large[clip_id]
                continue
            try:
                data = _audio_input(audio, row_of[clip_id], fetcher) if clip_id in row_of else None
            except (AudioDecodeError, ValueError):
                data = None
            out[clip_id] = data if data is not None and (hasattr(data, "seek") or len(data)) else None
        return out

    @functools.cached_property
    def source(self) -> Any:
        """The input, opened once per process (it lists files and reads a schema)."""
        from . import open_source

        return open_source(self.input_uri, self.config)

    def _lookup(self, wanted: pa.Array, max_cell_bytes: Optional[int] = None
                ) -> tuple[pa.Table, dict[str, CellTooLarge]]:
        src = self.source
        if src.listing is not None:
            return src.listing.filter(pc.is_in(pc.cast(src.listing[src.id_column], pa.string()), wanted)), {}
        return _rows_with_ids(src, wanted, max_cell_bytes)

    def __call__(self, table: pa.Table) -> pa.Table:
        ids = pc.cast(table[self.config.id_column], pa.string()).to_pylist()
        # Segment rows are read from their recording and cut at their times.
        segmented = "parent_id" in table.column_names and "start_s" in table.column_names
        parents = table["parent_id"].to_pylist() if segmented else ids
        starts = table["start_s"].to_pylist() if segmented else [None] * len(ids)
        ends = table["end_s"].to_pylist() if segmented else [None] * len(ids)
        found, _ = self._lookup(pa.array(sorted(set(map(str, parents))), pa.string()))
        row_of = _row_positions(found, self.source.id_column)
        column = found[self.source.audio_column]
        fetcher = self.source.fetcher()
        audio = []
        for clip_id, parent, start, end in zip(ids, parents, starts, ends):
            parent = str(parent)
            if parent not in row_of:
                raise ValueError(f"{clip_id}: {parent} is not in the input {self.input_uri} any more")
            data = None
            try:
                data = _audio_input(column, row_of[parent], fetcher)
                pcm = decode_audio(data, target_rate=16000).pcm
            except AudioDecodeError as e:
                raise ValueError(f"{clip_id}: the input's audio no longer decodes ({e.reason})") from None
            finally:
                if isinstance(data, pa.NativeFile):
                    data.close()
            if start is not None and end is not None:
                pcm = pcm[int(start * 16000):int(end * 16000)]
            name = clip_id if "@" in clip_id else clip_id.rsplit(".", 1)[0]
            audio.append({"bytes": encode_flac(pcm), "path": f"{name.rsplit('/', 1)[-1]}.flac"})
            del pcm
        table = table.drop_columns([c for c in (C.AUDIO,) if c in table.column_names])
        return table.append_column(C.AUDIO, pa.array(audio, C.AUDIO_TYPE))


def _audio_input(column: Union[pa.Array, pa.ChunkedArray], row: int, fetcher: AudioFetcher) -> AudioInput:
    """A row's encoded audio for the decoder: its cell's buffer, or the file its path names."""
    data = cell_buffer(column, row)
    return data if data else audio_input_of(column[row], fetcher)  # a path, or nothing: a small scalar


def _row_positions(found: pa.Table, id_column: str) -> dict[str, int]:
    return {str(i): n for n, i in enumerate(found[id_column].to_pylist())}


def _rows_with_ids(src: Any, wanted: pa.Array, max_cell_bytes: Optional[int] = None
                   ) -> tuple[pa.Table, dict[str, CellTooLarge]]:
    """The id and audio of the input rows with these ids, and those left unread as larger than
    `max_cell_bytes` (known from the footer: a row group's audio over its rows).

    The id column of every row group is read; the audio only of the groups that hold a wanted
    id, without pre-buffering, a few megabytes of rows at a time, of which only the wanted rows
    are kept. Memory: the rows kept, and a batch (one row, where a row is larger: twice it
    while its page is read)."""
    from .parquet import audio_chunk_bytes, open_parquet, row_group_batches

    parts: list[pa.Table] = []
    too_large: dict[str, CellTooLarge] = {}
    for path in src.files:
        with open_parquet(src.fs, path, lean=True) as (_, pf):
            for g in range(pf.metadata.num_row_groups):
                ids = pc.cast(pf.read_row_group(g, columns=[src.id_column]).column(0), pa.string())
                mask = pc.is_in(ids, value_set=wanted)
                if not pc.any(mask).as_py():
                    continue
                rows = pf.metadata.row_group(g).num_rows
                audio_bytes = audio_chunk_bytes(pf, g, src.audio_column)
                if max_cell_bytes is not None and audio_bytes / rows > max_cell_bytes:
                    too_large.update((i, CellTooLarge(audio_bytes, rows)) for i in ids.filter(mask).to_pylist())
                    continue
                step = max(1, min(4096, int(_BATCH_BYTES * rows / max(audio_bytes, 1))))
                for batch in row_group_batches(pf, g, rows, step, release=audio_bytes >= _BATCH_BYTES,
                                               columns=[src.id_column, src.audio_column]):
                    keep = pc.is_in(pc.cast(batch.column(0), pa.string()), value_set=wanted)
                    if pc.all(keep).as_py():
                        parts.append(pa.Table.from_batches([batch]))  # a wanted row alone: not copied
                    elif pc.any(keep).as_py():
                        parts.append(pa.Table.from_batches([batch.filter(keep)]))
    if not parts:
        return pa.table({src.id_column: pa.array([], pa.string()), src.audio_column: pa.array([], pa.binary())}), too_large
    return pa.concat_tables(parts, promote_options="permissive"), too_large
