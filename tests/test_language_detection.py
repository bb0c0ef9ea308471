"""Spoken-language detection with a multilingual Whisper (`asr.language: null`): both ASR
backends on one tiny multilingual checkpoint with random weights (tests/tiny_whisper.py),
and the language filter on what the transcribe stage writes."""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pytest

from audiocurate import contract as C
from audiocurate.config import PipelineConfig
from audiocurate.plan import placed_filters
from audiocurate.stages import TranscribeStage

pytest.importorskip("torch")
pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def multilingual(tmp_path_factory):
    import tiny_whisper

    root = tmp_path_factory.mktemp("multilingual-whisper")
    tiny_whisper.build_multilingual(str(root / "hf"), str(root / "ct2"))
    return {"hf": str(root / "hf"), "ct2": str(root / "ct2"), "codes": tiny_whisper.languages()}


def clips() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [(rng.standard_normal(16000 * s) * 3000).astype(np.int16) for s in (3, 8, 40, 70)]


@pytest.mark.slow  # a real model on a long clip: not a unit test's seconds
def test_both_backends_detect_the_same_language_with_its_probability(multilingual):
    from audiocurate.asr import make_transcriber
    from audiocurate.config import FasterWhisperConfig, TransformersAsrConfig

    # 40 s: two windows of at most 30 s, 70 s three: each window's language from its own
    # encoder pass, the clip's the duration-weighted mean (both backends cut the windows alike).
    # The language token of both: faster-whisper's rescoring by decoding (`language_rescore_below`) is its own.
    fw = make_transcriber(FasterWhisperConfig(model=multilingual["ct2"], language=None, compute_type="float32",
                                              beam_size=1, temperatures=[0.0], chunk_s=30, language_rescore_below=None))
    hf = make_transcriber(TransformersAsrConfig(model=multilingual["hf"], language=None, device="cpu",
                                                compute_type="float32", beam_size=1, max_new_tokens=8, chunk_s=30,
                                                temperatures=[0.0]))
    a, b = fw.transcribe_batch(clips()), hf.transcribe_batch(clips())
    for x, y in zip(a, b):
        assert x.language in multilingual["codes"] and 0 < x.language_prob <= 1
        # Random weights put about 1/99 on each language: a backend reading another clip's,
        # another window's or the runner-up's probability would differ by more than 2 %.
        assert (x.language, pytest.approx(x.language_prob, rel=0.02)) == (y.language, y.language_prob)


@pytest.mark.slow  # random weights decode to the window's token limit, long form included
def test_an_english_only_model_asked_to_detect_is_sure_of_english(tiny_whisper_dir):
    from audiocurate.asr import make_transcriber
    from audiocurate.config import TransformersAsrConfig

    hf = make_transcriber(TransformersAsrConfig(model=tiny_whisper_dir, language=None, device="cpu",
                                                compute_type="float32", beam_size=1, max_new_tokens=8, chunk_s=30,
                                                temperatures=[0.0]))
    out = hf.transcribe_batch(clips()[:3])  # short and long-form
    assert [(r.language, r.language_prob) for r in out] == [("en", 1.0)] * 3


@pytest.mark.slow  # five transcribe stages, each loading and running a model
def test_the_language_filter_acts_on_the_detected_language_and_probability(multilingual):
    pcm = pa.table({"id": ["a", "b"], "duration_s": [3.0, 8.0],  # the hallucination filter reads it
                    C.PCM: pa.array([c.tobytes() for c in clips()[:2]], pa.large_binary())})

    def run(*overrides: str) -> dict:
        config = PipelineConfig.load(overrides=[f"asr.model={multilingual['ct2']}", "asr.language=null",
                                                "asr.compute_type=float32", "asr.beam_size=1",
                                                "asr.temperatures=[0.0]", *overrides])
        stage = TranscribeStage(config.asr, filters=placed_filters(config, ["id", "audio_bytes"])[C.TRANSCRIBE])
        out = stage(pcm).to_pylist()
        assert all(r["language"] in multilingual["codes"] and 0 < r["language_prob"] <= 1 for r in out)
        return {r["id"]: (r["language"], r["language_prob"], r[C.DROP_REASON]) for r in out}

    detected = run("filters.language.min_prob=0")
    lang, prob, reason = detected["a"]
    assert reason is None  # no criterion set: nothing rejected
    assert run()["a"][2] == "language"  # the default min_prob (0.6) is far above random weights' ~1/99
    other = "de" if lang != "de" else "fr"
    kept = run(f"filters.language.allowed=[{lang}]", f"filters.language.min_prob={prob / 2:.6f}")
    assert kept["a"][2] is None
    assert run(f"filters.language.allowed=[{other}]")["a"][2] == "language"
    assert run(f"filters.language.min_prob={min(prob * 2, 1.0):.6f}")["a"][2] == "language"
