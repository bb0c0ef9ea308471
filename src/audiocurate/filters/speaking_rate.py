"""Speaking-rate outliers within a recording (Emilia's rule): a segment whose characters per
second fall outside the inter-quartile fences of its own recording's segments. A fixed bound
(`filters.hallucination`) cannot tell a slow lecturer from a missed sentence; the recording's
own rate can.

Where the fences are taken (`filters.speaking_rate.scope`): `block` judges in the stream, a
recording's segments in one Ray block; `recording` and `column` only measure here (each row in
play gets `speech_cps`) and the corpus pass `corpus/fences.py` judges every group over all of
its rows once they are written."""

from __future__ import annotations

from collections import defaultdict
from typing import Any, Optional

import numpy as np
import pyarrow as pa

from ..config import PipelineConfig, SpeakingRateFilter
from .base import FILTERS, Filter

CPS_OUTLIER = "chars_per_s_outlier"
SPEECH_CPS = "speech_cps"  # a row's characters per second of speech, stored for the corpus pass
PARENT_ID = "parent_id"


def group_column(config: SpeakingRateFilter) -> str:
    """The column whose values are the groups fences are taken over."""
    return config.column if config.scope == "column" else PARENT_ID


def tukey_fences(cps: np.ndarray, k: float) -> tuple[float, float]:
    """Tukey's fences; the spread is taken as at least a tenth of the median rate, so a very
    even reader's segments are not outliers by a character or two."""
    q1, median, q3 = np.percentile(cps, [25, 50, 75])
    spread = max(q3 - q1, 0.1 * median)
    return q1 - k * spread, q3 + k * spread


@FILTERS.register("speaking_rate")
class SpeakingRateOutliers(Filter):
    """In `block` scope it needs a recording's segments side by side: segmented runs hand each
    model stage whole recordings per block (pipeline.py), so the fences are the recording's own
    unless it runs past a block. In `recording`/`column` scope it measures `speech_cps` and
    rejects nothing; the corpus pass decides."""

    name = "speaking_rate"
    settings = SpeakingRateFilter

    def __init__(self, config: SpeakingRateFilter):
        self.k = config.iqr_k
        self.min_segments = config.min_segments
        self.in_stream = config.scope == "block"
        self.needs = ("transcript", "duration_s", group_column(config))
        self.produces = {} if self.in_stream else {SPEECH_CPS: pa.float64()}

    @classmethod
    def configured(cls, config: PipelineConfig, input_columns: set[str]) -> Optional[Filter]:
        rate = config.filters.speaking_rate
        if not rate.enabled:
            return None
        if rate.scope != "column":
            return cls(rate) if config.segment.enabled else None
        if rate.column not in input_columns:
            raise ValueError(f"filters.speaking_rate.column: the input has no column {rate.column!r} "
                             f"(its columns: {', '.join(sorted(input_columns))})")
        return cls(rate)

    def fences(self, cps: np.ndarray) -> tuple[float, float]:
        return tukey_fences(cps, self.k)

    def evaluate(self, table: pa.Table, rows: np.ndarray) -> tuple[list[Optional[str]], dict[str, list[Any]]]:
        index = pa.array(rows, pa.int64())
        texts = table["transcript"].take(index).to_pylist()
        durations = speech_seconds(table, index)
        cps = np.array([len((t or "").strip()) / max(d or 0.0, 1e-6) for t, d in zip(texts, durations)])
        if not self.in_stream:
            return [None] * len(rows), {SPEECH_CPS: cps.tolist()}
        groups: dict[Any, list[int]] = defaultdict(list)
        for j, p in enumerate(table[self.needs[2]].take(index).to_pylist()):
            groups[p].append(j)
        reasons: list[Optional[str]] = [None] * len(rows)
        for members in groups.values():
            if len(members) < self.min_segments:
                continue
            lo, hi = self.fences(cps[members])
            for j in members:
                if not lo <= cps[j] <= hi:
                    reasons[j] = CPS_OUTLIER
        return reasons, {}

    def reason(self, row: Any) -> Optional[str]:  # pragma: no cover - evaluate is the API here
        raise TypeError("speaking_rate judges a segment against its recording's other segments: use evaluate")


def speech_seconds(table: pa.Table, index: pa.Array) -> list[Optional[float]]:
    """How long each segment speaks: from its first word's start to its last word's end when
    Whisper gave word timestamps, else its duration. The padding around a segment (up to
    2 x `segment.pad_s`) would otherwise slow a short segment's rate more than a long one's."""
    durations = table["duration_s"].take(index).to_pylist()
    if "words" not in table.column_names:
        return durations
    out = []
    for words, d in zip(table["words"].take(index).to_pylist(), durations):
        span = (words[-1]["end_s"] - words[0]["start_s"]) if words else 0.0
        out.append(span if span and span > 0.5 else d)
    return out
