"""The short-time power spectrum that the spectral signals share, and which frames hold speech."""

from __future__ import annotations

import numpy as np

from . import RATE


def power_spectrogram(x: np.ndarray, n_fft: int = 512, hop: int = 256) -> np.ndarray:
    """|STFT|^2 of float samples with a Hann window: (frames, n_fft // 2 + 1)."""
    if len(x) < n_fft:
        x = np.pad(x, (0, n_fft - len(x)))
    frames = np.lib.stride_tricks.sliding_window_view(x, n_fft)[::hop]
    return np.abs(np.fft.rfft(frames * np.hanning(n_fft).astype(np.float32), axis=1)) ** 2


def bin_hz(n_fft: int = 512) -> np.ndarray:
    return np.fft.rfftfreq(n_fft, 1 / RATE)


def loud_frames(power: np.ndarray, within_db: float = 30.0) -> np.ndarray:
    """Frames whose energy is within `within_db` of the clip's 95th-percentile frame: where
    the speech (or whatever dominates) is, not the pauses."""
    energy = 10 * np.log10(power.sum(axis=1) + 1e-12)
    return energy >= np.percentile(energy, 95) - within_db
