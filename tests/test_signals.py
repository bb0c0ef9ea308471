"""Quality signals on audio whose answer is known, and the `quality` profile through a real run."""

from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pytest
import soundfile as sf
from scipy import signal as sps

from audiocurate.filters.clipping import ClippingGate, ClippingSettings
from audiocurate.signals import SIGNALS, RATE

from conftest import speak


def voice(text: str, name: str, speed: int = 160) -> np.ndarray:
    audio, sr = sf.read(io.BytesIO(speak(text, voice=name, speed=speed, fmt="wav")), dtype="float32")
    assert sr == RATE
    return audio


def measure(signal: str, samples: np.ndarray) -> dict:
    return dict(SIGNALS.get(signal).measure(samples))


TEXT_A = "The quick brown fox jumps over the lazy dog near the quiet river bank."
TEXT_B = "Seven silver spoons were lying on the kitchen table after dinner tonight."


def test_a_clipped_sine_clips_and_a_clean_one_does_not():
    t = np.arange(RATE) / RATE
    sine = 0.5 * np.sin(2 * np.pi * 220 * t)
    clipped = np.clip(sine * 8, -0.5, 0.5) * 2  # 8x past full scale, flat tops at 1.0
    as_int16 = lambda x: np.round(np.clip(x, -1, 1) * 32767).astype(np.int16)  # noqa: E731
    clean, hard = measure("clipping", as_int16(sine)), measure("clipping", as_int16(clipped))
    assert clean == {"clip_fraction": 0.0, "clip_longest_run": 0}
    assert hard["clip_fraction"] > 0.5 and hard["clip_longest_run"] > 20
    gate = ClippingGate(ClippingSettings())  # `filters.clipping`'s defaults, `--profile quality`'s thresholds
    assert gate.reason(hard) == "clipped" and gate.reason(clean) is None


def test_low_passed_noise_has_the_low_bandwidth():
    noise = np.random.default_rng(0).standard_normal(2 * RATE).astype(np.float32) * 0.1
    low = sps.sosfiltfilt(sps.butter(10, 3000, fs=RATE, output="sos"), noise)
    assert measure("bandwidth", noise)["bandwidth_hz"] > 7500
    assert 2800 <= measure("bandwidth", low)["bandwidth_hz"] <= 3800


def test_a_sine_is_not_speech_its_background_fills_every_pause():
    t = np.arange(3 * RATE) / RATE
    sine = 0.3 * np.sin(2 * np.pi * 440 * t)
    speech = voice(TEXT_A, "en-us")
    assert measure("noise", sine)["background_snr_db"] < 3  # nothing but the tone, never a pause
    assert measure("noise", speech)["background_snr_db"] > 25


def test_reverb_slows_the_decay():
    speech = voice(TEXT_A, "en-us")
    rng = np.random.default_rng(0)
    tt = np.arange(int(1.5 * RATE)) / RATE
    room = rng.standard_normal(len(tt)) * np.exp(-6.908 * tt / 1.5) * 0.3
    room[0] = 1.0
    wet = sps.fftconvolve(speech, room)[:len(speech)]
    assert measure("reverb", speech)["decay_db_100ms"] > 25
    assert measure("reverb", wet / np.abs(wet).max() * 0.9)["decay_db_100ms"] < 15


def test_two_voices_at_once_are_two_talkers_and_one_voice_is_one():
    a, b = voice(TEXT_A, "en-us"), voice(TEXT_B, "en-us+f2", speed=150)
    n = min(len(a), len(b))
    both = a[:n] + b[:n] * np.sqrt(np.mean(a[:n] ** 2) / np.mean(b[:n] ** 2))
    one = measure("voices", a)["second_voice_ratio"]
    two = measure("voices", both / np.abs(both).max() * 0.9)["second_voice_ratio"]
    assert one < 0.27 < two, (one, two)  # the quality profile's threshold


def test_a_signal_column_is_kept_for_rows_an_earlier_gate_rejected():
    from audiocurate import contract as C
    from audiocurate.filters.noise import NoiseGate, NoiseSettings

    gates = [ClippingGate(ClippingSettings()), NoiseGate(NoiseSettings())]
    t = np.arange(RATE) / RATE
    tone = np.round(np.clip(np.sin(2 * np.pi * 220 * t) * 8, -1, 1) * 32767).astype("<i2").tobytes()
    table = pa.table({C.PCM: pa.array([tone], pa.large_binary())})
    first, _ = gates[0].evaluate(table, np.array([0]))
    assert first == ["clipped"]
    assert gates[1].measures_all  # the stage runs it on the clipped row too
    _, measured = gates[1].evaluate(table, np.array([0]))
    assert measured["background_snr_db"][0] is not None


def test_gate_settings_are_validated():
    from audiocurate.config import PipelineConfig

    with pytest.raises(ValueError, match="max_clip_fraction"):
        PipelineConfig.load(overrides=["filters.clipping.max_clip_fraction=2.0"])
    with pytest.raises(ValueError, match="max_clip_fraction"):
        ClippingGate(max_clip_fraction=2.0)  # as a `filters.custom` entry


@pytest.mark.slow
def test_quality_profile_rejects_defects_and_keeps_clean_speech(tmp_path, ray_local):
    from audiocurate.config import PipelineConfig
    from audiocurate.pipeline import run

    clean = voice(TEXT_A, "en-us")
    clipped = np.clip(clean / np.abs(clean).max() * 8, -1, 1)
    noisy = clean + np.random.default_rng(1).standard_normal(len(clean)) * np.sqrt(np.mean(clean ** 2))
    noisy = noisy / np.abs(noisy).max() * 0.9
    rows = []
    for name, audio in (("clean", clean), ("clipped", clipped), ("noisy", noisy)):
        buf = io.BytesIO()
        sf.write(buf, audio, RATE, format="FLAC", subtype="PCM_16")
        rows.append({"id": name, "audio_bytes": buf.getvalue(), "sentence": TEXT_A})
    src = tmp_path / "in.parquet"
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows), src)
    config = PipelineConfig.load(profile="quality", overrides=["judge.backend=none"])
    run(config, str(src), str(tmp_path / "out"))
    curated = ds.dataset(str(tmp_path / "out" / "curated"), format="parquet").to_table().to_pylist()
    rejected = ds.dataset(str(tmp_path / "out" / "rejected"), format="parquet").to_table().to_pylist()
    assert [r["id"] for r in curated] == ["clean"]
    reasons = {r["id"]: r["drop_reason"] for r in rejected}
    assert reasons == {"clipped": "clipped", "noisy": "noisy_background"}
    for r in curated + rejected:  # every signal is a column of every row, kept or not
        for column in ("clip_fraction", "background_snr_db", "decay_db_100ms", "second_voice_ratio", "bandwidth_hz"):
            assert r[column] is not None, (r["id"], column)
