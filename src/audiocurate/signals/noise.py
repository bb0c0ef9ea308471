"""Background level: how far the speech stands above what fills its pauses.

Frame energies (25 ms, 10 ms hop) in dB; `background_snr_db` is the 95th percentile (the
speech) minus the 10th (the pauses). Clean speech has pauses near silence (27-86 dB on the
dev corpus); noise, music or a second voice under the speech fill them (0 dB SNR white noise
reads 6-8 dB). A crude SNR: it does not tell noise from music, only that something is there."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from . import Signal, as_float, excerpt, register


def frame_energy_db(x: np.ndarray, frame: int = 400, hop: int = 160) -> np.ndarray:
    if len(x) < frame:
        x = np.pad(x, (0, frame - len(x)))
    frames = np.lib.stride_tricks.sliding_window_view(x, frame)[::hop]
    return 10 * np.log10((frames.astype(np.float64) ** 2).mean(axis=1) + 1e-10)


def measure_noise(samples: np.ndarray) -> dict[str, float]:
    e = frame_energy_db(as_float(excerpt(samples, 60.0)))
    return {"background_snr_db": float(np.percentile(e, 95) - np.percentile(e, 10))}


NOISE = register(Signal("noise", {"background_snr_db": pa.float32()}, measure_noise))
