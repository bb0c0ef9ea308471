"""A finished run's own rows as an input: `audiocurate refilter` reads OUTPUT's curated/,
rejected/ and errors/ shards, with every column the run stored, instead of audio to decode.

Resumed by id (the shards of OUTPUT are not the rows' original row groups), like a folder
listing; ids are unique already, since OUTPUT accounted for each input row once.

A segmented OUTPUT's rows are segments: its input rows are still its recordings (`count`), so
DEST is accounted per recording, as OUTPUT was, and resumed per recording and segment."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator, Optional

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .. import contract as C
from . import Source

RECORDING = "_recording"  # a segment row's recording, while it is routed (never written)
_ROWS_PER_READ = 1024  # a curated row carries its FLAC: a read batch stays a few MB


@dataclass
class StoredRows(Source):
    """OUTPUT's shards, every split, read as they are; `splits` maps each shard to its split."""

    splits: dict[str, str] = field(default_factory=dict)
    error_columns: list[str] = field(default_factory=list)
    # The run's own input columns among the stored ones: where filters are placed, as in the run
    input_columns: list[str] = field(default_factory=list)
    replays_stored_rows: bool = True  # no model and no decoder runs on these rows (pipeline._run_held)
    # A segmented OUTPUT: how many recordings it accounted for (its input rows)
    recordings: Optional[int] = None

    @classmethod
    def open(cls, out: Any, id_column: str) -> "StoredRows":
        from ..run_state import SPLITS

        splits = {path: split for split in SPLITS for path in out.part_files(split)}
        columns: dict[str, None] = {}
        error_columns: dict[str, None] = {}
        for path, split in splits.items():
            with out.fs.open_input_file(path) as f:
                names = pq.ParquetFile(f).schema_arrow.names
            columns.update(dict.fromkeys(names))
            if split == "errors":
                error_columns.update(dict.fromkeys(names))
        return cls(uri=out.uri, kind="stored", id_column=id_column, audio_column=C.AUDIO, fs=out.fs,
                   root=out.uri, files=list(splits), columns=list(columns), splits=splits,
                   error_columns=list(error_columns))

    @property
    def carried_columns(self) -> list[str]:
        """What an error row carries: the run's input columns (once known), else what errors/ stored."""
        if self.input_columns:
            return list(self.input_columns)
        return [c for c in self.error_columns if c not in C.STATUS_COLUMNS]

    @property
    def partitioned(self) -> bool:
        return False

    @property
    def segmented(self) -> bool:
        return self.recordings is not None

    def count(self) -> int:
        """The input rows: OUTPUT's stored rows, or its recordings when they are segments."""
        return self.recordings if self.recordings is not None else super().count()

    def dataset(self, files: Optional[list[str]] = None, num_cpus: Optional[float] = None,
                block_bytes: int = 8 << 20, reads: Optional[list[dict[str, Any]]] = None,
                segmented: bool = False) -> "Any":
        """One read task per shard, which yields it in batches of rows."""
        import ray

        paths = files if files is not None else self.files
        if not paths:
            return ray.data.from_items([{"path": ""}]).limit(0)
        reader = StoredShardReader(self.fs, self.id_column if self.segmented else None)
        return ray.data.from_items([{"path": p} for p in paths], override_num_blocks=len(paths)).map_batches(
            reader, batch_size=1, batch_format="pyarrow", num_cpus=num_cpus, udf_modifying_row_count=True)


class StoredShardReader:
    """Reads the shards named in a batch of `{path}` rows, a batch of rows at a time. With
    `id_column` (segment rows), each row also names its recording in `RECORDING`: its
    `parent_id`, or its own id for a recording that failed before it was cut."""

    def __init__(self, fs: Any, id_column: Optional[str] = None):
        self.fs = fs
        self.id_column = id_column

    def __call__(self, batch: pa.Table) -> Iterator[pa.Table]:
        for path in batch["path"].to_pylist():
            with self.fs.open_input_file(path) as f:
                pf = pq.ParquetFile(f)
                for rows in pf.iter_batches(batch_size=_ROWS_PER_READ):
                    table = pa.Table.from_batches([rows]).replace_schema_metadata(None)
                    if self.id_column is not None:
                        own = pc.cast(table[self.id_column], pa.string())
                        parent = table["parent_id"] if "parent_id" in table.column_names else own
                        table = table.append_column(RECORDING, pc.coalesce(pc.cast(parent, pa.string()), own))
                    yield table
