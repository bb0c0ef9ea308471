"""Where a recording's decoded samples wait to be cut: a `PcmSink` that runs VAD on them as they
stream in and keeps them in memory up to `spool_mb`, on a temporary file beyond, so decoding
and cutting an hour costs a window of memory, not the hour's 115 MB of 16 kHz samples (or the
four copies holding it whole took: the list of blocks, the joined array, its bytes, the column)."""

from __future__ import annotations

import tempfile

import numpy as np

from .vad import SpeechDetector


class RecordingSpool:
    """One recording's 16 kHz int16 samples and their speech regions."""

    def __init__(self, detector: SpeechDetector, memory_bytes: int):
        self.detector = detector
        detector.clear()
        self.memory_bytes = memory_bytes
        self._file = tempfile.SpooledTemporaryFile(max_size=memory_bytes)
        self.frames = 0

    def write(self, pcm: np.ndarray) -> None:
        self._file.write(pcm.tobytes())
        self.frames += len(pcm)
        self.detector.feed(pcm)

    def clear(self) -> None:
        self._file.seek(0)
        self._file.truncate()
        self.frames = 0
        self.detector.clear()

    def regions(self) -> list[tuple[float, float]]:
        return self.detector.finish()

    @property
    def on_disk(self) -> bool:
        return bool(getattr(self._file, "_rolled", False))

    def read(self, start: int, end: int) -> np.ndarray:
        """Samples [start, end) of the recording."""
        start, end = max(start, 0), min(end, self.frames)
        if end <= start:
            return np.zeros(0, np.int16)
        self._file.seek(2 * start)
        return np.frombuffer(self._file.read(2 * (end - start)), np.int16)

    def close(self) -> None:
        self._file.close()


class HeldSamples:
    """Samples already whole in memory (a table a decode stage filled), read the same way."""

    def __init__(self, pcm: np.ndarray, detector: SpeechDetector):
        self.pcm = pcm
        self.frames = len(pcm)
        detector.clear()
        detector.feed(pcm)
        self._regions = detector.finish()

    def regions(self) -> list[tuple[float, float]]:
        return self._regions

    def read(self, start: int, end: int) -> np.ndarray:
        return self.pcm[max(start, 0):max(end, 0)]

    def close(self) -> None:
        self.pcm = np.zeros(0, np.int16)
