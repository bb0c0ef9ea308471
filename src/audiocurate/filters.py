"""Cheap signals before expensive ones: each filter returns a drop reason or None.

As in datatrove, a filter only decides; the stages record its reason in `drop_reason` and the
sink sends the row to `rejected/`, where the report counts rows per reason. Audio filters run
before transcription, text filters before the judge, so the judge never sees a row a cheaper
check already dropped.
"""

from __future__ import annotations

import functools
import math
import re
from dataclasses import dataclass
from typing import Optional

from .config import FiltersConfig

# Drop reasons, as written in `drop_reason`.
TOO_SHORT = "too_short"
TOO_LONG = "too_long"
SILENCE = "silence"
EMPTY_TRANSCRIPT = "empty_transcript"
REPETITIVE = "repetitive_transcript"
REPEATED_NGRAMS = "repeated_ngrams"
NO_SPEECH = "no_speech"
TOO_FEW_CHARS = "too_few_chars_per_s"
TOO_MANY_CHARS = "too_many_chars_per_s"
WER_ABOVE_MAX = "wer_above_max"
LOW_EDU_SCORE = "low_edu_score"


class AudioFilters:
    """Duration and silence, from facts the decoder measured."""

    def __init__(self, config: FiltersConfig):
        self.duration = config.duration
        self.silence = config.silence

    def reason(self, duration_s: float, peak_dbfs: float) -> Optional[str]:
        d = self.duration
        if d.enabled and duration_s < d.min_s:
            return TOO_SHORT
        if d.enabled and d.max_s is not None and duration_s > d.max_s:
            return TOO_LONG
        if self.silence.enabled and peak_dbfs < self.silence.max_peak_dbfs:
            return SILENCE
        return None


@dataclass
class TranscriptFacts:
    text: str
    duration_s: float
    avg_logprob: float
    no_speech_prob: float
    compression_ratio: float


class TranscriptFilters:
    """Whisper's hallucination signs: empty output, loops, no speech, implausible speed."""

    def __init__(self, config: FiltersConfig):
        self.c = config.hallucination

    def reason(self, t: TranscriptFacts) -> Optional[str]:
        c = self.c
        if not c.enabled:
            return None
        text = t.text.strip()
        if not text:
            return EMPTY_TRANSCRIPT if c.drop_empty else None
        if (
            not math.isnan(t.no_speech_prob) and t.no_speech_prob > c.no_speech_prob
            and not math.isnan(t.avg_logprob) and t.avg_logprob < c.no_speech_logprob
        ):
            return NO_SPEECH
        if t.compression_ratio > c.max_compression_ratio:
            return REPETITIVE
        if max_consecutive_ngram_repeats(text, 3) > c.max_ngram_repeats:
            return REPEATED_NGRAMS
        cps = len(text) / max(t.duration_s, 1e-6)
        if t.duration_s >= 2.0 and cps < c.min_chars_per_s:
            return TOO_FEW_CHARS
        if cps > c.max_chars_per_s:
            return TOO_MANY_CHARS
        return None


def max_consecutive_ngram_repeats(text: str, n: int) -> int:
    """Most back-to-back repeats of any 1- to n-word sequence ("a b a b a b" is 3)."""
    words = normalize_text(text, "basic").split()
    best = 1 if words else 0
    for size in range(1, n + 1):
        start = 0
        while start + 2 * size <= len(words):
            k = 1
            gram = words[start:start + size]
            while words[start + k * size:start + (k + 1) * size] == gram:
                k += 1
            best = max(best, k)
            start += (k - 1) * size + 1 if k > 1 else 1
    return best


_PUNCT = re.compile(r"[^\w\s']|_")


def normalize_text(text: str, normalizer: str = "basic") -> str:
    """Text as WER compares it. `basic`: lowercase, punctuation removed, whitespace collapsed.
    `whisper_english`: Whisper's own English normalizer (also spelled-out numbers to digits,
    British to American spelling), the convention of published Whisper WERs."""
    if normalizer == "whisper_english":
        return _english_normalizer()(text or "")
    text = _PUNCT.sub(" ", (text or "").lower().replace("\u2019", "'"))
    return " ".join(w.strip("'") for w in text.split() if w.strip("'"))


@functools.lru_cache(maxsize=1)
def _english_normalizer():
    from whisper_normalizer.english import EnglishTextNormalizer

    return EnglishTextNormalizer()


def word_error_rate(reference: str, hypothesis: str, normalizer: str = "basic") -> float:
    """WER of one hypothesis against its reference, both normalized the same way."""
    import jiwer

    ref, hyp = normalize_text(reference, normalizer), normalize_text(hypothesis, normalizer)
    if not ref:
        return 0.0 if not hyp else 1.0
    return float(jiwer.wer(ref, hyp)) if hyp else 1.0


def corpus_wer(references: list[str], hypotheses: list[str], normalizer: str = "basic") -> float:
    """Word-weighted WER over many utterances (not the mean of per-clip WERs)."""
    import jiwer

    pairs = [(normalize_text(r, normalizer), normalize_text(h, normalizer)) for r, h in zip(references, hypotheses)]
    pairs = [(r, h if h else "<empty>") for r, h in pairs if r]
    if not pairs:
        return 0.0
    return float(jiwer.wer([r for r, _ in pairs], [h for _, h in pairs]))
