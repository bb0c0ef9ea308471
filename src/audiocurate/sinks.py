"""Where rows end up: `curated/`, `rejected/`, `errors/`, written as whole shards.

Resume is built on the output's record of finished rows rather than `ray.data.checkpoint`:
Ray's checkpointing is exact (two-phase commit) only for a single file datasink, and falls
back to at-least-once writes for any other sink. We write three outputs from one streaming
dataset, so we make each shard file its own commit instead:

* a shard's name is a hash of the ids it holds, so a retried write task rewrites the same
  file rather than adding a second copy;
* a shard appears atomically (rename on local disks, a single PUT on object stores);
* a shard's footer counts its rows per input partition (`with_part_footer`), which is what
  `run_state.read_progress` reads back on start: finished rows are skipped.

A run killed at any moment therefore leaves whole shards only, and the next run completes
exactly what is missing. The run's own record (identity, attempts, `_SUCCESS`, progress) is
`run_state`'s; `OutputDir` only reads and writes the folder's files.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import uuid
from collections import Counter, defaultdict
from typing import Any, Iterable, Iterator, Optional

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from ray.data.block import Block, BlockAccessor
from ray.data.datasource import Datasink

from . import contract as C
from . import storage
from .contract import PART, WRITTEN_SEGMENTS
from .run_state import CURATED, ERRORS, FOOTER_KEY, REJECTED, SPLITS, STATE_DIR, TMP_PREFIX, RunState
from .storage import StorageConfig

# The curated output's leading columns, in this order; every other column follows.
LEADING = ["audio", "transcript", "edu_score", "edu_score_mean", "edu_probs", "judge_model",
           "duration_s", "language", "avg_logprob", "no_speech_prob", "compression_ratio", "wer",
           "asr_model", "judge_truncated", "source_sample_rate", "source_channels", "source_format",
           "peak_dbfs", "rms_dbfs"]
TRAILING = ["decode_s", "asr_s", "judge_s"]


class OutputDir:
    """An output folder (local or object storage): its files, written whole or not at all.
    Its run record is `state` (`run_state.RunState`)."""

    def __init__(self, uri: str, storage_config: StorageConfig | None = None):
        self.uri = uri
        self.fs, self.root = storage.resolve(uri, storage_config)

    # ---- paths ------------------------------------------------------------------------------
    def path(self, *parts: str) -> str:
        return storage.join(self.root, *parts)

    def part_files(self, split: str) -> list[str]:
        infos = self.fs.get_file_info(pafs.FileSelector(self.path(split), allow_not_found=True))
        return sorted(i.path for i in infos if i.type == pafs.FileType.File and i.base_name.endswith(".parquet")
                      and not i.base_name.startswith(TMP_PREFIX))

    def exists(self, path: str) -> bool:
        return self.fs.get_file_info(path).type == pafs.FileType.File

    # ---- files ------------------------------------------------------------------------------
    def write_bytes(self, path: str, data: bytes) -> None:
        """Atomic: readers see the whole file or nothing. Bytes are written as given (pyarrow
        would otherwise gzip a `.gz` name a second time)."""
        if storage.is_local(self.fs):
            with self.writing(path) as f:
                f.write(data)
        else:  # an object store's PUT of bytes in hand is already all-or-nothing
            self.fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
            with self.fs.open_output_stream(path, compression=None) as f:
                f.write(data)

    @contextlib.contextmanager
    def writing(self, path: str) -> Iterator[Any]:
        """A stream that appears at `path` whole or not at all, for files too large to hold in
        memory: written under a temporary name beside it (`clean_tmp` removes one a killed
        process left) and moved into place once complete. On every filesystem: an object
        store's multipart upload, closed after an error, would publish the part written."""
        parent, name = path.rsplit("/", 1)
        self.fs.create_dir(parent, recursive=True)
        tmp = f"{parent}/{TMP_PREFIX}{uuid.uuid4().hex}-{name}"
        try:
            with self.fs.open_output_stream(tmp, compression=None) as f:
                yield f
            self.fs.move(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                self.fs.delete_file(tmp)
            raise

    def read_bytes(self, path: str) -> Optional[bytes]:
        try:
            with self.fs.open_input_stream(path, compression=None) as f:
                return f.read()
        except FileNotFoundError:
            return None

    def write_json(self, name: str, obj: Any) -> None:
        self.write_bytes(self.path(name), json.dumps(obj, indent=2, default=_json_default).encode())

    def read_json(self, name: str) -> Optional[Any]:
        raw = self.read_bytes(self.path(name))
        return json.loads(raw) if raw is not None else None

    def clean_tmp(self) -> int:
        """Remove half-written files a killed run left behind."""
        removed = 0
        for split in (*SPLITS, STATE_DIR):
            infos = self.fs.get_file_info(pafs.FileSelector(self.path(split), allow_not_found=True))
            for i in infos:
                if i.base_name.startswith(TMP_PREFIX):
                    self.fs.delete_file(i.path)
                    removed += 1
        return removed

    @property
    def state(self) -> RunState:
        """The run recorded in this folder: identity, attempts, `_SUCCESS`, progress."""
        return RunState(self)


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



class CurationSink(Datasink[dict]):
    """Routes each row to its output and writes one shard per output per write task."""

    def __init__(self, out: OutputDir, id_column: str, carried: list[str], rows_per_shard: int = 256,
                 segmented: bool = False, audio_sampling_rate: Optional[int] = 16000):
        self.out = out
        self.audio_sampling_rate = audio_sampling_rate  # curated/'s Audio feature (None: each file's own rate)
        self.segmented = segmented
        self.id_column = id_column
        self.carried = [c for c in carried if c != id_column]
        self.rows_per_shard = rows_per_shard
        self.stats: dict[str, Any] = {}

    @property
    def min_rows_per_write(self) -> Optional[int]:
        return self.rows_per_shard

    def get_name(self) -> str:
        return "CurationSink"

    def write(self, blocks: Iterable[Block], ctx: Any) -> dict:
        tables = [BlockAccessor.for_block(b).to_arrow() for b in blocks]
        tables = [t for t in tables if t.num_rows]
        if not tables:
            return _empty_stats()
        return self.write_table(pa.concat_tables(tables, promote_options="default"))

    def write_table(self, table: pa.Table) -> dict:
        """Route each row of `table` to its output: one shard per output, named by its ids."""
        stats = _empty_stats()
        table = C.ensure_status(table)
        failed = pc.is_valid(table[C.ERROR_STAGE])
        dropped = pc.and_(pc.invert(failed), pc.is_valid(table[C.DROP_REASON]))
        kept = pc.and_(pc.invert(failed), pc.invert(dropped))
        for split, mask in ((ERRORS, failed), (REJECTED, dropped), (CURATED, kept)):
            part = table.filter(mask)
            if not part.num_rows:
                continue
            part = with_part_footer(part, self.segmented)  # the resume record: rows per input row group
            part = part.select(self.columns(split, part.column_names))
            if split == CURATED:  # `datasets` loads `audio` as an Audio feature as it is
                from .exports.hf_features import hf_feature_metadata

                part = part.replace_schema_metadata(
                    {**(part.schema.metadata or {}), **hf_feature_metadata(part.schema, self.audio_sampling_rate)})
            self.out.write_bytes(self.out.path(split, _shard_name(part[self.id_column])), _to_parquet(part))
            _add_stats(stats, split, part)
        return stats

    def columns(self, split: str, present: list[str]) -> list[str]:
        have = set(present)
        if split == ERRORS:  # a failed segment keeps its recording's id and count: resume needs them
            segment = [c for c in C.SEGMENT_COLUMNS if c in have and c not in self.carried]
            return [self.id_column, C.ERROR_STAGE, C.ERROR, *segment] + [c for c in self.carried if c in have]
        lead = [c for c in LEADING if c in have and not (split == REJECTED and c == C.AUDIO)]
        if split == REJECTED:
            lead.insert(0, C.DROP_REASON)
        middle = [c for c in present if c not in set(lead) | set(TRAILING) | set(C.STATUS_COLUMNS)
                  and c not in (self.id_column, C.AUDIO, C.PCM)]
        return [self.id_column, *lead, *middle, *[c for c in TRAILING if c in have]]

    def on_write_complete(self, write_result: Any) -> None:
        total = _empty_stats()
        for s in write_result.write_returns:
            _merge_stats(total, s)
        self.stats = total


class SettledRowsStage:
    """Writes the rows that already failed or were rejected to their outputs, right where
    they settle (after decoding), and passes on only the rows still in play.

    Such rows would otherwise ride through every model stage to the end: a Ray task or actor
    call per block and stage, which cost more than decoding them (measured: 20,000 silent
    clips, `benchmarks/plumbing.py`). Same shards, same names, same outputs as at the end."""

    def __init__(self, sink: CurationSink, later_columns: dict[str, pa.DataType], audio_column: str):
        self.sink = sink
        # What later stages would have done to a row they pass through: add their columns (as
        # nulls) and drop the audio, so every shard of an output has one schema wherever its
        # rows settled.
        self.later_columns = later_columns
        self.transport = [C.PCM, audio_column]

    def __call__(self, table: pa.Table) -> pa.Table:
        active = pa.array(C.active_mask(table), pa.bool_())
        if not pc.all(active).as_py():
            # The audio dropped before filtering: a filter copies every cell it keeps.
            settled = table.drop_columns([c for c in self.transport if c in table.column_names])
            settled = settled.filter(pc.invert(active))
            self.sink.write_table(C.put_null_columns(settled, self.later_columns))
            table = table.filter(active)
        return table


def _shard_name(ids: pa.ChunkedArray) -> str:
    digest = hashlib.sha1("\n".join(sorted(map(str, ids.to_pylist()))).encode()).hexdigest()[:24]
    return f"part-{digest}.parquet"


def _to_parquet(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd")
    return sink.getvalue().to_pybytes()


def _empty_stats() -> dict[str, Any]:
    return {"rows": Counter(), "audio_s": Counter(), "drop_reasons": Counter(), "error_stages": Counter()}


def _add_stats(stats: dict[str, Any], split: str, part: pa.Table) -> None:
    stats["rows"][split] += part.num_rows
    if "duration_s" in part.column_names:
        stats["audio_s"][split] += float(pc.sum(part["duration_s"]).as_py() or 0.0)
    if split == REJECTED:
        stats["drop_reasons"].update(part[C.DROP_REASON].to_pylist())
    if split == ERRORS:
        stats["error_stages"].update(part[C.ERROR_STAGE].to_pylist())


def _merge_stats(total: dict[str, Any], s: dict[str, Any]) -> None:
    for k, v in s.items():
        total[k].update(v)


def _json_default(o: Any) -> Any:
    if isinstance(o, Counter):
        return dict(o)
    if hasattr(o, "item"):
        return o.item()
    raise TypeError(f"not JSON serializable: {type(o).__name__}")
