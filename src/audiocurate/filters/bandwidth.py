"""Reject narrow-band audio (`narrow_band`) when configured: telephone, 8 kHz sources (`signals.bandwidth`)."""

from __future__ import annotations

from typing import Optional

from pydantic import Field

from .base import FILTERS
from .signal_gate import GateSettings, SignalGate

NARROW_BAND = "narrow_band"


class BandwidthSettings(GateSettings):
    """Effective bandwidth (`signals.bandwidth`): the highest frequency with real energy
    (`bandwidth_hz`), right after decoding; rejected as `narrow_band` only with `min_hz` set."""

    min_hz: Optional[float] = Field(
        None, ge=0, description="Reject when the effective bandwidth is below this many Hz. Dev corpus: "
        "16 kHz speech 7,100-8,000 Hz, telephone band 3,590-3,660 Hz; 5,000 separates them. None (default): "
        "only measure, since narrow-band speech is a choice, not a defect, for some training sets.")


@FILTERS.register("bandwidth")
class BandwidthGate(SignalGate):
    name = "bandwidth"
    signal = "bandwidth"
    settings = BandwidthSettings

    column = "bandwidth_hz"
    threshold = "min_hz"
    drop_reason = NARROW_BAND
