"""decode_audio: every codec, channel layout and rate we promise, and clear errors for the rest."""

from __future__ import annotations

import io
import os

import numpy as np
import pytest
import soundfile as sf
import soxr

from audiocurate.audio import AudioDecodeError, PyAVBackend, SoundfileBackend, decode_audio, encode_flac

from conftest import encode, speak

TEXT = "The quick brown fox jumps over the lazy dog."


@pytest.fixture(scope="module")
def reference():
    """A real spoken clip as float32 at 22.05 kHz, and its 16 kHz version."""
    wav = speak(TEXT, rate=22050, fmt="wav")
    audio, sr = sf.read(io.BytesIO(wav), dtype="float32")
    return audio, sr, soxr.resample(audio, sr, 16000)


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    n = min(len(a), len(b))
    return float(np.corrcoef(a[:n], b[:n])[0, 1])


@pytest.mark.parametrize("fmt,subtype", [
    ("wav", "PCM_16"), ("wav", "PCM_24"), ("wav", "PCM_32"), ("wav", "FLOAT"), ("wav", "PCM_U8"),
    ("flac", None), ("ogg", None), ("mp3", None), ("opus", None), ("m4a", None), ("webm", None),
])
def test_codecs_decode_to_16k_mono(reference, fmt, subtype):
    audio, sr, ref16 = reference
    data = encode(audio, sr, rate=sr, fmt=fmt, subtype=subtype)
    clip = decode_audio(data)
    assert clip.sample_rate == 16000 and clip.pcm.dtype == np.int16 and clip.pcm.ndim == 1
    assert clip.source_sample_rate in (sr, 24000, 48000)  # Opus always decodes at 48 kHz
    assert abs(clip.duration_s - len(audio) / sr) < 0.08
    if fmt in ("wav", "flac"):  # lossless: the samples themselves must match
        assert _corr(clip.as_float32(), ref16) > 0.99


@pytest.mark.parametrize("rate", [8000, 11025, 16000, 22050, 32000, 44100, 48000, 88200, 96000])
def test_any_rate_8_to_96k(reference, rate):
    audio, sr, ref16 = reference
    clip = decode_audio(encode(audio, sr, rate=rate, fmt="flac"))
    assert clip.source_sample_rate == rate and clip.sample_rate == 16000
    assert abs(clip.duration_s - len(audio) / sr) < 0.02
    if rate >= 16000:  # below 16 kHz the top of the band is gone by construction
        assert _corr(clip.as_float32(), ref16) > 0.98


@pytest.mark.parametrize("channels", [2, 6])
def test_multichannel_is_downmixed(reference, channels):
    audio, sr, ref16 = reference
    clip = decode_audio(encode(audio, sr, rate=48000, fmt="wav", channels=channels))
    assert clip.source_channels == channels
    assert _corr(clip.as_float32(), ref16) > 0.98


def test_stereo_with_different_channels_is_averaged():
    t = np.arange(16000) / 16000
    left, right = 0.5 * np.sin(2 * np.pi * 440 * t), np.zeros_like(t)
    buf = io.BytesIO()
    sf.write(buf, np.stack([left, right], 1), 16000, format="WAV")
    clip = decode_audio(buf.getvalue())
    assert np.max(np.abs(clip.as_float32())) == pytest.approx(0.25, abs=0.01)


def test_pyav_fallback_reads_what_libsndfile_cannot(reference):
    audio, sr, _ = reference
    m4a = encode(audio, sr, rate=sr, fmt="m4a")
    with pytest.raises(Exception):
        SoundfileBackend().open(m4a)
    assert decode_audio(m4a).source_format.endswith("aac")


@pytest.mark.parametrize("fmt", ["flac", "wav", "mp3"])
def test_truncated_file_is_an_error_not_a_shorter_clip(reference, fmt):
    audio, sr, _ = reference
    data = encode(audio, sr, rate=sr, fmt=fmt)
    for backends in [(SoundfileBackend(), PyAVBackend()), (PyAVBackend(),)]:
        with pytest.raises(AudioDecodeError) as err:
            decode_audio(data[: len(data) * 2 // 5], backends=backends)
        assert err.value.reason  # names what is wrong
    with pytest.raises(AudioDecodeError, match="truncated"):
        decode_audio(encode(audio, sr, rate=sr, fmt="wav")[: len(data) // 2])


@pytest.mark.parametrize("data,match", [
    (b"", "empty input"),
    (os.urandom(4096), "undecodable|Invalid data"),
    (b"RIFF\x00\x00\x00\x00WAVEfmt ", "undecodable|malformed|Invalid"),
])
def test_garbage_is_an_error_with_a_reason(data, match):
    with pytest.raises(AudioDecodeError, match=match):
        decode_audio(data)


def test_header_only_has_no_samples():
    buf = io.BytesIO()
    sf.write(buf, np.zeros(0, dtype=np.int16), 16000, format="WAV")
    with pytest.raises(AudioDecodeError, match="no audio samples"):
        decode_audio(buf.getvalue())


def test_absurd_sample_rate_is_refused():
    buf = io.BytesIO()
    sf.write(buf, np.zeros(1000, dtype=np.int16), 16000, format="WAV")
    data = bytearray(buf.getvalue())
    data[24:28] = (2_000_000).to_bytes(4, "little")  # the fmt chunk's sample rate
    with pytest.raises(AudioDecodeError, match="implausible sample rate|undecodable"):
        decode_audio(bytes(data))


def test_silence_measures_minus_infinity_peak():
    clip = decode_audio(encode_flac(np.zeros(16000, dtype=np.int16)))
    assert clip.peak_dbfs == -np.inf and clip.duration_s == pytest.approx(1.0)


@pytest.mark.parametrize("fmt", ["FLAC", "WAV"])
def test_16_bit_mono_at_16k_is_passed_on_exactly(fmt):
    """Full scale included: no float round trip shaves the loudest samples; the levels are
    those of the samples themselves, and a sink gets the same samples block by block."""
    pcm = (np.random.default_rng(0).standard_normal(16000 * 12) * 3000).astype(np.int16)
    pcm[:4] = [-32768, 32767, -20000, 20000]
    buf = io.BytesIO()
    sf.write(buf, pcm, 16000, format=fmt, subtype="PCM_16")
    clip = decode_audio(buf.getvalue())
    assert np.array_equal(clip.pcm, pcm)
    x = pcm.astype(np.float64) / 32768.0
    assert clip.peak_dbfs == pytest.approx(0.0)
    assert clip.rms_dbfs == pytest.approx(20 * np.log10(np.sqrt(np.mean(x * x))), abs=1e-4)

    class Blocks:
        def __init__(self):
            self.parts = []

        def write(self, block):
            self.parts.append(block.copy())

        def clear(self):
            self.parts = []

    sink = Blocks()
    decode_audio(buf.getvalue(), into=sink)
    assert len(sink.parts) == 2 and np.array_equal(np.concatenate(sink.parts), pcm)  # 10 s blocks


def test_a_failing_sink_fails_the_decode_as_itself_not_as_corrupt_audio(reference):
    from audiocurate.audio import SinkError

    class FullDisk:
        def write(self, pcm):
            raise OSError(28, "No space left on device")

        def clear(self):
            pass

    audio, sr, _ = reference
    with pytest.raises(SinkError, match="No space left") as caught:
        decode_audio(encode(audio, sr, rate=48000, fmt="flac"), into=FullDisk())
    assert not isinstance(caught.value, AudioDecodeError) and isinstance(caught.value.__cause__, OSError)
