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
that breaks a batch (the batch is retried row by row, so one bad row costs itself only),
telling the engine's faults from the rows' (`core.faults`: an engine fault is tried again and
then fails the block, never written as error rows), and per-row busy seconds.
"""

from __future__ import annotations

import gc
import logging
import sys
import time
from dataclasses import dataclass, field
from typing import Any, ClassVar, Mapping, Optional, Sequence

import numpy as np
import pyarrow as pa

from .. import contract as C
from ..filters.base import Filter
from .faults import EngineFault, classify_failures, describe, is_fatal


@dataclass
class Outcome:
    """What a stage did to the rows it was given, position by position (not table index)."""

    values: dict[str, list[Any]] = field(default_factory=dict)
    errors: dict[int, str] = field(default_factory=dict)
    drops: dict[int, str] = field(default_factory=dict)


class Stage:
    """Base of every stage. Subclasses set `name`, `produces` (column -> Arrow type) and
    `needs` (columns `process` reads; `plan.check_needs` checks them against the input's and
    the earlier stages' columns before the run starts), and implement `process`."""

    name: ClassVar[str] = ""
    produces: ClassVar[Mapping[str, pa.DataType]] = {}
    needs: Sequence[str] = ()
    # Whether this stage's error rows may be worth another try (`--retry-errors` picks the
    # error rows whose `error_stage` names such a stage): a model or a server can refuse a row
    # on one day and take it on another; a clip that does not decode stays corrupt.
    retryable_errors: ClassVar[bool] = False

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
        becomes an error row (a filter's bug on one clip costs that row, not the run).
        `core.faults`' rules hold here as in a model stage: a fatal kind of exception (out of
        memory, a model that a filter runs crashing) or every row failing alone the same way
        is the filter's or the machine's fault, and fails the block with `EngineFault`."""
        if not len(rows):
            return [], {k: [] for k in f.produces}
        label = f"filter {f.name or type(f).__name__}"
        try:
            return f.evaluate(table, rows)
        except Exception as e:
            if is_fatal(e):
                raise EngineFault(self.name, label, describe(e), 1) from e
        reasons: list[Optional[str]] = []
        measured: dict[str, list[Any]] = {k: [] for k in f.produces}
        failed: dict[int, Exception] = {}
        for i in rows:
            try:
                r, m = f.evaluate(table, np.array([i]))
            except Exception as e:
                if is_fatal(e):
                    raise EngineFault(self.name, label, describe(e), 1) from e
                failed[int(i)] = e
                r, m = [None], {k: [None] for k in f.produces}
            reasons.extend(r)
            for k in f.produces:
                measured[k].extend(m[k])
        fault = classify_failures(list(failed.values())) if len(failed) == len(rows) else None
        if fault is not None:
            raise EngineFault(self.name, label, fault, 1)
        for i, e in failed.items():
            errors[i] = (self.name, f"{label} failed: {type(e).__name__}: {e}")
        return reasons, measured


class ModelStage(Stage):
    """A stage around a model: rows go to `run_batch` in batches of `batch_size`; a batch
    that raises is retried row by row, so only the row that breaks it becomes an error row.
    A failure that is the engine's (`core.faults`: a fatal kind of exception, or every row of
    a batch failing alone the same way) is never written as error rows: the batch is run
    again `engine_fault_retries` times, `engine_fault_backoff_s` apart (doubling) and with the
    engine loaded anew, and then the block fails with `EngineFault`.
    `timing_column` gets each row's share of the batch's seconds (by `weight`)."""

    timing_column: ClassVar[str] = ""
    error_prefix: ClassVar[str] = ""
    retryable_errors: ClassVar[bool] = True
    # The attribute (a `functools.cached_property`) that holds the loaded engine: dropped after
    # an engine fault, so the next try loads it again.
    engine_attribute: ClassVar[str] = ""

    def __init__(self, batch_size: int, filters: Sequence[Filter] = (), *, engine_fault_retries: int = 2,
                 engine_fault_backoff_s: float = 1.0):
        super().__init__(filters)
        self.batch_size = batch_size
        self.engine_fault_retries = engine_fault_retries
        self.engine_fault_backoff_s = engine_fault_backoff_s

    @property
    def engine_name(self) -> str:
        """The engine as users know it, for `EngineFault`'s message."""
        return type(self).__name__

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
            results.extend(self._tried(batch))
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

    def _tried(self, batch: list[Any]) -> list[Any]:
        """A batch's results (an exception where a row failed alone), with engine faults tried
        again and finally raised as `EngineFault`."""
        tries = self.engine_fault_retries + 1
        for attempt in range(1, tries + 1):
            results = self._isolated(batch)
            fault = classify_failures(results)
            if fault is None:
                return results
            self.log.warning("%s: engine fault on a batch of %d rows, try %d of %d: %s", self.engine_name,
                             len(batch), attempt, tries, fault)
            _release_frames(results)  # their tracebacks hold the failed engine's frames (and GPU memory)
            del results
            self.reset_engine()
            if attempt < tries:
                time.sleep(self.engine_fault_backoff_s * 2 ** (attempt - 1))
        # Last chance, each row alone on a fresh engine: one row that always breaks it (a clip or
        # prompt too large for the GPU) must not stop the run. If any row succeeds the engine
        # works, and the rows that still fail are theirs (error rows; `--retry-errors` takes them).
        alone = []
        for item in batch:
            try:
                result = self.run_batch([item])
                alone.append(result[0] if len(result) == 1 else RuntimeError(f"{len(result)} results for 1 input"))
            except Exception as e:
                alone.append(e)
        if any(not isinstance(r, BaseException) for r in alone):
            return alone
        raise EngineFault(self.name, self.engine_name, fault, tries)

    def reset_engine(self) -> None:
        """Drop the loaded engine (and what PyTorch cached on the GPU for it), so the next
        batch loads it again: an engine whose state broke gets a fresh one."""
        if self.engine_attribute:
            self.__dict__.pop(self.engine_attribute, None)
        gc.collect()
        torch = sys.modules.get("torch")
        if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
            torch.cuda.empty_cache()

    def _isolated(self, batch: list[Any]) -> list[Any]:
        """The batch, then (when it raises) each row alone: a result or an exception per row.
        A fatal exception (`core.faults.is_fatal`) ends it there: the rows not yet run get it
        too, rather than each going into an engine that is known to be broken."""
        try:
            results = self.run_batch(batch)
            if len(results) != len(batch):
                raise RuntimeError(f"{len(results)} results for {len(batch)} inputs")
            return results
        except Exception as e:
            if len(batch) == 1 or is_fatal(e):
                self.log.debug("a batch of %d failed: %s: %s", len(batch), type(e).__name__, e)
                return [e] * len(batch)
        out: list[Any] = []
        for k, item in enumerate(batch):
            out.extend(self._isolated([item]))
            if isinstance(out[-1], Exception) and is_fatal(out[-1]):
                return out + [out[-1]] * (len(batch) - k - 1)
        return out


def _release_frames(results: list[Any]) -> None:
    for r in results:
        if isinstance(r, BaseException):
            r.__traceback__ = None


def _scatter(n: int, rows: np.ndarray, values: Optional[list[Any]]) -> list[Any]:
    """Values given for the rows at `rows`, as a column of `n` (None elsewhere)."""
    full: list[Any] = [None] * n
    if values is not None:
        for j, i in enumerate(rows):
            full[i] = values[j]
    return full
