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
                  pad_s: float) -> list[tuple[float, float]]:
    """Pack consecutive speech regions into segments no longer than `max_s` (a region longer
    than that is its own segment: VAD already split long speech at its shortest pauses), join
    a segment shorter than `min_s` to a neighbour when the two fit, and pad each into the
    pause around it (at most half of the pause, never past the recording)."""
    packed: list[list[float]] = []
    for s, e in regions:
        if packed and e - packed[-1][0] <= max_s:
            packed[-1][1] = e
        else:
            packed.append([s, e])
    merged: list[list[float]] = []
    for seg in packed:  # a short segment left over joins its predecessor when they fit
        if merged and seg[1] - seg[0] < min_s and seg[1] - merged[-1][0] <= max_s:
            merged[-1][1] = seg[1]
        else:
            merged.append(seg)
    out = []
    for i, (s, e) in enumerate(merged):
        before = s - (merged[i - 1][1] if i else 0.0)
        after = (merged[i + 1][0] if i + 1 < len(merged) else duration_s) - e
        lo = s - min(pad_s, before / 2 if i else before)
        hi = e + min(pad_s, after / 2 if i + 1 < len(merged) else after)
        out.append((round(max(lo, 0.0), 3), round(min(hi, duration_s), 3)))
    return out
