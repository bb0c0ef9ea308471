"""Text–audio language agreement, as OLMoASR does: for inputs that bring their own text
(Common Voice's `sentence`, subtitles), the language that text is written in must be the
language Whisper hears, or the pair is not a transcript of the audio (`language_mismatch`).
The section `filters.text_language` turns it on (`enabled: true`, `text_column: sentence`).

The text's language comes from py3langid (BSD-3-Clause, 97 languages, a 4.6 MB naive Bayes
model inside the wheel; offline), loaded once per process. It needs `language` from the transcribe stage, so it runs right after Whisper, before the judge;
spoken language ID (`asr.language: null` or `asr.language_id_model`) makes `language` the audio's.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any, Mapping, Optional

import pyarrow as pa
from pydantic import Field

from ..core.settings import Settings
from .base import FILTERS, Filter

if TYPE_CHECKING:
    from ..config import PipelineConfig

LANGUAGE_MISMATCH = "language_mismatch"
# Whisper's codes where the ISO 639-1 code py3langid uses differs.
_TO_WHISPER = {"nb": "no", "jv": "jw"}


class TextLanguageSettings(Settings):
    """Text–audio language agreement (`filters.text_language`): the input's own text must be in the
    language Whisper hears, or the clip is rejected as `language_mismatch`."""

    enabled: bool = Field(False, description="Identify the language of each clip's own text (`text_column`) "
                          "and reject the clip when it is confidently another than the spoken one. Needs "
                          "`text_column` in the input; spoken language ID (`asr.language: null`, or "
                          "`asr.language_id_model`) makes `language` the audio's. Off by default.")
    text_column: str = Field("sentence", description="The input column with the clip's own text. A row whose "
                             "text is empty or missing is kept (nothing to compare).")
    min_chars: int = Field(12, ge=1, description="Texts shorter than this (after trimming) are not judged: "
                           "a few words are too little for a character n-gram identifier.")
    min_text_prob: float = Field(0.9, ge=0, le=1, description="Reject only when the text identifier gives its "
                                 "language at least this probability (normalized over its candidates), so an "
                                 "uncertain guess never costs a clip.")
    languages: Optional[list[str]] = Field(None, description="Restrict the text identifier to these ISO 639-1 "
                                           "codes (the corpus's languages): fewer look-alike candidates, fewer "
                                           "wrong guesses. None: all 97.")


@functools.lru_cache(maxsize=8)
def text_identifier(languages: Optional[tuple[str, ...]] = None) -> Any:
    """py3langid's identifier with normalized probabilities, once per process and candidate set."""
    from py3langid.langid import MODEL_FILE, LanguageIdentifier

    ident = LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)
    if languages:
        ident.set_languages(list(languages))
    return ident


def text_language(text: str, languages: Optional[tuple[str, ...]] = None) -> tuple[str, float]:
    """(Whisper language code, probability) of the language `text` is written in."""
    lang, prob = text_identifier(languages).classify(text)
    return _TO_WHISPER.get(lang, lang), float(prob)


@FILTERS.register("text_language")
class TextLanguageAgreement(Filter):
    """Rejects a row (`language_mismatch`) whose own text is confidently in another language than
    the one Whisper heard; measures `text_language` / `text_language_prob` for every row it sees."""

    name = "text_language"
    settings = TextLanguageSettings
    measures_all = True
    produces = {"text_language": pa.string(), "text_language_prob": pa.float32()}

    def __init__(self, config: Optional[TextLanguageSettings] = None, **args: Any):
        """From its section (`filters.text_language`), or from keyword arguments as a filter of
        `filters.custom` (`args`), validated the same way."""
        if config is None:
            try:
                config = TextLanguageSettings(**args)
            except Exception as e:  # pydantic's message names the field and what is wrong with it
                raise ValueError(f"{type(self).__name__}: {e}") from None
        elif args:
            raise TypeError(f"{type(self).__name__}: give its settings or keyword arguments, not both")
        self.config = config
        self.languages = tuple(self.config.languages) if self.config.languages else None
        text_identifier(self.languages)  # a wrong code fails at plan time, not in a worker
        self.needs = (self.config.text_column, "language")

    @classmethod
    def applies(cls, config: "PipelineConfig", input_columns: set[str]) -> bool:
        column = config.filters.text_language.text_column
        if column not in input_columns:
            raise ValueError(f"filters.text_language is on, but its text_column {column!r} is not a column of the "
                             f"input (columns: {', '.join(sorted(input_columns))}); set "
                             "filters.text_language.text_column to the column with each clip's own text")
        return True

    def measure(self, row: Mapping[str, Any]) -> Mapping[str, Any]:
        text = (row.get(self.config.text_column) or "").strip()
        if len(text) < self.config.min_chars:
            return {"text_language": None, "text_language_prob": None}
        lang, prob = text_language(text, self.languages)
        return {"text_language": lang, "text_language_prob": prob}

    def reason(self, row: Mapping[str, Any]) -> Optional[str]:
        lang, prob, spoken = row.get("text_language"), row.get("text_language_prob"), row.get("language")
        if lang is None or spoken is None or prob < self.config.min_text_prob:
            return None
        return LANGUAGE_MISMATCH if lang != spoken else None
