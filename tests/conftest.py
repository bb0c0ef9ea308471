"""Shared fixtures: real speech from espeak-ng, a real local Ray, the shipped demo dataset."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")

HERE = Path(__file__).resolve().parent


def have(cmd: str) -> bool:
    return shutil.which(cmd) is not None


def speak(text: str, *, voice: str = "en-us", rate: int = 16000, fmt: str = "flac", channels: int = 1,
          speed: int = 160, subtype: str | None = None) -> bytes:
    """Real speech as encoded bytes: espeak-ng, then sox/ffmpeg to the wanted rate and codec."""
    if not have("espeak-ng"):
        pytest.skip("espeak-ng is not installed (make sysdeps)")
    with tempfile.TemporaryDirectory() as tmp:
        raw = os.path.join(tmp, "raw.wav")
        subprocess.run(["espeak-ng", "-v", voice, "-s", str(speed), "-w", raw, text], check=True)
        audio, sr = sf.read(raw, dtype="float32")
        return encode(audio * 0.9, sr, rate=rate, fmt=fmt, channels=channels, subtype=subtype)


def encode(audio: np.ndarray, sr: int, *, rate: int, fmt: str, channels: int = 1, subtype: str | None = None) -> bytes:
    """Resample with sox, then encode with soundfile (wav/flac/ogg/mp3) or ffmpeg (others)."""
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = os.path.join(tmp, "src.wav"), os.path.join(tmp, "dst.wav")
        sf.write(src, audio, sr, subtype="FLOAT")
        subprocess.run(["sox", "-V1", src, "-r", str(rate), "-c", str(channels), "-b", "32", "-e", "floating-point",
                        dst, "rate", "-v"], check=True)
        data, _ = sf.read(dst, dtype="float32", always_2d=True)
        if fmt in ("wav", "flac", "ogg", "mp3"):
            buf = io.BytesIO()
            kwargs = {"format": {"wav": "WAV", "flac": "FLAC", "ogg": "OGG", "mp3": "MP3"}[fmt]}
            kwargs["subtype"] = subtype or {"wav": "PCM_16", "flac": "PCM_16", "ogg": "VORBIS", "mp3": "MPEG_LAYER_III"}[fmt]
            sf.write(buf, data, rate, **kwargs)
            return buf.getvalue()
        out = os.path.join(tmp, f"out.{fmt}")
        codec = {"opus": ["-c:a", "libopus"], "m4a": ["-c:a", "aac"], "webm": ["-c:a", "libopus"]}[fmt]
        subprocess.run(["ffmpeg", "-loglevel", "error", "-y", "-i", dst, *codec, out], check=True)
        return Path(out).read_bytes()


@pytest.fixture(scope="session")
def demo_parquet() -> str:
    from audiocurate.cli import demo_dataset_path

    return demo_dataset_path()


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray for the session (2 CPUs, like CI)."""
    import ray

    from audiocurate.config import RayConfig
    from audiocurate.runtime import init_ray

    if ray.is_initialized():
        ray.shutdown()
    init_ray(RayConfig(num_cpus=2, progress=False))
    yield ray
    ray.shutdown()


@pytest.fixture
def tiny_config():
    """Default pipeline configuration, quiet."""
    from audiocurate.config import PipelineConfig

    return PipelineConfig.load(overrides=["ray.progress=false", "ray.num_cpus=2"])


@pytest.fixture(scope="session")
def tiny_whisper_dir(tmp_path_factory):
    """An English-only Whisper with random weights and tiny.en's real tokenizer (tiny_whisper.py)."""
    import tiny_whisper

    return tiny_whisper.build_english(str(tmp_path_factory.mktemp("tiny-whisper")))
