"""Whisper's hallucination signs on a transcript: empty output, loops, no speech, speed."""

from __future__ import annotations

import math
from typing import Any, Mapping, Optional

from pydantic import Field

from ..core.settings import Settings
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



class HallucinationFilter(Settings):
    """Whisper's own failure signs, checked on the transcript before the judge sees it."""

    enabled: bool = Field(True, description="Check every transcript.")
    max_compression_ratio: float = Field(
        2.4, description="gzip compression ratio of the transcript above which it is repetitive "
        "gibberish (`repetitive_transcript`); 2.4 is Whisper's own threshold.",
    )
    no_speech_prob: float = Field(
        0.6, description="With `avg_logprob` below `no_speech_logprob`, a no-speech probability "
        "above this marks a clip with no speech (`no_speech`), as Whisper decides.",
    )
    no_speech_logprob: float = Field(-1.0, description="See `no_speech_prob`.")
    max_ngram_repeats: int = Field(
        4, ge=2, description="Any 1- to 3-word sequence repeated back to back more than this many "
        "times is a decoding loop (`repeated_ngrams`).",
    )
    min_chars_per_s: float = Field(
        1.0, ge=0, description="Fewer transcript characters per second of audio than this means "
        "most speech was missed (`too_few_chars_per_s`). Ignored for clips under 2 s.",
    )
    max_chars_per_s: float = Field(
        40.0, description="More characters per second than anyone speaks means invented text "
        "(`too_many_chars_per_s`).",
    )
    drop_empty: bool = Field(True, description="Reject clips whose transcript is empty (`empty_transcript`).")
    min_unique_word_ratio: Optional[float] = Field(
        None, ge=0, le=1, description="Granary's rule for loops the n-gram check misses: in a transcript of 10 "
        "words or more, distinct words / words below this is a loop (`low_unique_words`). None: off (0.3 in "
        "`--profile longform`).")
    max_word_chars: Optional[int] = Field(
        None, ge=10, description="A 'word' longer than this many characters is decoding garbage (`long_word`). "
        "None: off (40 in `--profile longform`).")


@FILTERS.register("hallucination")
class Hallucination(Filter):
    name = "hallucination"
    settings = HallucinationFilter
    needs = ("transcript", "duration_s", "avg_logprob", "no_speech_prob", "compression_ratio")

    def __init__(self, config: HallucinationFilter):
        self.c = config

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
