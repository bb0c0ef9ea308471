"""The filter API: a filter reads some columns and says why a row should go, or None.

As in datatrove, a filter only decides. The stage that runs it records the reason in
`drop_reason`, the sink sends the row to `rejected/`, and the report counts rows per reason.
Each filter runs at the earliest stage whose columns cover its `needs` (audio facts right
after decoding, transcript facts right after Whisper, the score after the judge), so no row
that a cheap check rejects ever reaches a model.

A filter of your own is a class in any importable module:

>>> class LoudEnough(Filter):                                        # doctest: +SKIP
...     needs = ("rms_dbfs",)
...     def __init__(self, min_dbfs: float = -35.0):
...         self.min_dbfs = min_dbfs
...     def reason(self, row):
...         return "too_quiet" if row["rms_dbfs"] < self.min_dbfs else None

and `filters.custom: [{type: "my_filters:LoudEnough", args: {min_dbfs: -30}}]` in the config.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, Mapping, Optional, Sequence

import numpy as np
import pyarrow as pa

from ..core.registry import Registry

if TYPE_CHECKING:
    from ..config import PipelineConfig


class Filter:
    """Base class of every filter, built-in or yours.

    `needs`: the columns `reason` reads (class or instance attribute). `produces`: columns a
    filter measures and writes for every row it sees (`wer`), filled by `measure`. A row is a
    dict of the needed (and measured) values. `evaluate` is the batch form; override it when
    a vectorized check over the Arrow columns is worth it."""

    name: ClassVar[str] = ""
    needs: Sequence[str] = ()
    produces: Mapping[str, pa.DataType] = {}
    # A measuring filter whose column should exist for rows an earlier filter rejected too.
    measures_all: ClassVar[bool] = False

    @classmethod
    def configured(cls, config: "PipelineConfig", input_columns: set[str]) -> Optional["Filter"]:
        """A built-in filter from its own config section, or None when it is off (or has
        nothing to read in this input). Your own filters are built from `filters.custom`."""
        raise NotImplementedError(f"{cls.__name__} is not a built-in filter")

    def reason(self, row: Mapping[str, Any]) -> Optional[str]:
        """The drop reason for this row, or None to keep it."""
        raise NotImplementedError

    def measure(self, row: Mapping[str, Any]) -> Mapping[str, Any]:
        """Values of `produces` for this row (before `reason` sees them)."""
        return {}

    def evaluate(self, table: pa.Table, rows: np.ndarray) -> tuple[list[Optional[str]], dict[str, list[Any]]]:
        """Reasons for the rows at `rows` (indices into `table`), and their measured values."""
        index = pa.array(rows, pa.int64())
        cols = {c: table[c].take(index).to_pylist() for c in self.needs}
        reasons: list[Optional[str]] = []
        measured: dict[str, list[Any]] = {k: [] for k in self.produces}
        for j in range(len(rows)):
            row = {c: cols[c][j] for c in self.needs}
            if self.produces:
                m = self.measure(row)
                for k in self.produces:
                    measured[k].append(m.get(k))
                row.update(m)
            reasons.append(self.reason(row))
        return reasons, measured

    def __repr__(self) -> str:
        return f"{type(self).__name__}(needs={list(self.needs)})"


# Built-in filters, by the name that configures them (`filters.order`, `filters.<name>`), in
# their default run order.
FILTERS: Registry[type[Filter]] = Registry("filter", lazy={
    "duration": "audiocurate.filters.audio", "silence": "audiocurate.filters.audio",
    "dnsmos": "audiocurate.filters.dnsmos", "language": "audiocurate.filters.language",
    "hallucination": "audiocurate.filters.hallucination", "speaking_rate": "audiocurate.filters.speaking_rate",
    "wer": "audiocurate.filters.wer",
    "min_score": "audiocurate.filters.score",
})
