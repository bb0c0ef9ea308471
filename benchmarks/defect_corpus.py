"""The dev defect corpus: clean speech, and the same kind of speech with one defect each.

Built in code from sources on this machine, so anyone can rebuild it byte for byte:

* speech: espeak-ng (eight English voices, 140-190 words a minute) reading sentences of
  `tests/data/long_text.txt`, and real recordings from the Debian package
  `pocketsphinx-testdata` (five LibriVox clips of *Sense and Sensibility*, public domain, and five
  read card names; `apt-get install pocketsphinx-testdata`, 1.8 MB);
* music: instrumental tracks of the Debian package `drascula-music` (Ogg Vorbis, 31 tracks,
  freely distributable; 36 MB) and `fb-music-high` (one Frozen-Bubble tracker module, GPL-2+,
  1.4 MB, rendered by ffmpeg's libopenmpt);
* everything else with numpy/scipy: noise of three colours, mixing at a set SNR, hard clipping,
  a synthetic exponential room response (RT60 1.5 s), a telephone channel.

Classes (`CLASSES`): clean; music only; speech over music at 0 and 5 dB; two talkers (a second
voice reading another sentence, starting 0-0.5 s later) at 0 and -3 dB; white, pink and brown
noise at 0 dB SNR; hard clipping (8x past full scale); heavy reverb; telephone band
(300-3,400 Hz through 8 kHz); wrong transcript (the reference of another clip).

Every clip is 16 kHz 16-bit FLAC. `split` is `dev` (thresholds are set there) or `heldout`
(figures are reported there); the two share no sentence, no music track and no recording.
Mixtures are scaled by whole-clip RMS. Run it to (re)build the Parquet file:

    python benchmarks/defect_corpus.py [--per-class 24]
"""

from __future__ import annotations

import argparse
import functools
import io
import os
import re
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import soundfile as sf
from scipy import signal as sps

ROOT = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("AUDIOCURATE_BENCH_CACHE", ROOT / "benchmarks" / ".cache"))
RATE = 16000
VOICES = ["en-us", "en", "en-us+f2", "en-gb-x-rp", "en+m3", "en-us+f4", "en-029", "en-gb-scotland"]
CLASSES = ["clean", "music", "speech_music_0db", "speech_music_5db", "two_talkers_0db", "two_talkers_-3db",
           "white_noise_0db", "pink_noise_0db", "brown_noise_0db", "clipped", "reverb", "telephone",
           "wrong_transcript"]
POCKETSPHINX = Path("/usr/share/pocketsphinx/test/data")
DRASCULA = Path("/usr/share/scummvm/drascula/audio")
FROZEN_BUBBLE = Path("/usr/share/games/frozen-bubble/snd/frozen-mainzik-2p.xm")


# ---- sources -----------------------------------------------------------------------------------
def sentences() -> list[str]:
    """Chunks of 8-16 words of the test suite's long text, in order."""
    words = (ROOT / "tests" / "data" / "long_text.txt").read_text().split()
    out, i, rng = [], 0, np.random.default_rng(7)
    while i < len(words):
        n = int(rng.integers(8, 17))
        out.append(" ".join(words[i:i + n]))
        i += n
    return [s for s in out if len(s.split()) >= 6]


@functools.lru_cache(maxsize=None)
def espeak(text: str, voice: str, speed: int) -> np.ndarray:
    with tempfile.TemporaryDirectory() as tmp:
        raw = os.path.join(tmp, "a.wav")
        subprocess.run(["espeak-ng", "-v", voice, "-s", str(speed), "-w", raw, text], check=True)
        audio, sr = sf.read(raw, dtype="float64")
    return _to_rate(audio, sr)


def real_recordings() -> list[tuple[np.ndarray, str, str]]:
    """(samples, transcript, id) of pocketsphinx-testdata's ten recordings; [] when not installed."""
    out = []
    for folder, listing in (("librivox", "transcription"), ("cards", "cards.transcription")):
        path = POCKETSPHINX / folder / listing
        if not path.exists():
            return []
        for line in path.read_text().splitlines():
            m = re.match(r"<s>(.*)</s>\s*\((.+)\)", line.strip())
            if m:
                audio, sr = sf.read(POCKETSPHINX / folder / f"{m.group(2)}.wav", dtype="float64")
                out.append((_to_rate(audio, sr), " ".join(m.group(1).split()), f"pocketsphinx/{folder}/{m.group(2)}"))
    return out


def music_tracks() -> list[Path]:
    tracks = sorted(DRASCULA.glob("track*.ogg"), key=lambda p: int(re.sub(r"\D", "", p.stem)))
    if FROZEN_BUBBLE.exists():
        tracks.insert(0, FROZEN_BUBBLE)
    if not tracks:
        raise SystemExit("no music: apt-get install drascula-music fb-music-high")
    return tracks


@functools.lru_cache(maxsize=4)
def _track(path: Path) -> np.ndarray:
    out = subprocess.run(["ffmpeg", "-loglevel", "error", "-i", str(path), "-t", "240", "-ac", "1", "-ar", str(RATE),
                          "-f", "f32le", "-"], check=True, capture_output=True).stdout
    return np.frombuffer(out, np.float32).astype(np.float64)


def music_excerpt(tracks: list[Path], n: int, rng: np.random.Generator) -> np.ndarray:
    """`n` samples of music from a random track, from a random place where it is not quiet."""
    for _ in range(50):
        audio = _track(tracks[int(rng.integers(len(tracks)))])
        if len(audio) < n + RATE:
            continue
        start = int(rng.integers(0, len(audio) - n))
        piece = audio[start:start + n]
        if _rms(piece) > 0.01:
            return piece
    raise RuntimeError("no loud enough music excerpt found")


def _to_rate(audio: np.ndarray, sr: int) -> np.ndarray:
    if audio.ndim > 1:
        audio = audio.mean(axis=1)
    if sr != RATE:
        g = np.gcd(sr, RATE)
        audio = sps.resample_poly(audio, RATE // g, sr // g)
    return audio


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(x ** 2))) if len(x) else 0.0


# ---- defects -----------------------------------------------------------------------------------
def mix(speech: np.ndarray, other: np.ndarray, snr_db: float) -> np.ndarray:
    """`other` scaled so that speech RMS / other RMS is `snr_db`, added to `speech`."""
    other = other[:len(speech)]
    return speech + other * (_rms(speech) / max(_rms(other), 1e-9)) / 10 ** (snr_db / 20)


def coloured_noise(n: int, colour: str, rng: np.random.Generator) -> np.ndarray:
    """White (flat), pink (1/f power) or brown (1/f^2 power) Gaussian noise."""
    white = rng.standard_normal(n)
    if colour == "white":
        return white
    spectrum = np.fft.rfft(white)
    f = np.fft.rfftfreq(n, 1 / RATE)
    f[0] = f[1]
    spectrum /= np.sqrt(f) if colour == "pink" else f
    return np.fft.irfft(spectrum, n)


def reverberate(x: np.ndarray, rng: np.random.Generator, rt60_s: float = 1.5) -> np.ndarray:
    """A synthetic diffuse room: a direct path, then exponentially decaying Gaussian noise that
    falls by 60 dB in `rt60_s`, 2 s long."""
    t = np.arange(int(2.0 * RATE)) / RATE
    ir = rng.standard_normal(len(t)) * np.exp(-6.908 * t / rt60_s) * 0.3
    ir[0] = 1.0
    return sps.fftconvolve(x, ir)[:len(x) + int(0.5 * RATE)]


def telephone(x: np.ndarray) -> np.ndarray:
    """Through an 8 kHz channel with a 300-3,400 Hz band-pass, back to 16 kHz."""
    narrow = sps.resample_poly(x, 1, 2)
    sos = sps.butter(6, [300, 3400], btype="bandpass", fs=8000, output="sos")
    return sps.resample_poly(sps.sosfiltfilt(sos, narrow), 2, 1)


def flac(x: np.ndarray) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, np.clip(x, -1, 1).astype(np.float32), RATE, format="FLAC", subtype="PCM_16")
    return buf.getvalue()


# ---- the corpus --------------------------------------------------------------------------------
def build(per_class: int = 24, seed: int = 0) -> list[dict]:
    """Rows of every class, half `dev`, half `heldout`."""
    texts = sentences()
    text_pool = {"dev": texts[0::2], "heldout": texts[1::2]}
    real = real_recordings()
    real_pool = {"dev": real[0::2], "heldout": real[1::2]}
    tracks = music_tracks()
    track_pool = {"dev": tracks[0::2], "heldout": tracks[1::2]}
    rows = []
    for c, name in enumerate(CLASSES):
        for i in range(per_class):
            split = "dev" if i % 2 == 0 else "heldout"
            rng = np.random.default_rng([seed, c, i])

            def utterance(exclude: str = "") -> tuple[np.ndarray, str, str]:
                # one clip in five is a real recording, where there are any
                if real_pool[split] and rng.random() < 0.2:
                    audio, text, rid = real_pool[split][int(rng.integers(len(real_pool[split])))]
                    return audio, text, rid
                choices = [t for t in text_pool[split] if t != exclude]
                text = choices[int(rng.integers(len(choices)))]
                voice = VOICES[int(rng.integers(len(VOICES)))]
                speed = int(rng.integers(140, 191))
                return espeak(text, voice, speed), text, f"espeak/{voice}/{speed}"

            speech, text, source = utterance()
            if name == "clean":
                audio = speech
            elif name == "music":
                audio, text, source = music_excerpt(track_pool[split], int(rng.uniform(3, 8) * RATE), rng), "", "music"
            elif name.startswith("speech_music"):
                snr = float(name.split("_")[-1][:-2])
                audio = mix(speech, music_excerpt(track_pool[split], len(speech), rng), snr)
                source += "+music"
            elif name.startswith("two_talkers"):
                rel_db = float(name.split("_")[-1][:-2])
                other = speech
                while other is speech or source.split("/")[:2] == other_source.split("/")[:2]:
                    other, _, other_source = utterance(exclude=text)
                lag = int(rng.uniform(0, 0.5) * RATE)
                other = np.concatenate([np.zeros(lag), other])
                other = np.pad(other, (0, max(0, len(speech) - len(other))))[:len(speech)]
                audio = mix(speech, other, -rel_db)
                source += f"+{other_source}"
            elif name.endswith("noise_0db"):
                audio = mix(speech, coloured_noise(len(speech), name.split("_")[0], rng), 0.0)
            elif name == "clipped":
                audio = np.clip(speech / np.max(np.abs(speech)) * 8.0, -1.0, 1.0)
            elif name == "reverb":
                audio = reverberate(speech, rng)
            elif name == "telephone":
                audio = telephone(speech)
            elif name == "wrong_transcript":
                audio = speech
                others = [t for t in text_pool[split] if t != text]
                text = others[int(rng.integers(len(others)))]
            else:
                raise AssertionError(name)
            if name != "clipped":
                audio = audio / max(np.max(np.abs(audio)), 1e-9) * rng.uniform(0.25, 0.9)
            rows.append({"id": f"{name}/{i:03d}", "audio_bytes": flac(audio), "sentence": text, "defect": name,
                         "split": split, "source": source})
    return rows


def corpus_path(per_class: int = 24, seed: int = 0) -> Path:
    """The corpus as Parquet (Common Voice's layout plus `defect`, `split`, `source`), built once."""
    path = CACHE / f"defects_{per_class}_{seed}.parquet"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        table = pa.Table.from_pylist(build(per_class, seed))
        pq.write_table(table, path.with_suffix(".tmp"))
        path.with_suffix(".tmp").rename(path)
    return path


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--per-class", type=int, default=24)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    p = corpus_path(a.per_class, a.seed)
    t = pq.read_table(p, columns=["defect", "split"]).to_pandas()
    print(p)
    print(t.groupby(["defect", "split"]).size().unstack())
