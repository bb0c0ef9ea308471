"""Reject two talkers at once (`overlapping_talkers`): a strong second pitch (`signals.voices`)."""

from __future__ import annotations

from typing import Optional

from pydantic import Field

from .base import FILTERS
from .signal_gate import GateSettings, SignalGate

OVERLAPPING_TALKERS = "overlapping_talkers"


class OverlapSettings(GateSettings):
    """Two talkers at once (`signals.voices`): the strength of a second harmonic series against the
    first (`second_voice_ratio`), right after decoding. Rejected as `overlapping_talkers`."""

    max_second_voice_ratio: Optional[float] = Field(
        0.27, ge=0, description="Reject when the second harmonic series is this strong against the first "
        "(75th percentile over loud frames). Dev corpus: clean audio 0.109-0.258, two talkers at 0 and -3 dB "
        "0.222-0.444 (median 0.31). None: only measure.")


@FILTERS.register("overlap")
class OverlapGate(SignalGate):
    name = "overlap"
    signal = "voices"
    settings = OverlapSettings

    column = "second_voice_ratio"
    threshold = "max_second_voice_ratio"
    reject_above = True
    drop_reason = OVERLAPPING_TALKERS
