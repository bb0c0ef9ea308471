"""Speech in a language the model does not handle: by Whisper's spoken language ID (the
transcribing model with `asr.language: null`, or `asr.language_id_model` beside an English-only
one), or, for an English-only model, by its own confidence in what it wrote."""

from __future__ import annotations

from typing import Any, Mapping, Optional

from ..config import LanguageFilter, PipelineConfig
from .base import FILTERS, Filter

LANGUAGE = "language"
LOW_CONFIDENCE = "low_confidence"


def spoken_language_detected(asr: Any) -> bool:
    """Whether `language` / `language_prob` come from the audio under this ASR configuration."""
    return asr.language is None or bool(getattr(asr, "language_id_model", None))


@FILTERS.register("language")
class Language(Filter):
    name = "language"

    def __init__(self, config: LanguageFilter, pipeline: Optional[PipelineConfig] = None):
        self.allowed = set(config.allowed) if config.allowed else None
        detecting = pipeline is None or spoken_language_detected(pipeline.asr)
        if self.allowed is None and pipeline is not None and detecting and pipeline.asr.language:
            self.allowed = {pipeline.asr.language}  # heard beside a fixed language: that one only
        self.min_prob = config.min_prob if detecting else 0.0
        self.min_avg_logprob = config.min_avg_logprob
        needs = []
        if self.allowed:
            needs.append("language")
        if self.min_prob:
            needs.append("language_prob")
        if self.min_avg_logprob is not None:
            needs.append("avg_logprob")
        self.needs = tuple(needs)

    @classmethod
    def configured(cls, config: PipelineConfig, input_columns: set[str]) -> Optional[Filter]:
        """None unless a criterion is set that this configuration can check."""
        f = cls(config.filters.language, config)
        return f if f.needs else None

    def reason(self, row: Mapping[str, Any]) -> Optional[str]:
        if self.allowed is not None and row["language"] not in self.allowed:
            return LANGUAGE
        if self.min_prob and (row["language_prob"] is None or row["language_prob"] < self.min_prob):
            return LANGUAGE
        if self.min_avg_logprob is not None and row["avg_logprob"] is not None and row["avg_logprob"] < self.min_avg_logprob:
            return LOW_CONFIDENCE
        return None
