"""Speech regions with Silero VAD (the ONNX model faster-whisper ships, run by its own
`get_speech_timestamps`), window by window as the samples stream in, and their packing into
segments."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

RATE = 16000


@dataclass(frozen=True)
class VadSettings:
    threshold: float = 0.5
    min_silence_s: float = 0.3
    min_speech_s: float = 0.25
    window_s: float = 300.0


class SpeechDetector:
    """Speech regions of 16 kHz int16 samples fed in any pieces. VAD runs on each window of
    `window_s` as it fills, so its memory follows the window, not the recording (Silero over a
    300 s window takes about 120 MB more, over 120 s about 50). Windows overlap by `OVERLAP_S`
    and are stitched in the middle of the overlap, where both have seconds of context: Silero
    starts each window afresh and is late to find speech already under way, so windows cut
    edge to edge would show a pause, and a cut, inside a word at every edge. One limit: speech
    running across a stitch for longer than `max_region_s` is split at the stitch, where Silero
    over the whole recording would split it at its last short pause. `regions` is complete
    after `finish()`."""

    OVERLAP_S = 10.0

    def __init__(self, settings: VadSettings, max_region_s: float):
        from faster_whisper.vad import VadOptions

        self.options = VadOptions(threshold=settings.threshold,
                                  min_silence_duration_ms=int(settings.min_silence_s * 1000),
                                  min_speech_duration_ms=int(settings.min_speech_s * 1000), speech_pad_ms=0,
                                  max_speech_duration_s=max_region_s)
        self.max_region = int(max_region_s * RATE)
        self.min_gap = int(settings.min_silence_s * RATE)
        self.step = int(settings.window_s * RATE)
        self.overlap = min(int(self.OVERLAP_S * RATE), self.step // 2)
        self._window = np.empty(self.step, np.int16)
        self.clear()

    def clear(self) -> None:
        self._regions: list[list[int]] = []  # in samples, settled up to `_stitch`
        self._filled = 0
        self._offset = 0  # the recording's sample at the window's start
        self._stitch = 0

    @property
    def regions(self) -> list[tuple[float, float]]:
        return [(s / RATE, e / RATE) for s, e in self._regions]

    def feed(self, pcm: np.ndarray) -> None:
        while len(pcm):
            n = min(len(pcm), self.step - self._filled)
            self._window[self._filled:self._filled + n] = pcm[:n]
            self._filled += n
            pcm = pcm[n:]
            if self._filled == self.step:
                self._detect(last=False)

    def finish(self) -> list[tuple[float, float]]:
        if self._offset + self._filled > self._stitch and self._filled >= 512:
            self._detect(last=True)
        self._filled = 0
        return self.regions

    def _detect(self, last: bool) -> None:
        from faster_whisper.vad import get_speech_timestamps

        lo, n = self._offset, self._filled
        stitch = lo + n if last else lo + n - self.overlap // 2
        window = self._window[:n].astype(np.float32) / 32768.0
        for r in get_speech_timestamps(window, self.options, sampling_rate=RATE):
            start, end = max(lo + r["start"], self._stitch), min(lo + r["end"], stitch)
            if end <= start:
                continue  # the earlier window's part, or the next one's
            prev = self._regions[-1] if self._regions else None
            # Speech across the stitch, or a pause there shorter than any Silero leaves inside
            # one window (the two windows disagreeing about where speech stops or starts).
            if (prev and start <= self._stitch + self.min_gap and start - prev[1] < self.min_gap
                    and end - prev[0] <= self.max_region):
                prev[1] = end
            else:
                self._regions.append([start, end])
        self._stitch = stitch
        if not last:  # the overlap starts the next window
            self._window[:self.overlap] = self._window[n - self.overlap:n]
            self._offset, self._filled = lo + n - self.overlap, self.overlap


def speech_regions(pcm: np.ndarray, settings: VadSettings, max_region_s: float) -> list[tuple[float, float]]:
    """(start_s, end_s) of speech in 16 kHz int16 samples held whole (`SpeechDetector` at once)."""
    detector = SpeechDetector(settings, max_region_s)
    detector.feed(pcm)
    return detector.finish()


def plan_segments(regions: list[tuple[float, float]], duration_s: float, min_s: float, max_s: float,
                  pad_s: float, target_s: float = 0.0) -> list[tuple[float, float]]:
    """Pack speech regions into segments, cut only in pauses, left to right: each segment ends
    at the longest pause that keeps it (padding included) within `max_s`, where a pause that
    would leave it shorter than `target_s` counts half. Whisper transcribes long segments
    better (it has context), and a sentence's end is a longer pause than a comma's, so this
    finds the sentence end late in the window. A cut that leaves this segment, or a last one,
    shorter than `min_s` is taken only when no other fits; a segment still that short then
    joins a neighbour across the shorter pause when the two fit. A single region longer than
    the room stays whole (`speech_regions` splits long speech at that length). Each is padded
    into the pause around it (at most half of it, never past the recording)."""
    rs = list(regions)
    room = segment_room(max_s, pad_s)
    groups: list[list[float]] = []
    i = 0
    while i < len(rs):
        start, j = rs[i][0], i
        while j + 1 < len(rs) and rs[j + 1][1] - start <= room:
            j += 1
        if j + 1 >= len(rs):
            groups.append([start, rs[-1][1]])
            break

        def fair(k: int) -> bool:
            tail = rs[-1][1] - rs[k + 1][0]
            return rs[k][1] - start >= min_s and not (tail < min_s and tail <= room)

        def weight(k: int) -> tuple[float, int]:
            pause = rs[k + 1][0] - rs[k][1]
            return (pause if rs[k][1] - start >= target_s else pause / 2, k)

        k = max([k for k in range(i, j + 1) if fair(k)] or [j], key=weight)
        groups.append([start, rs[k][1]])
        i = k + 1
    g = 0
    while g < len(groups):
        s, e = groups[g]
        if e - s < min_s and len(groups) > 1:
            sides = []
            if g > 0 and e - groups[g - 1][0] <= room:
                sides.append((s - groups[g - 1][1], g - 1))
            if g + 1 < len(groups) and groups[g + 1][1] - s <= room:
                sides.append((groups[g + 1][0] - e, g + 1))
            if sides:
                other = min(sides)[1]
                lo, hi = min(g, other), max(g, other)
                groups[lo:hi + 1] = [[groups[lo][0], groups[hi][1]]]
                g = lo
                continue
        g += 1
    out = []
    for i, (s, e) in enumerate(groups):
        before = s - (groups[i - 1][1] if i else 0.0)
        after = (groups[i + 1][0] if i + 1 < len(groups) else duration_s) - e
        lo = s - min(pad_s, before / 2 if i else before)
        hi = e + min(pad_s, after / 2 if i + 1 < len(groups) else after)
        out.append((round(max(lo, 0.0), 3), round(min(hi, duration_s), 3)))
    return out


def segment_room(max_s: float, pad_s: float) -> float:
    """The speech a segment may hold: `max_s` less its padding on both sides."""
    return max(max_s - 2 * pad_s, 0.5)
