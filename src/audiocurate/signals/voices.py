"""Two voices at once: how strong a second harmonic series is beside the strongest one.

In each loud 64 ms frame, the harmonic sum (eight harmonics, 60-2,000 Hz, of the compressed and
locally whitened spectrum) scores every F0 from 70 to 400 Hz; the best F0's harmonics are then
removed and the best score of what is left is divided by the first. One voice leaves little
harmonic structure behind; two voices at different pitches leave the second one's.
`second_voice_ratio` is the 75th percentile of that ratio over the loud frames (most frames of
an overlapped clip hold both voices, not all). Chosen by measurement over resemblyzer's window
embeddings (`talkers`), which did not separate continuous overlap (docs/quality.md)."""

from __future__ import annotations

import functools

import numpy as np
import pyarrow as pa
from scipy.ndimage import uniform_filter1d

from . import RATE, Signal, as_float, excerpt, register

FRAME, HOP, N_FFT, HARMONICS = 1024, 320, 4096, 8
F0_HZ = np.arange(70, 400, 2.0)


@functools.lru_cache(maxsize=1)
def _harmonic_bins() -> np.ndarray:
    """(F0 candidates, harmonics) FFT bin of each harmonic."""
    return np.rint(np.outer(F0_HZ, np.arange(1, HARMONICS + 1)) / (RATE / N_FFT)).astype(int)


def measure_voices(samples: np.ndarray) -> dict[str, float]:
    x = as_float(excerpt(samples, 60.0))
    if len(x) < FRAME:
        return {"second_voice_ratio": 0.0}
    frames = np.lib.stride_tricks.sliding_window_view(x, FRAME)[::HOP]
    energy = (frames ** 2).sum(axis=1)
    frames = frames[energy > np.percentile(energy, 70)] * np.hanning(FRAME).astype(np.float32)
    hz = np.fft.rfftfreq(N_FFT, 1 / RATE)
    mag = np.sqrt(np.abs(np.fft.rfft(frames, N_FFT, axis=1)))
    mag[:, (hz > 2000) | (hz < 60)] = 0
    mag = np.maximum(mag - uniform_filter1d(mag, 40, axis=1), 0)
    bins = _harmonic_bins()
    score = mag[:, bins].sum(axis=-1)
    best = score.argmax(axis=1)
    first = score[np.arange(len(score)), best]
    # remove the best F0's harmonics (+-6 bins, +-23 Hz) and score again
    removed = (bins[best][:, :, None] + np.arange(-6, 7)[None, None, :]).reshape(len(best), -1)
    rest = mag.copy()
    np.put_along_axis(rest, np.clip(removed, 0, mag.shape[1] - 1), 0.0, axis=1)
    second = rest[:, bins].sum(axis=-1).max(axis=1)
    ratio = second / (first + 1e-9)
    return {"second_voice_ratio": float(np.percentile(ratio, 75))}


VOICES = register(Signal("voices", {"second_voice_ratio": pa.float32()}, measure_voices))
