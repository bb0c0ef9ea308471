"""The stage base class: what every pipeline stage does besides its own work.

A stage is a Ray Data batch UDF over Arrow tables (`__call__(table) -> table`). Subclasses
implement `process(table, rows)` for the rows still in play and return an `Outcome`; the base
class owns the rest, the same for every stage:

* the active-row mask: rows that failed or were rejected upstream pass through untouched;
* writing the produced columns with their declared types (nulls for rows not acted on), so
  every block has one schema;
* marking errors (`error_stage` = the stage's name) and drops (`drop_reason`);
* running the filters placed at this stage (`filters.place_filters`) on the rows it kept;
* logging per-block counts at DEBUG (`audiocurate.stage.<name>`).

`ModelStage` adds, for model stages: batching active rows by `batch_size`, isolating a row
that breaks a batch (the batch is retried row by row, so one bad row costs itself only), and
per-row busy seconds.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, ClassVar, Mapping, Optional, Sequence

import numpy as np
import pyarrow as pa

from .. import contract as C
from ..filters.base import Filter


@dataclass
class Outcome:
    """What a stage did to the rows it was given, position by position (not table index)."""

    values: dict[str, list[Any]] = field(default_factory=dict)
    errors: dict[int, str] = field(default_factory=dict)
    drops: dict[int, str] = field(default_factory=dict)


class Stage:
    """Base of every stage. Subclasses set `name`, `produces` (column -> Arrow type) and
    `needs` (columns `process` reads), and implement `process`."""

    name: ClassVar[str] = ""
    produces: ClassVar[Mapping[str, pa.DataType]] = {}
    needs: Sequence[str] = ()

    def __init__(self, filters: Sequence[Filter] = ()):
        self.filters = tuple(filters)

    @property
    def log(self) -> logging.Logger:
        return logging.getLogger(f"audiocurate.stage.{self.name}")

    def columns(self) -> dict[str, pa.DataType]:
        """Every column this stage adds: its own, then its filters' measures."""
        out = dict(self.produces)
        for f in self.filters:
            out.update(f.produces)
        return out

    def process(self, table: pa.Table, rows: np.ndarray) -> Outcome:
        """Do the stage's work on the rows at `rows` (all active)."""
        return Outcome()

    def finish(self, table: pa.Table) -> pa.Table:
        """Last touch on the block, after filters (e.g. drop transport columns)."""
        return table

    def __call__(self, table: pa.Table) -> pa.Table:
        t0 = time.perf_counter()
        table = C.ensure_status(table)
        rows = np.flatnonzero(C.active_mask(table))
        outcome = self.process(table, rows) if len(rows) else Outcome()
        table = self._write(table, rows, outcome)
        table, dropped = self._filter(table)
        if self.log.isEnabledFor(logging.DEBUG):
            self.log.debug("block of %d rows: %d acted on, %d errors, %d dropped, %.3f s", table.num_rows, len(rows),
                           len(outcome.errors), len(outcome.drops) + dropped, time.perf_counter() - t0)
        return self.finish(table)

    def _write(self, table: pa.Table, rows: np.ndarray, outcome: Outcome) -> pa.Table:
        for name, typ in self.produces.items():
            table = C.put_column(table, name, _scatter(table.num_rows, rows, outcome.values.get(name)), typ)
        errors = {int(rows[j]): (self.name, reason) for j, reason in outcome.errors.items()}
        drops = {int(rows[j]): reason for j, reason in outcome.drops.items()}
        return C.mark(table, errors=errors, drops=drops) if errors or drops else table

    def _filter(self, table: pa.Table) -> tuple[pa.Table, int]:
        """The placed filters, in order, each on the rows no earlier one rejected (so a cheap
        check spares an expensive one its rows). A filter with `measures_all` (`wer`) sees
        every row that entered, so its column is written for rejected rows too."""
        if not self.filters:
            return table, 0
        entered = np.flatnonzero(C.active_mask(table))
        drops: dict[int, str] = {}
        errors: dict[int, tuple[str, str]] = {}
        for f in self.filters:
            rows = entered if f.measures_all else np.array([i for i in entered if i not in drops and i not in errors],
                                                          dtype=np.int64)
            reasons, measured = self._evaluate(f, table, rows, errors)
            for name, typ in f.produces.items():
                table = C.put_column(table, name, _scatter(table.num_rows, rows, measured[name]), typ)
            for j, reason in enumerate(reasons):
                if reason is not None:
                    drops.setdefault(int(rows[j]), str(reason))
        for i in errors:
            drops.pop(i, None)
        if drops or errors:
            table = C.mark(table, errors=errors, drops=drops)
        return table, len(drops)

    def _evaluate(self, f: Filter, table: pa.Table, rows: np.ndarray,
                  errors: dict[int, tuple[str, str]]) -> tuple[list[Optional[str]], dict[str, list[Any]]]:
        """A filter on the rows; one that raises is run row by row, and a row it raises on
        becomes an error row (a filter's bug costs that row, not the run)."""
        if not len(rows):
            return [], {k: [] for k in f.produces}
        try:
            return f.evaluate(table, rows)
        except Exception:
            pass
        reasons: list[Optional[str]] = []
        measured: dict[str, list[Any]] = {k: [] for k in f.produces}
        for i in rows:
            try:
                r, m = f.evaluate(table, np.array([i]))
            except Exception as e:
                errors[int(i)] = (self.name, f"filter {f.name or type(f).__name__} failed: {type(e).__name__}: {e}")
                r, m = [None], {k: [None] for k in f.produces}
            reasons.extend(r)
            for k in f.produces:
                measured[k].extend(m[k])
        return reasons, measured


class ModelStage(Stage):
    """A stage around a model: rows go to `run_batch` in batches of `batch_size`; a batch
    that raises is retried row by row, so only the row that breaks it becomes an error row.
    `timing_column` gets each row's share of the batch's seconds (by `weight`)."""

    timing_column: ClassVar[str] = ""
    error_prefix: ClassVar[str] = ""

    def __init__(self, batch_size: int, filters: Sequence[Filter] = ()):
        super().__init__(filters)
        self.batch_size = batch_size

    def inputs(self, table: pa.Table, rows: np.ndarray) -> list[Any]:
        """One model input per active row."""
        raise NotImplementedError

    def run_batch(self, items: list[Any]) -> list[Any]:
        """The model on a batch; one result per item, in order."""
        raise NotImplementedError

    def row_values(self, result: Any) -> tuple[dict[str, Any], Optional[str]]:
        """A result's column values, and an error reason when the model refused the row."""
        raise NotImplementedError

    def weight(self, item: Any) -> float:
        return 1.0

    def process(self, table: pa.Table, rows: np.ndarray) -> Outcome:
        items = self.inputs(table, rows)
        results: list[Any] = []
        seconds: list[float] = []
        for lo in range(0, len(items), self.batch_size):
            batch = items[lo:lo + self.batch_size]
            t0 = time.perf_counter()
            results.extend(self._isolated(batch))
            elapsed = time.perf_counter() - t0
            weights = [self.weight(x) for x in batch]
            total = sum(weights) or 1.0
            seconds.extend(elapsed * w / total for w in weights)
        out = Outcome(values={k: [None] * len(items) for k in self.produces})
        for j, r in enumerate(results):
            if isinstance(r, Exception):
                out.errors[j] = f"{self.error_prefix}{type(r).__name__}: {r}"
                values: dict[str, Any] = {}
            else:
                values, error = self.row_values(r)
                if error:
                    out.errors[j] = error
            for k, v in values.items():
                if k in out.values:  # a backend may report more than this configuration writes
                    out.values[k][j] = v
            if self.timing_column:
                out.values[self.timing_column][j] = seconds[j]
        return out

    def _isolated(self, batch: list[Any]) -> list[Any]:
        try:
            results = self.run_batch(batch)
            if len(results) != len(batch):
                raise RuntimeError(f"{len(results)} results for {len(batch)} inputs")
            return results
        except Exception as e:
            if len(batch) == 1:
                self.log.debug("a row failed alone: %s: %s", type(e).__name__, e)
                return [e]
        out: list[Any] = []
        for item in batch:
            out.extend(self._isolated([item]))
        return out


def _scatter(n: int, rows: np.ndarray, values: Optional[list[Any]]) -> list[Any]:
    """Values given for the rows at `rows`, as a column of `n` (None elsewhere)."""
    full: list[Any] = [None] * n
    if values is not None:
        for j, i in enumerate(rows):
            full[i] = values[j]
    return full
