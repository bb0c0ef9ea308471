"""Duration and silence: decided from what the decoder measured, before any model runs."""

from __future__ import annotations

from typing import Any, Mapping, Optional

from ..config import DurationFilter, SilenceFilter
from .base import FILTERS, Filter

TOO_SHORT = "too_short"
TOO_LONG = "too_long"
SILENCE = "silence"


@FILTERS.register("duration")
class DurationLimits(Filter):
    name = "duration"
    needs = ("duration_s",)

    def __init__(self, config: DurationFilter):
        self.min_s, self.max_s = config.min_s, config.max_s

    @classmethod
    def configured(cls, config: Any, input_columns: set[str]) -> Optional[Filter]:
        return cls(config.filters.duration) if config.filters.duration.enabled else None

    def reason(self, row: Mapping[str, Any]) -> Optional[str]:
        d = row["duration_s"]
        if d < self.min_s:
            return TOO_SHORT
        if self.max_s is not None and d > self.max_s:
            return TOO_LONG
        return None


@FILTERS.register("silence")
class Silence(Filter):
    name = "silence"
    needs = ("peak_dbfs",)

    def __init__(self, config: SilenceFilter):
        self.max_peak_dbfs = config.max_peak_dbfs

    @classmethod
    def configured(cls, config: Any, input_columns: set[str]) -> Optional[Filter]:
        return cls(config.filters.silence) if config.filters.silence.enabled else None

    def reason(self, row: Mapping[str, Any]) -> Optional[str]:
        return SILENCE if row["peak_dbfs"] < self.max_peak_dbfs else None
