"""Whisper's hallucination signs on a transcript: empty output, loops, no speech, speed."""

from __future__ import annotations

import math
from typing import Any, Mapping, Optional

from ..config import HallucinationFilter
from .base import FILTERS, Filter
from .text import max_consecutive_ngram_repeats

EMPTY_TRANSCRIPT = "empty_transcript"
REPETITIVE = "repetitive_transcript"
REPEATED_NGRAMS = "repeated_ngrams"
NO_SPEECH = "no_speech"
TOO_FEW_CHARS = "too_few_chars_per_s"
TOO_MANY_CHARS = "too_many_chars_per_s"
LOW_UNIQUE_WORDS = "low_unique_words"
LONG_WORD = "long_word"


@FILTERS.register("hallucination")
class Hallucination(Filter):
    name = "hallucination"
    needs = ("transcript", "duration_s", "avg_logprob", "no_speech_prob", "compression_ratio")

    def __init__(self, config: HallucinationFilter):
        self.c = config

    @classmethod
    def configured(cls, config: Any, input_columns: set[str]) -> Optional[Filter]:
        return cls(config.filters.hallucination) if config.filters.hallucination.enabled else None

    def reason(self, row: Mapping[str, Any]) -> Optional[str]:
        c = self.c
        text = (row["transcript"] or "").strip()
        if not text:
            return EMPTY_TRANSCRIPT if c.drop_empty else None
        no_speech, logprob = _nan_if_none(row["no_speech_prob"]), _nan_if_none(row["avg_logprob"])
        if (not math.isnan(no_speech) and no_speech > c.no_speech_prob
                and not math.isnan(logprob) and logprob < c.no_speech_logprob):
            return NO_SPEECH
        if (row["compression_ratio"] or 0.0) > c.max_compression_ratio:
            return REPETITIVE
        if max_consecutive_ngram_repeats(text, 3) > c.max_ngram_repeats:
            return REPEATED_NGRAMS
        words = text.lower().split()
        if c.min_unique_word_ratio is not None and len(words) >= 10 and len(set(words)) / len(words) < c.min_unique_word_ratio:
            return LOW_UNIQUE_WORDS
        if c.max_word_chars is not None and any(len(w.strip(".,!?;:\"'")) > c.max_word_chars for w in words):
            return LONG_WORD
        duration = row["duration_s"] or 0.0
        cps = len(text) / max(duration, 1e-6)
        if duration >= 2.0 and cps < c.min_chars_per_s:
            return TOO_FEW_CHARS
        if cps > c.max_chars_per_s:
            return TOO_MANY_CHARS
        return None


def _nan_if_none(x: Optional[float]) -> float:
    return math.nan if x is None else float(x)
