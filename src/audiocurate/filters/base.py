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

A built-in filter is the same class plus its settings (a `Settings` subclass in its own module,
whose field descriptions are the manual), registered in `FILTERS` under the name of its section:
`config.py` builds `filters.<name>` from `settings`, and `configured` builds the filter from it.
"""

from __future__ import annotations

from typing import Any, ClassVar, Mapping, Optional, Protocol, Sequence

import numpy as np
import pyarrow as pa

from ..core.registry import Registry
from ..core.settings import Settings


class RunConfig(Protocol):
    """The run's configuration (`config.PipelineConfig`) as a filter is built from it: its
    section is `filters.<name>`; a filter that depends on another section (the ASR language,
    the input's columns) reads it in `applies` or `configured`. Named by its one field the
    base class reads, not imported: `config` imports this module to build `filters`."""

    @property
    def filters(self) -> Any: ...


class Filter:
    """Base class of every filter, built-in or yours.

    `needs`: the columns `reason` reads (class or instance attribute). `produces`: columns a
    filter measures and writes for every row it sees (`wer`), filled by `measure`. A row is a
    dict of the needed (and measured) values. `evaluate` is the batch form; override it when
    a vectorized check over the Arrow columns is worth it."""

    name: ClassVar[str] = ""
    # A built-in's section, `filters.<name>`: its constructor takes an instance.
    settings: ClassVar[Optional[type[Settings]]] = None
    needs: Sequence[str] = ()
    produces: Mapping[str, pa.DataType] = {}
    # A measuring filter whose column should exist for rows an earlier filter rejected too.
    measures_all: ClassVar[bool] = False

    @classmethod
    def configured(cls, config: RunConfig, input_columns: set[str]) -> Optional["Filter"]:
        """A built-in filter from its section `filters.<name>`, or None when the section is
        off (`enabled: false`) or the filter does not apply to this run (`applies`). Your own
        filters are built from `filters.custom`."""
        if cls.settings is None:
            raise NotImplementedError(f"{cls.__name__} is not a built-in filter")
        section = getattr(config.filters, cls.name)
        if not getattr(section, "enabled", True) or not cls.applies(config, input_columns):
            return None
        return cls(section)

    @classmethod
    def applies(cls, config: RunConfig, input_columns: set[str]) -> bool:
        """Whether this run has anything for the filter to check (say, the input's reference column)."""
        return True

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
# their default run order. The quality gates come after `dnsmos`, as the other filters that read
# the samples, right after decoding.
FILTERS: Registry[type[Filter]] = Registry("filter", lazy={
    "duration": "audiocurate.filters.audio", "silence": "audiocurate.filters.audio",
    "dnsmos": "audiocurate.filters.dnsmos",
    "clipping": "audiocurate.filters.clipping", "noise": "audiocurate.filters.noise",
    "reverb": "audiocurate.filters.reverb", "overlap": "audiocurate.filters.overlap",
    "bandwidth": "audiocurate.filters.bandwidth",
    "language": "audiocurate.filters.language", "text_language": "audiocurate.filters.text_language",
    "hallucination": "audiocurate.filters.hallucination", "speaking_rate": "audiocurate.filters.speaking_rate",
    "wer": "audiocurate.filters.wer",
    "min_score": "audiocurate.filters.score",
})
