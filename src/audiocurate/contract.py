"""The row contract between stages: column names, types and each row's fate.

Every stage adds columns and never drops a row. A row that fails gets `error_stage` and
`error`; a row a filter rejects gets `drop_reason`. Later stages pass such rows through
untouched, so the sink sees every input row and can account for each one.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

ERROR_STAGE = "error_stage"
ERROR = "error"
DROP_REASON = "drop_reason"
# Values of `error_stage`: where a row failed.
DECODE, SEGMENT, TRANSCRIBE, JUDGE, SELECT, PACKAGE = ("decode", "segment", "transcribe", "judge", "select", "package")
PCM = "_pcm16"  # 16 kHz mono int16 samples between stages; never written
PART = "_part"  # a row's input row group (resume.py); travels with the row, never written
WRITTEN_SEGMENTS = "_written_segments"  # a cut-off recording's segments already written (resume.py)
AUDIO = "audio"  # the curated output's {bytes, path} struct

DECODE_COLUMNS = {
    "duration_s": pa.float64(),
    "source_sample_rate": pa.int32(),
    "source_channels": pa.int16(),
    "source_format": pa.string(),
    "peak_dbfs": pa.float32(),
    "rms_dbfs": pa.float32(),
    "decode_s": pa.float32(),
}
ASR_COLUMNS = {
    "transcript": pa.string(),
    "language": pa.string(),
    "avg_logprob": pa.float32(),
    "no_speech_prob": pa.float32(),
    "compression_ratio": pa.float32(),
    "asr_model": pa.string(),
    "asr_s": pa.float32(),
}
WORDS_TYPE = pa.list_(pa.struct([("word", pa.string()), ("start_s", pa.float32()), ("end_s", pa.float32()),
                                  ("probability", pa.float32())]))
WER_COLUMNS = {"wer": pa.float32()}
SEGMENT_COLUMNS = {
    "parent_id": pa.string(),  # the input row's id
    "start_s": pa.float64(),  # in the recording
    "end_s": pa.float64(),
    "segments": pa.int32(),  # segments the recording was cut into: resume knows when a parent is done
}
JUDGE_COLUMNS = {
    "edu_score": pa.int8(),
    "edu_score_mean": pa.float32(),
    "edu_probs": pa.list_(pa.float32()),
    "judge_model": pa.string(),
    "judge_truncated": pa.bool_(),
    "judge_s": pa.float32(),
}
def asr_columns(asr: Any) -> dict[str, pa.DataType]:
    """What the transcribe stage writes under this ASR configuration: the optional columns
    only when asked for, so a default run's schema does not change."""
    cols = dict(ASR_COLUMNS)
    if asr.language is None or getattr(asr, "language_id_model", None):  # the language is heard, not set
        cols["language_prob"] = pa.float32()
    if getattr(asr, "word_timestamps", False):
        cols["words"] = WORDS_TYPE
    return cols


STATUS_COLUMNS = {ERROR_STAGE: pa.string(), ERROR: pa.string(), DROP_REASON: pa.string()}
AUDIO_TYPE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
PRODUCED = {**DECODE_COLUMNS, **ASR_COLUMNS, **WER_COLUMNS, **JUDGE_COLUMNS}


class ColumnCollision(ValueError):
    """An input column has the name of a column the pipeline produces."""


def check_columns(input_columns: Sequence[str], produced_by: dict[str, str], audio_column: str) -> None:
    """Produced columns never overwrite input columns: a collision is refused before the run,
    naming the columns and the stages that produce them. The exception is a Hugging Face
    `audio` column, which the packaged audio replaces by design (same `{bytes, path}` layout)."""
    owned = {**{c: "the row contract" for c in (*STATUS_COLUMNS, PCM, PART, WRITTEN_SEGMENTS)}, **produced_by,
             AUDIO: "package"}
    clashes = [(c, owned[c]) for c in input_columns if c in owned and not (c == AUDIO == audio_column)]
    if clashes:
        named = ", ".join(f"{c!r} (written by {stage})" for c, stage in clashes)
        raise ColumnCollision(
            f"the input has columns the pipeline writes: {named}. Produced columns never overwrite "
            "input columns: rename those in the input (or, for a Dataset you pass to "
            "`pipeline.build`, with `ds.rename_columns`), then run again.")


def ensure_status(table: pa.Table) -> pa.Table:
    for name, typ in STATUS_COLUMNS.items():
        if name not in table.column_names:
            table = table.append_column(name, pa.nulls(table.num_rows, typ))
    return table


def active_mask(table: pa.Table) -> np.ndarray:
    """Rows still in play: neither failed nor rejected."""
    table = ensure_status(table)
    ok = pc.and_(pc.is_null(table[ERROR_STAGE]), pc.is_null(table[DROP_REASON]))
    return np.asarray(ok.to_numpy(zero_copy_only=False), dtype=bool)


def put_column(table: pa.Table, name: str, values: Sequence[Any] | pa.Array, typ: pa.DataType) -> pa.Table:
    """Set or add a column with an explicit type, so every block writes one schema."""
    arr = values if isinstance(values, (pa.Array, pa.ChunkedArray)) else pa.array(list(values), type=typ)
    if arr.type != typ:
        arr = arr.cast(typ)
    idx = table.schema.get_field_index(name)
    return table.set_column(idx, name, arr) if idx >= 0 else table.append_column(name, arr)


def put_null_columns(table: pa.Table, columns: dict[str, pa.DataType]) -> pa.Table:
    """A stage's columns for a block it has no active row in: nulls, without a Python list."""
    for name, typ in columns.items():
        table = put_column(table, name, pa.nulls(table.num_rows, typ), typ)
    return table


def put_columns(table: pa.Table, columns: dict[str, pa.DataType], values: dict[str, list[Any]]) -> pa.Table:
    for name, typ in columns.items():
        table = put_column(table, name, values.get(name, [None] * table.num_rows), typ)
    return table


def mark(table: pa.Table, *, errors: dict[int, tuple[str, str]] | None = None,
         drops: dict[int, str] | None = None) -> pa.Table:
    """Record failures ({row: (stage, reason)}) and rejections ({row: reason})."""
    table = ensure_status(table)
    if errors:
        stage = table[ERROR_STAGE].to_pylist()
        reason = table[ERROR].to_pylist()
        for i, (s, r) in errors.items():
            stage[i], reason[i] = s, r
        table = put_column(table, ERROR_STAGE, stage, pa.string())
        table = put_column(table, ERROR, reason, pa.string())
    if drops:
        drop = table[DROP_REASON].to_pylist()
        for i, r in drops.items():
            if drop[i] is None:
                drop[i] = r
        table = put_column(table, DROP_REASON, drop, pa.string())
    return table


def drop_settled_pcm(table: pa.Table) -> pa.Table:
    """Samples only for rows still in play: a rejected or failed clip's audio goes no further."""
    keep = pa.array(active_mask(table), pa.bool_())
    return put_column(table, PCM, pc.if_else(keep, table[PCM], pa.scalar(None, pa.large_binary())), pa.large_binary())


def pcm_of(table: pa.Table, i: int) -> np.ndarray:
    """A row's 16 kHz mono samples, without copying them out of Arrow."""
    return pcm_rows(table, [i])[0]


def pcm_rows(table: pa.Table, rows: Any) -> list[np.ndarray]:
    """The samples of many rows, in the order asked, without copying them out of Arrow: views
    cut from each chunk's offsets and data buffers, not an Arrow scalar per row (which costs
    more than the view at a GPU batch's thousands of rows)."""
    rows = np.asarray(rows, dtype=np.int64)
    out: list[np.ndarray] = [np.zeros(0, dtype=np.int16)] * len(rows)
    start = 0
    for chunk in table[PCM].chunks:
        n = len(chunk)
        here = np.flatnonzero((rows >= start) & (rows < start + n))
        if len(here):
            _, offsets_buf, data = chunk.buffers()
            width = np.int64 if pa.types.is_large_binary(chunk.type) else np.int32
            offsets = np.frombuffer(offsets_buf, dtype=width)[chunk.offset:chunk.offset + n + 1]
            nulls = chunk.is_null().to_numpy(zero_copy_only=False)
            for k in here.tolist():
                j = int(rows[k]) - start
                if not nulls[j] and data is not None:
                    lo, hi = int(offsets[j]), int(offsets[j + 1])
                    out[k] = np.frombuffer(data, dtype="<i2", count=(hi - lo) // 2, offset=lo)
        start += n
    return out
