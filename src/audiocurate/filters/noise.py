"""Reject speech over a loud background (`noisy_background`): noise, music (`signals.noise`)."""

from __future__ import annotations

from typing import Optional

from pydantic import Field

from .base import FILTERS
from .signal_gate import GateSettings, SignalGate

NOISY_BACKGROUND = "noisy_background"


class NoiseSettings(GateSettings):
    """Background level (`signals.noise`): how far speech stands above its pauses
    (`background_snr_db`), right after decoding; noise and music fill the pauses. Rejected as
    `noisy_background`."""

    min_background_snr_db: Optional[float] = Field(
        20.0, description="Reject when speech (95th percentile frame energy) stands less than this many dB "
        "above its pauses (10th percentile). Dev corpus: clean audio 23.5-86.8 dB; 0 dB SNR white 5.7-8.4, "
        "pink 8.9-11.7, brown 9.9-23.3; speech over music at 0/5 dB 8.2-22.2. None: only measure.")


@FILTERS.register("noise")
class NoiseGate(SignalGate):
    name = "noise"
    signal = "noise"
    settings = NoiseSettings

    column = "background_snr_db"
    threshold = "min_background_snr_db"
    drop_reason = NOISY_BACKGROUND
