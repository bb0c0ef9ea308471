"""Reject heavily reverberant audio (`reverberant`): energy that cannot fall fast (`signals.reverb`)."""

from __future__ import annotations

from typing import Optional

from pydantic import Field

from .base import FILTERS
from .signal_gate import GateSettings, SignalGate

REVERBERANT = "reverberant"


class ReverbSettings(GateSettings):
    """Reverberation (`signals.reverb`): how fast the energy can fall (`decay_db_100ms`), right after
    decoding; a reverberant room smears every offset. Rejected as `reverberant`."""

    min_decay_db_100ms: Optional[float] = Field(
        18.0, description="Reject when the clip's fastest energy falls (99th percentile over 100 ms) are "
        "smaller than this many dB. Dev corpus: clean audio 21.7-83.3 dB, RT60 1.5 s reverb 6.5-10.9, music "
        "1.7-17.4. None: only measure.")


@FILTERS.register("reverb")
class ReverbGate(SignalGate):
    name = "reverb"
    signal = "reverb"
    settings = ReverbSettings

    column = "decay_db_100ms"
    threshold = "min_decay_db_100ms"
    drop_reason = REVERBERANT
