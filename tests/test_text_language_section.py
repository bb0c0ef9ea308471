"""`filters.text_language` as a built-in section: off by default, on by one setting, placed
after Whisper beside the spoken-language gate, and refused at plan time when the input lacks
its text column. (The identifier itself: tests/test_text_language.py.)"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

pytest.importorskip("py3langid")

from audiocurate import contract as C  # noqa: E402
from audiocurate.cli import main  # noqa: E402
from audiocurate.config import PipelineConfig  # noqa: E402
from audiocurate.filters.text_language import LANGUAGE_MISMATCH  # noqa: E402
from audiocurate.plan import placed_filters  # noqa: E402

ON = ["filters.text_language.enabled=true", "filters.text_language.text_column=caption"]


def _names(placed, stage):
    return [f.name for f in placed[stage]]


def test_it_is_off_by_default_and_one_setting_places_it_after_whisper_beside_the_language_gate():
    columns = ["id", "audio_bytes", "caption"]
    assert "text_language" not in sum((_names(placed_filters(PipelineConfig.load(), columns), s)
                                       for s in (C.DECODE, C.TRANSCRIBE, C.SELECT)), [])
    placed = placed_filters(PipelineConfig.load(overrides=ON), columns)
    names = _names(placed, C.TRANSCRIBE)
    assert names.index("language") < names.index("text_language")


def test_the_section_built_filter_rejects_text_in_another_language_than_the_speech():
    config = PipelineConfig.load(overrides=ON)
    f = next(f for f in placed_filters(config, ["id", "audio_bytes", "caption"])[C.TRANSCRIBE]
             if f.name == "text_language")
    table = pa.table({"caption": ["Das menschliche Herz pumpt Blut durch den ganzen Körper.",
                                  "The library opens at nine and closes early on Sundays."],
                      "language": ["en", "en"]})
    reasons, measured = f.evaluate(table, np.arange(2))
    assert reasons == [LANGUAGE_MISMATCH, None] and measured["text_language"] == ["de", "en"]


def test_an_input_without_its_text_column_is_refused_naming_the_setting():
    with pytest.raises(ValueError, match=r"filters\.text_language.*'caption'.*text_column"):
        placed_filters(PipelineConfig.load(overrides=ON), ["id", "audio_bytes", "sentence"])


def test_the_config_command_documents_the_section(capsys):
    assert main(["config"]) == 0
    lines = capsys.readouterr().out.splitlines()
    at = lines.index("  text_language:")
    assert "language_mismatch" in lines[at - 1] or any("language_mismatch" in l for l in lines[at - 4:at])
    assert any(l.strip() == "enabled: false" for l in lines[at:at + 6])
