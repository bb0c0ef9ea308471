"""Effective bandwidth in Hz: the highest frequency the recording actually carries.

The mean power spectrum over the frames that hold the speech (`spectrum.loud_frames`),
smoothed over 250 Hz; the bandwidth is the highest frequency whose level is within
`FLOOR_DB` of the spectrum's peak. A telephone channel reads about 3,400 Hz, an 8 kHz
recording upsampled 4,000 Hz, wideband speech at 16 kHz 6,000-8,000 Hz. NeMo Curator answers
the same question with a trained full-band / narrow-band classifier; a figure in Hz lets the
user pick the cut (`filters.bandwidth.min_hz`)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from . import Signal, as_float, excerpt, register
from .spectrum import bin_hz, loud_frames, power_spectrogram

FLOOR_DB = 50.0


def measure_bandwidth(samples: np.ndarray) -> dict[str, float]:
    x = as_float(excerpt(samples, 60.0))
    power = power_spectrogram(x)
    mean = power[loud_frames(power)].mean(axis=0)
    smooth = np.convolve(mean, np.ones(9) / 9, mode="same")  # 9 bins of 31 Hz
    level = 10 * np.log10(smooth + 1e-20)
    above = np.flatnonzero(level >= level.max() - FLOOR_DB)
    return {"bandwidth_hz": float(bin_hz()[above.max()]) if len(above) else 0.0}


BANDWIDTH = register(Signal("bandwidth", {"bandwidth_hz": pa.float32()}, measure_bandwidth))
