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
    """Split at the longest pauses first: a span of speech regions longer than `max_s` is cut
    at its longest internal pause, and each side again, until every segment fits (a single
    region longer than `max_s` stays whole: VAD already split long speech). Segments shorter
    than `min_s` then join the neighbour across the shorter pause when the two fit. Each is
    padded into the pause around it (at most half of it, never past the recording)."""
    def split(rs: list[tuple[float, float]]) -> list[list[tuple[float, float]]]:
        if len(rs) <= 1 or rs[-1][1] - rs[0][0] <= max_s:
            return [rs]
        gaps = [rs[i + 1][0] - rs[i][1] for i in range(len(rs) - 1)]
        k = max(range(len(gaps)), key=lambda i: (gaps[i], -abs(i - len(gaps) / 2)))
        return split(rs[:k + 1]) + split(rs[k + 1:])
    groups = split(list(regions)) if regions else []
    segs = [[g[0][0], g[-1][1]] for g in groups]
    i = 0
    while i < len(segs):
        s, e = segs[i]
        if e - s < min_s and len(segs) > 1:
            left = segs[i - 1] if i > 0 else None
            right = segs[i + 1] if i + 1 < len(segs) else None
            cands = []
            if left and e - left[0] <= max_s:
                cands.append((s - left[1], "l"))
            if right and right[1] - s <= max_s:
                cands.append((right[0] - e, "r"))
            if cands:
                side = min(cands)[1]
                if side == "l":
                    left[1] = e
                    segs.pop(i)
                    continue
                right[0] = s
                segs.pop(i)
                continue
        i += 1
    out = []
    for i, (s, e) in enumerate(segs):
        before = s - (segs[i - 1][1] if i else 0.0)
        after = (segs[i + 1][0] if i + 1 < len(segs) else duration_s) - e
        lo = s - min(pad_s, before / 2 if i else before)
        hi = e + min(pad_s, after / 2 if i + 1 < len(segs) else after)
        out.append((round(max(lo, 0.0), 3), round(min(hi, duration_s), 3)))
    return out
