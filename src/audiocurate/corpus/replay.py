"""The refilter's Dataset: OUTPUT's stored rows, finished ones skipped, routed anew by the
placed filters on their stored columns (`RefilterStage`); `refilter` (the command) runs it
through the pipeline's held run. See `corpus.refilter` for which rows can change outcome."""

from __future__ import annotations

from typing import Any, Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .. import contract as C
from ..config import PipelineConfig
from ..filters.base import Filter
from ..sources.stored import RECORDING, StoredRows
from .moves import DUPLICATE_OF

# Where a stored row can have stopped, in pipeline order (the segment stage's filters are
# the audio filters of a segmented run).
_STAGES = (C.SEGMENT, C.DECODE, C.TRANSCRIBE, C.SELECT)
REFILTER_STAGE = "refilter"


def refiltered(config: PipelineConfig, source: StoredRows, skip_ids: Optional[list[str]],
               rc: Any, skip_segments: Optional[list[str]] = None) -> Any:
    """The refilter's Dataset: stored rows, finished ones skipped (resume), routed anew;
    segmented, `skip_ids` are recordings and `skip_segments` the segments written of the others
    (`resume.plan_resume`)."""
    from ..plan import drop_by_id_step, placed_filters
    from ..runtime import apply_step, configure_dataset, row_task_args

    ds = source.dataset(num_cpus=config.decode.resources.num_cpus)
    if source.segmented:  # `skip_ids` are recordings; the segments of one not finished are also skipped
        written = skip_segments or []
        if skip_ids:
            ds = apply_step(ds, drop_by_id_step(rc, RECORDING, skip_ids, None, False, name="skip_recordings"))
        skip_ids = written
    if skip_ids:
        ds = apply_step(ds, drop_by_id_step(rc, source.id_column, skip_ids, None, False))

    placed = placed_filters(config, source.input_columns)
    stage = RefilterStage(placed, reached_columns(config), source.id_column, source.uri)
    ds = ds.map_batches(stage, batch_format="pyarrow", udf_modifying_row_count=False, **row_task_args(rc))
    return configure_dataset(ds, rc)


def reached_columns(config: PipelineConfig) -> dict[str, list[str]]:
    """For each model stage, the columns whose values show a stored row got that far; a stage
    with no model (`backend: none` writes no score) has nothing to show and is never a stop."""
    from ..judge.backends import judge_backend

    out: dict[str, list[str]] = {C.TRANSCRIBE: list(C.asr_columns(config.asr))}
    if getattr(judge_backend(config.judge.backend), "scores", True):
        out[C.SELECT] = list(C.JUDGE_COLUMNS)
    return out


class RefilterStage:
    """Routes stored rows anew: the placed filters in pipeline order, each deciding the rows
    that reached its stage; see the module's docstring for rows that cannot be decided."""

    def __init__(self, placed: dict[str, list[Filter]], reached: dict[str, list[str]], id_column: str,
                 output_uri: str):
        self.placed = placed
        self.reached = reached
        self.id_column = id_column
        self.output_uri = output_uri
        self._audio: Any = None

    def __call__(self, table: pa.Table) -> pa.Table:
        table = C.ensure_status(table.drop_columns([c for c in (RECORDING,) if c in table.column_names]))
        if C.AUDIO not in table.column_names:
            table = table.append_column(C.AUDIO, pa.nulls(table.num_rows, C.AUDIO_TYPE))
        old = table[C.DROP_REASON].to_pylist()
        failed = pc.is_valid(table[C.ERROR_STAGE]).to_pylist()
        uncut = _uncut_recordings(table, self.id_column)
        curated_before = [r is None and not e for r, e in zip(old, failed)]
        reasons: list[Optional[str]] = list(old)
        pending = [i for i in range(table.num_rows) if not failed[i] and not uncut[i]]
        for stage in _STAGES:
            shown = [c for c in self.reached.get(stage, []) if c in table.column_names]
            if shown:
                got_there = np.zeros(table.num_rows, dtype=bool)
                for c in shown:
                    got_there |= pc.is_valid(table[c]).to_numpy(zero_copy_only=False)
                pending = [i for i in pending if curated_before[i] or got_there[i]]  # others keep `old`
            for f in self.placed.get(stage, []):
                if not pending:
                    break
                table, decided = _decide(f, table, pending)
                for i, r in zip(pending, decided):
                    if r is not None:
                        reasons[i] = r
                pending = [i for i, r in zip(pending, decided) if r is None]
        for i in pending:
            reasons[i] = None
        table = C.put_column(table, C.DROP_REASON, reasons, pa.string())
        if DUPLICATE_OF in table.column_names:  # a corpus pass's record, true only while its reason stands
            dup = [d if r == old_r and r is not None else None
                   for d, r, old_r in zip(table[DUPLICATE_OF].to_pylist(), reasons, old)]
            table = C.put_column(table, DUPLICATE_OF, dup, table.schema.field(DUPLICATE_OF).type)
        return self._with_audio(table, [i for i in pending if not curated_before[i]])

    def _with_audio(self, table: pa.Table, rows: list[int]) -> pa.Table:
        """Rows curated now that OUTPUT had rejected: their clip, read back from OUTPUT's input.
        A clip that cannot be read there any more becomes an error row saying so."""
        if not rows:
            return table
        audio = table[C.AUDIO].to_pylist()
        stage = table[C.ERROR_STAGE].to_pylist()
        error = table[C.ERROR].to_pylist()
        reasons = table[C.DROP_REASON].to_pylist()
        reader = self._audio_reader()
        wanted = table.select([c for c in table.column_names if c != C.AUDIO])
        try:  # one lookup in the input for the block's rows; row by row only to name the one that fails
            got = reader(wanted.take(pa.array(rows, pa.int64())))[C.AUDIO].to_pylist()
            for i, a in zip(rows, got):
                audio[i] = a
        except ValueError:
            for i in rows:
                try:
                    audio[i] = reader(wanted.slice(i, 1))[C.AUDIO][0].as_py()
                except ValueError as e:
                    stage[i], error[i], reasons[i] = REFILTER_STAGE, f"curated now, but {e}", None
        table = C.put_column(table, C.AUDIO, audio, C.AUDIO_TYPE)
        table = C.put_column(table, C.ERROR_STAGE, stage, pa.string())
        table = C.put_column(table, C.DROP_REASON, reasons, pa.string())
        return C.put_column(table, C.ERROR, error, pa.string())

    def _audio_reader(self) -> Any:
        if self._audio is None:
            from ..sources.audio_by_id import SourceAudio
            from ..run_output import RunOutput

            run = RunOutput.open(self.output_uri)
            self._audio = SourceAudio(run.input_uri, run.config.output.storage,
                                      run.config.model_dump(mode="json"))
        return self._audio


def _uncut_recordings(table: pa.Table, id_column: str) -> list[bool]:
    """Rows that are a recording the segment stage did not cut (no speech found; they are
    their own parent): no segment gate saw them in the run, so none decides them now."""
    if "parent_id" not in table.column_names:
        return [False] * table.num_rows
    own = pc.equal(pc.cast(table[id_column], pa.string()), pc.cast(table["parent_id"], pa.string()))
    return pc.fill_null(own, False).to_pylist()


def _decide(f: Filter, table: pa.Table, rows: list[int]) -> tuple[pa.Table, list[Optional[str]]]:
    """`f`'s reasons for `rows`: from its needs where they were stored (its measured columns
    written back), else from the signals it measures, as stored (`_replay`)."""
    index = np.asarray(rows, dtype=np.int64)
    if set(f.needs) <= set(table.column_names):
        reasons, measured = f.evaluate(table, index)
        for name, values in measured.items():
            typ = f.produces[name]
            column = table[name].to_pylist() if name in table.column_names else [None] * table.num_rows
            for i, v in zip(rows, values):
                column[i] = v
            table = C.put_column(table, name, column, typ)
        return table, reasons
    return table, _replay(f, table, index)


def _replay(f: Filter, table: pa.Table, index: np.ndarray) -> list[Optional[str]]:
    """A measuring filter (DNSMOS, the quality gates) deciding on its stored measurements."""
    taken = pa.array(index, pa.int64())
    names = [c for c in (*f.needs, *f.produces) if c in table.column_names]
    cols = {c: table[c].take(taken).to_pylist() for c in names}
    return [f.reason({c: cols[c][j] for c in names}) for j in range(len(index))]
