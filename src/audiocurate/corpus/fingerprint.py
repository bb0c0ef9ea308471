"""Audio fingerprints for near-duplicate detection: landmark hashes summarised by MinHash.

A landmark is a pair of spectral peaks (frequency of each, frames between them), the hash
Shazam-style matchers use. Peaks are local maxima of the log spectrogram, so a gain change
leaves them where they are; a lossy re-encode moves few of the strong ones; a trim only shifts
every peak's time, and a pair's hash holds no absolute time. Two readings of one sentence by
different voices put their formants and pitch harmonics elsewhere: their landmark sets share
almost nothing.

A clip's landmark set is reduced to `PERMUTATIONS` MinHash values (`fingerprint`, 4 bytes
each): the fraction of equal values estimates the Jaccard similarity of two clips' sets, and
bands of `ROWS_PER_BAND` values are the keys under which candidate pairs meet
(`corpus.dedup`). Same samples, same fingerprint: an exact copy in any container is found too.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional

import numpy as np
import pyarrow as pa

from .. import contract as C
from ..filters.base import Filter

FINGERPRINT = "fingerprint"
RATE = 16000
N_FFT = 1024          # 64 ms windows
HOP = 80              # 5 ms between frames: a trim off the frame grid moves a peak 2.5 ms at most
LOW_BIN, HIGH_BIN = 16, 256   # 250 Hz .. 4 kHz: speech's strongest peaks, below any codec's low-pass
PEAK_SPAN = (9, 9)    # a peak is the maximum of this many frames x bins around it
PEAKS_PER_SECOND = 25
FAN_OUT = 8           # targets paired with each anchor peak
MAX_DT = 120          # frames (600 ms) between an anchor and its targets
FREQ_STEP = 2         # bins (31 Hz) per landmark frequency step: a codec moves a peak a bin
DT_STEP = 2           # frames (10 ms) per landmark time step
PERMUTATIONS = 96
ROWS_PER_BAND = 3     # 32 bands: P(candidates) 0.86 at similarity 0.39, 0.99 at 0.5, 1e-5 at 0.07
BANDS = PERMUTATIONS // ROWS_PER_BAND
_EMPTY = np.uint32(0xFFFFFFFF)
_SEEDS = np.random.default_rng(0x5EED).integers(1, 2**63 - 1, size=PERMUTATIONS, dtype=np.uint64)


def _mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: a 64-bit permutation that scatters nearby inputs."""
    with np.errstate(over="ignore"):
        x = x ^ (x >> np.uint64(30))
        x = x * np.uint64(0xBF58476D1CE4E5B9)
        x = x ^ (x >> np.uint64(27))
        x = x * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def spectral_peaks(pcm: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(frames, bins) of the strongest local maxima of the log spectrogram, time-ordered."""
    from scipy.ndimage import maximum_filter

    audio = pcm.astype(np.float32) / 32768.0 if pcm.dtype == np.int16 else pcm.astype(np.float32)
    if len(audio) < N_FFT:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    frames = np.lib.stride_tricks.sliding_window_view(audio, N_FFT)[::HOP]
    spec = np.abs(np.fft.rfft(frames * np.hanning(N_FFT).astype(np.float32), axis=1))[:, LOW_BIN:HIGH_BIN]
    logspec = np.log(spec + 1e-6)
    floor = np.max(logspec) - 7.0  # about 60 dB below the clip's loudest point: relative, so gain-free
    is_peak = (logspec == maximum_filter(logspec, size=PEAK_SPAN, mode="constant", cval=-np.inf)) & (logspec > floor)
    t, f = np.nonzero(is_peak)
    keep = max(int(PEAKS_PER_SECOND * len(audio) / RATE), 1)
    if len(t) > keep:
        strongest = np.argsort(-logspec[t, f], kind="stable")[:keep]
        t, f = t[strongest], f[strongest]
    order = np.lexsort((f, t))
    return t[order], f[order]


def landmark_hashes(pcm: np.ndarray) -> np.ndarray:
    """The set of landmark hashes (f1, f2, dt) of a clip, as unique uint64."""
    t, f = spectral_peaks(pcm)
    n = len(t)
    if n < 2:
        return np.zeros(0, np.uint64)
    hashes = []
    for k in range(1, FAN_OUT + 1):
        dt = t[k:] - t[:-k]
        ok = (dt > 0) & (dt <= MAX_DT)
        h = ((f[:-k][ok] // FREQ_STEP).astype(np.uint64) << np.uint64(20)) \
            | ((f[k:][ok] // FREQ_STEP).astype(np.uint64) << np.uint64(8)) | (dt[ok] // DT_STEP).astype(np.uint64)
        hashes.append(h)
    return np.unique(np.concatenate(hashes))


def minhash(hashes: np.ndarray) -> np.ndarray:
    """`PERMUTATIONS` minima of the set under seeded permutations (all `_EMPTY` for no set)."""
    if not len(hashes):
        return np.full(PERMUTATIONS, _EMPTY, np.uint32)
    mixed = _mix64(hashes[None, :] ^ _SEEDS[:, None])
    return (mixed.min(axis=1) >> np.uint64(32)).astype(np.uint32)


def fingerprint(pcm: np.ndarray) -> bytes:
    """A clip's fingerprint: `PERMUTATIONS` little-endian uint32 MinHash values."""
    return minhash(landmark_hashes(pcm)).astype("<u4").tobytes()


def similarity(a: bytes, b: bytes) -> float:
    """Estimated Jaccard similarity of two clips' landmark sets (0 when either has none)."""
    x, y = np.frombuffer(a, "<u4"), np.frombuffer(b, "<u4")
    if x[0] == _EMPTY or y[0] == _EMPTY:
        return 0.0
    return float(np.mean(x == y))


def band_keys(fp: bytes) -> np.ndarray:
    """One int64 key per band (the band's index mixed with its values): two clips meet as
    candidates under every key they share. An empty set has none."""
    v = np.frombuffer(fp, "<u4").astype(np.uint64)
    if v[0] == _EMPTY:
        return np.zeros(0, np.int64)
    bands = v.reshape(BANDS, ROWS_PER_BAND)
    key = np.arange(BANDS, dtype=np.uint64)
    for j in range(ROWS_PER_BAND):
        key = _mix64(key ^ (bands[:, j] << np.uint64(8 * (j % 4))) ^ np.uint64(0x9E3779B97F4A7C15 * (j + 1) % 2**64))
    return key.view(np.int64)


def band_keys_matrix(values: np.ndarray) -> np.ndarray:
    """`band_keys` of many fingerprints at once: (n, PERMUTATIONS) uint32 -> (n, BANDS) int64 keys,
    rows of an empty set left out (as `band_keys` gives none for them)."""
    values = values[values[:, 0] != _EMPTY].astype(np.uint64)
    bands = values.reshape(len(values), BANDS, ROWS_PER_BAND)
    key = np.broadcast_to(np.arange(BANDS, dtype=np.uint64), (len(values), BANDS))
    for j in range(ROWS_PER_BAND):
        key = _mix64(key ^ (bands[:, :, j] << np.uint64(8 * (j % 4))) ^ np.uint64(0x9E3779B97F4A7C15 * (j + 1) % 2**64))
    return key.view(np.int64)


class AudioFingerprint(Filter):
    """Measures `fingerprint` on the decoded samples of every row; rejects nothing. Added to
    the run's filters when `dedup.enabled` (config.py), so the corpus pass reads it back."""

    name = "fingerprint"
    needs = (C.PCM,)
    produces = {FINGERPRINT: pa.binary()}
    measures_all = True

    def measure(self, row: Mapping[str, Any]) -> Mapping[str, Any]:
        pcm = np.frombuffer(row[C.PCM], dtype="<i2") if row[C.PCM] else np.zeros(0, np.int16)
        return {FINGERPRINT: fingerprint(pcm)}

    def reason(self, row: Mapping[str, Any]) -> Optional[str]:
        return None
