"""Reverberation: how fast the sound can die away.

In a dry recording, energy falls by 30 dB or more within 100 ms when a word ends. A room
holds it: with an RT60 of 1.5 s the tail falls 60 dB in 1.5 s, 4 dB per 100 ms, and no word
ending can fall faster than the tail. `decay_db_100ms` is the 99th percentile, over the clip,
of the fall in frame energy (25 ms frames, 10 ms hop) over the next 100 ms: a C50/DRR-like
proxy that needs no model. Noise also caps it (a word ends into the noise floor)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from . import Signal, as_float, excerpt, register
from .noise import frame_energy_db


def measure_reverb(samples: np.ndarray) -> dict[str, float]:
    e = frame_energy_db(as_float(excerpt(samples, 60.0)))
    if len(e) <= 10:
        return {"decay_db_100ms": 0.0}
    return {"decay_db_100ms": float(np.percentile(e[:-10] - e[10:], 99))}


REVERB = register(Signal("reverb", {"decay_db_100ms": pa.float32()}, measure_reverb))
