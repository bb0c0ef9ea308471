"""Text measures the filters and benchmarks share: normalization, WER, repeated n-grams."""

from __future__ import annotations

import functools
import re


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
