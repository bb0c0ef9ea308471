"""Speech regions with Silero VAD (the ONNX model faster-whisper ships, run by its own
`get_speech_timestamps`), window by window, and their packing into segments."""

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


def speech_regions(pcm: np.ndarray, settings: VadSettings, max_region_s: float) -> list[tuple[float, float]]:
    """(start_s, end_s) of speech in 16 kHz int16 samples. VAD runs on windows of
    `window_s`, so its working memory follows the window, not the recording; a region that
    runs across a window's edge is joined again."""
    from faster_whisper.vad import VadOptions, get_speech_timestamps

    options = VadOptions(threshold=settings.threshold, min_silence_duration_ms=int(settings.min_silence_s * 1000),
                         min_speech_duration_ms=int(settings.min_speech_s * 1000), speech_pad_ms=0,
                         max_speech_duration_s=max_region_s)
    step = int(settings.window_s * RATE)
    regions: list[tuple[float, float]] = []
    for lo in range(0, max(len(pcm), 1), step):
        window = pcm[lo:lo + step].astype(np.float32) / 32768.0
        if len(window) < 512:
            break
        for r in get_speech_timestamps(window, options, sampling_rate=RATE):
            start, end = (lo + r["start"]) / RATE, (lo + r["end"]) / RATE
            if regions and lo > 0 and r["start"] <= 512 and abs(regions[-1][1] - lo / RATE) <= 512 / RATE:
                regions[-1] = (regions[-1][0], end)  # speech across the window edge
            else:
                regions.append((start, end))
    return regions


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
