"""Duration and silence: decided from what the decoder measured, before any model runs."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping, Optional, Sequence

import numpy as np
import pyarrow as pa

from pydantic import Field

from ..core.settings import Settings
from .base import FILTERS, Filter

if TYPE_CHECKING:
    from ..audio import DecodedAudio

TOO_SHORT = "too_short"
TOO_LONG = "too_long"
SILENCE = "silence"


class DurationFilter(Settings):
    """Clip length, from the decoder's `duration_s`, before any model runs."""

    enabled: bool = Field(True, description="Check every clip's duration.")
    min_s: float = Field(0.3, ge=0, description="Clips shorter than this are rejected (`too_short`).")
    max_s: Optional[float] = Field(
        None, description="Clips longer than this are rejected (`too_long`); None keeps any length."
    )


class SilenceFilter(Settings):
    """Digital silence, from the decoder's `peak_dbfs`, before any model runs."""

    enabled: bool = Field(True, description="Check every clip's peak level.")
    max_peak_dbfs: float = Field(
        -45.0,
        description="A clip whose loudest sample stays below this level (dB full scale) is "
        "digital silence or near-silence and is rejected (`silence`) before transcription.",
    )


@FILTERS.register("duration")
class DurationLimits(Filter):
    name = "duration"
    settings = DurationFilter
    needs = ("duration_s",)

    def __init__(self, config: DurationFilter):
        self.min_s, self.max_s = config.min_s, config.max_s

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
    settings = SilenceFilter
    needs = ("peak_dbfs",)

    def __init__(self, config: SilenceFilter):
        self.max_peak_dbfs = config.max_peak_dbfs

    def reason(self, row: Mapping[str, Any]) -> Optional[str]:
        return SILENCE if row["peak_dbfs"] < self.max_peak_dbfs else None


def decode_measures(clip: "DecodedAudio") -> dict[str, Any]:
    """The decode stage's columns of a clip, as the filters read them (levels floored at
    -200 dBFS: a column holds no -inf)."""
    return {
        "duration_s": clip.duration_s,
        "source_sample_rate": clip.source_sample_rate,
        "source_channels": clip.source_channels,
        "source_format": clip.source_format,
        "peak_dbfs": max(clip.peak_dbfs, -200.0),
        "rms_dbfs": max(clip.rms_dbfs, -200.0),
    }


def rejected_on_measures(filters: Sequence[Filter], table: pa.Table, row: int, clip: "DecodedAudio") -> bool:
    """Whether `filters` reject row `row` of `table` on the decoder's measures of `clip` alone,
    so that a long clip they reject (silence, too long) need not keep its samples
    (`decode_audio(keep_samples=)`). A filter that needs anything else or fails counts as
    keeping the row: its samples are then kept and the stage decides as it always does."""
    measures = decode_measures(clip)
    source = table.slice(row, 1)
    columns = {c: source[c] for c in source.column_names if c not in measures}
    columns.update({k: pa.array([v]) for k, v in measures.items()})
    one_row = pa.table(columns)
    for f in filters:
        if not set(f.needs) <= set(columns):
            return False
        try:
            reasons, _ = f.evaluate(one_row, np.array([0], dtype=np.int64))
        except Exception:
            return False
        if reasons and reasons[0] is not None:
            return True
    return False
