"""Speech in a language the model does not handle: by Whisper's spoken language ID (the
transcribing model with `asr.language: null`, or `asr.language_id_model` beside an English-only
one), or, for an English-only model, by its own confidence in what it wrote."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping, Optional

from pydantic import Field

from ..core.settings import Settings
from .base import FILTERS, Filter

if TYPE_CHECKING:
    from ..config import PipelineConfig

LANGUAGE = "language"
LOW_CONFIDENCE = "low_confidence"


class LanguageFilter(Settings):
    """Speech the model cannot understand, caught before the judge. With a multilingual model
    (`asr.language: null`) or a language ID model beside an English-only one
    (`asr.language_id_model`), Whisper's detected language and its probability; with an
    English-only one (tiny.en), speech in another language comes out as fluent English
    nonsense that only Whisper's own confidence gives away (`min_avg_logprob`)."""

    allowed: Optional[list[str]] = Field(None, description="Languages kept (Whisper's codes: `en`, `de`...); "
                                         "others are rejected (`language`). None: `asr.language` when "
                                         "`asr.language_id_model` hears the language beside it (the English "
                                         "default keeps English only), else any.")
    min_prob: float = Field(0.6, ge=0, le=1, description="With spoken language ID (`asr.language: null`, or "
                            "`asr.language_id_model` beside a fixed `asr.language`): reject clips whose detected "
                            "language has a lower probability (`language`). Granary uses 0.7, Emilia 0.8 (large "
                            "models); 0.6 was set on the dev half of benchmarks/language_id.py with whisper-base. 0: off.")
    min_avg_logprob: Optional[float] = Field(
        None, le=0, description="Reject transcripts whose mean token log-probability is below this "
        "(`low_confidence`). Measured on tiny.en (`benchmarks/language_gate.py`): -0.9 keeps all 18 real "
        "English recordings and 88% of 60 espeak-ng English clips, and lets through 8% of Czech, 17% of "
        "Dutch and 17% of German espeak-ng clips (12 each); -0.9 in `--profile longform`. None: off.")


def spoken_language_detected(asr: Any) -> bool:
    """Whether `language` / `language_prob` come from the audio under this ASR configuration."""
    return asr.language is None or bool(getattr(asr, "language_id_model", None))


def english_trusted_above(asr: Any) -> Optional[float]:
    """The mean token log-probability above which an English-only model's transcript is taken
    as English without language ID (`asr.skip_language_id_above_avg_logprob`), or None."""
    if not getattr(asr, "language_id_model", None) or asr.language != "en":
        return None
    return getattr(asr, "skip_language_id_above_avg_logprob", None)


def trusted_as_english(avg_logprob: Optional[float], above: Optional[float]) -> bool:
    """A clip the transcriber did not send to language ID (no `language_prob`) because its
    English-only model was confident enough."""
    return above is not None and avg_logprob is not None and avg_logprob >= above


@FILTERS.register("language")
class Language(Filter):
    name = "language"
    settings = LanguageFilter

    def __init__(self, config: LanguageFilter, pipeline: Optional["PipelineConfig"] = None):
        self.allowed = set(config.allowed) if config.allowed else None
        detecting = pipeline is None or spoken_language_detected(pipeline.asr)
        if self.allowed is None and pipeline is not None and detecting and pipeline.asr.language:
            self.allowed = {pipeline.asr.language}  # heard beside a fixed language: that one only
        self.min_prob = config.min_prob if detecting else 0.0
        self.min_avg_logprob = config.min_avg_logprob
        self.english_above = english_trusted_above(pipeline.asr) if pipeline is not None and detecting else None
        needs = []
        if self.allowed:
            needs.append("language")
        if self.min_prob:
            needs.append("language_prob")
        if self.min_avg_logprob is not None or (self.min_prob and self.english_above is not None):
            needs.append("avg_logprob")
        self.needs = tuple(needs)

    @classmethod
    def configured(cls, config: "PipelineConfig", input_columns: set[str]) -> Optional[Filter]:
        """None unless a criterion is set that this configuration can check (which depends on
        `asr`, so the filter is built from the whole configuration)."""
        f = cls(config.filters.language, config)
        return f if f.needs else None

    def reason(self, row: Mapping[str, Any]) -> Optional[str]:
        if self.allowed is not None and row["language"] not in self.allowed:
            return LANGUAGE
        if self.min_prob:
            prob = row["language_prob"]
            if prob < self.min_prob if prob is not None else not trusted_as_english(row.get("avg_logprob"),
                                                                                   self.english_above):
                return LANGUAGE
        if self.min_avg_logprob is not None and row["avg_logprob"] is not None and row["avg_logprob"] < self.min_avg_logprob:
            return LOW_CONFIDENCE
        return None
