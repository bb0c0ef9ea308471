"""Cut a long recording into windows at its quietest moments.

Whisper reads 30 s at a time; engines that seek through longer audio (faster-whisper) still
build features for the whole input at once, which for an hour is gigabytes. We hand them at
most `max_s` seconds at a time and cut where the signal is quietest in the last stretch of
each window, so a cut falls in a pause between words rather than through one.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np

_FRAME_S = 0.05


def plan_windows(n_samples: int, sample_rate: int, max_s: float, pcm: np.ndarray | None = None,
                 search_s: float | None = None) -> list[tuple[int, int]]:
    """[start, end) sample ranges covering the clip, each at most `max_s` long."""
    max_len = int(max_s * sample_rate)
    if n_samples <= max_len:
        return [(0, n_samples)]
    search = int((search_s if search_s is not None else min(20.0, max_s / 4)) * sample_rate)
    frame = max(int(_FRAME_S * sample_rate), 1)
    out: list[tuple[int, int]] = []
    pos = 0
    while n_samples - pos > max_len:
        hi = pos + max_len
        lo = max(pos + 1, hi - search)
        cut = hi if pcm is None else _quietest_point(pcm, lo, hi, frame)
        out.append((pos, cut))
        pos = cut
    out.append((pos, n_samples))
    return out


def iter_windows(pcm: np.ndarray, sample_rate: int, max_s: float) -> Iterator[tuple[float, np.ndarray]]:
    """(offset in seconds, float32 window) pairs; only one float window exists at a time."""
    for start, end in plan_windows(len(pcm), sample_rate, max_s, pcm):
        yield start / sample_rate, pcm[start:end].astype(np.float32) / 32768.0


def _quietest_point(pcm: np.ndarray, lo: int, hi: int, frame: int) -> int:
    """Middle of the last stretch of quietest frames in [lo, hi): the centre of the pause
    nearest the window's end, so neither side of the cut clips a word."""
    n = (hi - lo) // frame
    if n < 1:
        return hi
    seg = pcm[lo:lo + n * frame].astype(np.float32).reshape(n, frame)
    energy = np.einsum("ij,ij->i", seg, seg)
    quiet = energy <= energy.min() * 1.5 + 1e-6
    end = n - 1 - int(np.argmax(quiet[::-1]))  # last quiet frame
    start = end
    while start > 0 and quiet[start - 1]:
        start -= 1
    return lo + ((start + end + 1) * frame) // 2
