"""A gate over one signal (`audiocurate.signals`): measure it for every row, reject past a threshold.

Each gate is a `Filter` that needs the decoded samples, so it runs right after decoding (or
on each segment with `segment.enabled`), before Whisper spends anything on a row it rejects.
It measures every row that reaches it (`measures_all`), rejected ones too, so the signal's
columns are in `rejected/` as well as `curated/` and a later refilter needs no model. Its
thresholds are its own `GateSettings` (whose field descriptions are the manual), the section
`filters.<name>` of a built-in gate (off by default, on in `--profile quality`)."""

from __future__ import annotations

from typing import Any, ClassVar, Mapping, Optional

import numpy as np
from pydantic import Field

from .. import contract as C
from ..core.settings import Settings
from ..signals import SIGNALS, Signal
from .base import Filter


class GateSettings(Settings):
    """A gate's section: on or off, then its thresholds."""

    enabled: bool = Field(False, description="Measure this signal for every decoded clip or segment (its "
                          "columns go to curated/ and rejected/ alike) and reject past the threshold below. "
                          "Off by default; on in `--profile quality`.")


class SignalGate(Filter):
    """Subclasses set `signal` (a `SIGNALS` name) and `settings` (their `GateSettings`), then
    either a one-threshold rule (`column`, `threshold`: a settings field, None to only measure,
    `reject_above` or below it, `drop_reason`) or their own `decide`."""

    signal: ClassVar[str] = ""
    settings: ClassVar[type[GateSettings]] = GateSettings
    column: ClassVar[str] = ""
    threshold: ClassVar[str] = ""
    reject_above: ClassVar[bool] = False
    drop_reason: ClassVar[str] = ""
    needs = (C.PCM,)
    measures_all = True

    def __init__(self, config: Optional[GateSettings] = None, **args: Any):
        """From its section (`filters.<name>`), or from keyword arguments as a filter of
        `filters.custom` (`args`), which are validated the same way."""
        if config is None:
            try:
                config = self.settings(**args)
            except Exception as e:  # pydantic's message names the field and what is wrong with it
                raise ValueError(f"{type(self).__name__}: {e}") from None
        elif args:
            raise TypeError(f"{type(self).__name__}: give its settings or keyword arguments, not both")
        self.config = config
        self._signal: Signal = SIGNALS.get(self.signal)
        self.produces = dict(self._signal.columns)

    def measure(self, row: Mapping[str, Any]) -> Mapping[str, Any]:
        pcm = np.frombuffer(row[C.PCM], dtype="<i2") if row[C.PCM] else np.zeros(0, np.int16)
        if not len(pcm):
            return {k: None for k in self.produces}
        return self._signal.measure(pcm)

    def reason(self, row: Mapping[str, Any]) -> Optional[str]:
        if any(row.get(k) is None for k in self.produces):
            return None
        return self.decide(row)

    def decide(self, row: Mapping[str, Any]) -> Optional[str]:
        limit = getattr(self.config, self.threshold)
        if limit is None:
            return None
        value = row[self.column]
        return self.drop_reason if (value > limit if self.reject_above else value < limit) else None
