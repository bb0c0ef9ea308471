"""Text–audio language agreement: an input's own text in another language than the one Whisper
hears is not a transcript of the audio (`language_mismatch`); py3langid reads the text."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

pytest.importorskip("py3langid")

from audiocurate import contract as C  # noqa: E402
from audiocurate.config import PipelineConfig  # noqa: E402
from audiocurate.filters.text_language import LANGUAGE_MISMATCH, TextLanguageAgreement, text_language  # noqa: E402
from audiocurate.plan import placed_filters  # noqa: E402

TEXTS = {
    "cs": "Praha je hlavní město České republiky a leží na řece Vltavě.",
    "nl": "Amsterdam is de hoofdstad van Nederland en heeft veel grachten.",
    "de": "Das menschliche Herz pumpt Blut durch den ganzen Körper.",
    "fr": "Les abeilles transportent le pollen de fleur en fleur.",
    "en": "The library opens at nine and closes early on Sundays.",
    "pl": "Książka leży na stole obok okna.",
}


def test_the_text_identifier_names_each_texts_language_in_whispers_codes():
    assert {lang: text_language(t)[0] for lang, t in TEXTS.items()} == {lang: lang for lang in TEXTS}


def test_text_in_another_language_than_the_speech_is_a_mismatch_and_both_languages_are_kept():
    f = TextLanguageAgreement(text_column="sentence")
    table = pa.table({"sentence": [TEXTS["cs"], TEXTS["en"], "Ano.", None, TEXTS["de"]],
                      "language": ["cs", "cs", "en", "en", None]})
    reasons, measured = f.evaluate(table, np.arange(table.num_rows))
    assert reasons == [None, LANGUAGE_MISMATCH, None, None, None]  # short, missing text or no audio LID: kept
    assert measured["text_language"] == ["cs", "en", None, None, "de"]
    assert all(p > 0.9 for p in measured["text_language_prob"][:2])


def test_an_unsure_text_identifier_never_costs_a_clip():
    f = TextLanguageAgreement(min_text_prob=1.0)  # nothing is ever that sure
    row = {"sentence": TEXTS["en"], "language": "cs"}
    assert f.reason({**row, **f.measure(row)}) is None


def test_restricting_the_candidates_and_a_wrong_code_fails_when_the_run_is_planned():
    f = TextLanguageAgreement(languages=["cs", "sk"])
    row = {"sentence": TEXTS["pl"], "language": "pl"}
    assert f.measure(row)["text_language"] in ("cs", "sk")
    with pytest.raises(ValueError, match="Unknown language"):
        TextLanguageAgreement(languages=["xx"])
    with pytest.raises(ValueError, match="(?s)TextLanguageAgreement: .*min_text_prob"):
        TextLanguageAgreement(min_text_prob=2)


def test_it_runs_in_the_transcribe_stage_where_the_spoken_language_is_known():
    config = PipelineConfig.load(overrides=[
        'filters.custom=[{type: "audiocurate.filters.text_language:TextLanguageAgreement", args: {text_column: sentence}}]'])
    placed = placed_filters(config, ["id", "audio_bytes", "sentence"])
    assert [type(f).__name__ for f in placed[C.TRANSCRIBE]].count("TextLanguageAgreement") == 1
