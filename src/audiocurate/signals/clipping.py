"""Clipping: how much of the clip sits at full scale, and the longest such run.

A clipped recording has flat tops: runs of consecutive samples at (or, after a codec or a
resampler, just under) the largest value the format holds. `clip_fraction` is the share of
samples with |x| >= 0.99 of full scale; `clip_longest_run` the longest run of them, in samples.
Loud clean speech touches full scale in single samples (runs of 1-2); a clipped one in runs
of tens to hundreds."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from . import Signal, as_float, register

NEAR_FULL_SCALE = 0.99


def measure_clipping(samples: np.ndarray) -> dict[str, float | int]:
    x = np.abs(as_float(samples))
    at_top = x >= NEAR_FULL_SCALE * (32767 / 32768 if samples.dtype == np.int16 else 1.0)
    if not at_top.any():
        return {"clip_fraction": 0.0, "clip_longest_run": 0}
    edges = np.diff(np.concatenate([[0], at_top.astype(np.int8), [0]]))
    runs = np.flatnonzero(edges == -1) - np.flatnonzero(edges == 1)
    return {"clip_fraction": float(at_top.mean()), "clip_longest_run": int(runs.max())}


CLIPPING = register(Signal("clipping", {"clip_fraction": pa.float32(), "clip_longest_run": pa.int32()},
                           measure_clipping))
