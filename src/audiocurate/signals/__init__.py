"""Signals: what a clip's samples say about its quality, measured once and kept as columns.

A signal is one module here that computes a few numbers from 16 kHz mono samples and
registers itself in `SIGNALS` (name -> `Signal`: its columns and the function that measures
them). Gates (`audiocurate.filters.clipping`, `.bandwidth`, `.noise`, `.overlap`, `.reverb`,
configured as `filters.clipping` and so on) read a signal's columns and decide; the columns are written for rejected rows too, so a later
`refilter` under new thresholds needs no model (as in OLMoASR: tag once, filter many).

>>> from audiocurate.signals import SIGNALS                      # doctest: +SKIP
>>> SIGNALS.get("clipping").measure(samples)                     # doctest: +SKIP
{'clip_fraction': 0.16, 'clip_longest_run': 412}
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping

import numpy as np
import pyarrow as pa

from ..core.registry import Registry

RATE = 16000


@dataclass(frozen=True)
class Signal:
    """A measurement: `columns` (name -> Arrow type) and `measure(samples) -> {column: value}`,
    where samples are 16 kHz mono int16 (full scale 32767) or float (full scale 1.0)."""

    name: str
    columns: Mapping[str, pa.DataType]
    measure: Callable[[np.ndarray], Mapping[str, Any]]


SIGNALS: Registry[Signal] = Registry("signal", lazy={
    "clipping": "audiocurate.signals.clipping",
    "bandwidth": "audiocurate.signals.bandwidth",
    "noise": "audiocurate.signals.noise",
    "voices": "audiocurate.signals.voices",
    "reverb": "audiocurate.signals.reverb",
    "talkers": "audiocurate.signals.talkers",
})


def register(signal: Signal) -> Signal:
    return SIGNALS.register(signal.name)(signal)


def as_float(samples: np.ndarray) -> np.ndarray:
    """Samples as float32 in [-1, 1]."""
    if samples.dtype == np.int16:
        return samples.astype(np.float32) / 32768.0
    return samples.astype(np.float32, copy=False)


def excerpt(samples: np.ndarray, max_s: float) -> np.ndarray:
    """At most `max_s` seconds: the whole clip when shorter, else ten pieces spread evenly over
    it, so a signal's cost is bounded on a long recording and still sees all of it."""
    n = int(max_s * RATE)
    if len(samples) <= n:
        return samples
    piece = n // 10
    starts = np.linspace(0, len(samples) - piece, 10).astype(int)
    return np.concatenate([samples[s:s + piece] for s in starts])
