"""Precision and recall of duplicate pairs on a dev set built here (`make`-free: espeak-ng,
ffmpeg), for the landmark/MinHash fingerprint (`audiocurate.corpus.fingerprint`) and, when
`fpcalc` is installed, Chromaprint.

Each sentence is spoken once by a base voice; its copies under other ids are the positives:
the same decoded audio as FLAC, MP3 at 64 kbit/s, -4 dB with the first 60 ms cut, +6 dB with
the last 100 ms cut, MP3 64k at -6 dB with 100 ms cut at both ends, and trims off the
fingerprint's 10 ms frame grid (43, 71, 97 ms). The negatives that matter are
the same sentence read by other voices (espeak-ng voices, speeds, pitches): never one recording.

    .venv/bin/python benchmarks/dedup_dev.py [--sentences 12] [--threshold 0.2]
"""

from __future__ import annotations

import argparse
import io
import itertools
import shutil
import subprocess
import tempfile
import time

import numpy as np
import soundfile as sf

from audiocurate.audio import decode_audio
from audiocurate.corpus.dedup import pairs_in_memory
from audiocurate.corpus.fingerprint import fingerprint, similarity

SENTENCES = [
    "The mitochondria produce most of the chemical energy a cell needs.",
    "Rivers carve valleys slowly over many thousands of years.",
    "A prime number has exactly two distinct divisors.",
    "Photosynthesis turns light, water and carbon dioxide into sugar.",
    "The French revolution began in seventeen eighty nine.",
    "Sound travels faster in water than it does in air.",
    "Every triangle's angles add up to one hundred and eighty degrees.",
    "Volcanoes form where molten rock reaches the surface of the earth.",
    "The heart pumps blood through a closed system of vessels.",
    "Glaciers store about two thirds of the fresh water on our planet.",
    "Newton described gravity as a force between any two masses.",
    "The printing press made books cheap enough for ordinary readers.",
    "Bees communicate the direction of flowers by dancing.",
    "Ice floats because it is less dense than liquid water.",
    "An atom's nucleus holds protons and neutrons.",
    "The moon's gravity raises the tides twice a day.",
]
OTHER_READERS = [["-v", "en-gb"], ["-v", "en-us", "-s", "140"], ["-v", "en-us", "-p", "70"],
                 ["-v", "en-us+f3"], ["-v", "en-gb-x-rp", "-s", "190"]]


def espeak(text: str, args: list[str]) -> np.ndarray:
    wav = subprocess.run(["espeak-ng", *args, "--stdout", text], check=True, capture_output=True).stdout
    audio, sr = sf.read(io.BytesIO(wav), dtype="float32")
    pcm = decode_audio(_wav(audio, sr)).pcm if sr != 16000 else (audio * 32767).astype(np.int16)
    return pcm


def _wav(audio: np.ndarray, sr: int, fmt: str = "WAV") -> bytes:
    buf = io.BytesIO()
    sf.write(buf, audio, sr, format=fmt)
    return buf.getvalue()


def mp3_64k(pcm: np.ndarray) -> np.ndarray:
    """Through ffmpeg's MP3 encoder at 64 kbit/s and decoded back to 16 kHz (audiocurate's decoder)."""
    with tempfile.TemporaryDirectory() as d:
        src = f"{d}/in.wav"
        sf.write(src, pcm, 16000, subtype="PCM_16")
        subprocess.run(["ffmpeg", "-loglevel", "error", "-i", src, "-b:a", "64k", f"{d}/out.mp3"], check=True)
        return decode_audio(open(f"{d}/out.mp3", "rb").read()).pcm


def gain(pcm: np.ndarray, db: float) -> np.ndarray:
    return np.clip(pcm.astype(np.float32) * 10 ** (db / 20), -32768, 32767).astype(np.int16)


def cut(pcm: np.ndarray, head_ms: int = 0, tail_ms: int = 0) -> np.ndarray:
    return pcm[head_ms * 16: len(pcm) - tail_ms * 16]


def flac_roundtrip(pcm: np.ndarray) -> np.ndarray:
    return decode_audio(_wav(pcm.astype(np.float32) / 32768, 16000, "FLAC")).pcm


COPIES = {
    "flac": flac_roundtrip,
    "mp3_64k": mp3_64k,
    "-4dB_head60ms": lambda p: cut(gain(p, -4), head_ms=60),
    "+6dB_tail100ms": lambda p: cut(gain(p, 6), tail_ms=100),
    "mp3_64k_-6dB_both100ms": lambda p: mp3_64k(cut(gain(p, -6), 100, 100)),
    # trims off any frame grid: 43 and 71 ms are no multiple of the fingerprint's 10 ms hop
    "+3dB_head43ms_tail71ms": lambda p: cut(gain(p, 3), 43, 71),
    "mp3_64k_head97ms": lambda p: mp3_64k(cut(p, 97)),
}


def build(n: int) -> tuple[list[str], list[np.ndarray], dict[str, int]]:
    """(ids, pcm, recording of each id): copies share their original's recording."""
    ids, pcms, recording = [], [], {}
    for s, text in enumerate(SENTENCES[:n]):
        base = espeak(text, ["-v", "en-us"])
        for name, make in {"orig": lambda p: p, **COPIES}.items():
            ids.append(f"s{s}-{name}")
            pcms.append(make(base))
            recording[ids[-1]] = s
        for r, args in enumerate(OTHER_READERS):
            ids.append(f"s{s}-reader{r}")
            pcms.append(espeak(text, args))
            recording[ids[-1]] = 1000 * (s + 1) + r
    return ids, pcms, recording


def chromaprint_similarity(a: list[int], b: list[int]) -> float:
    """Best over offsets of +-8 items of 1 - bit error rate on the overlap, AcoustID's way."""
    a_, b_ = np.array(a, np.uint32), np.array(b, np.uint32)
    best = 0.0
    for off in range(-8, 9):
        x, y = (a_[off:], b_) if off >= 0 else (a_, b_[-off:])
        n = min(len(x), len(y))
        if n < 8:
            continue
        bits = np.unpackbits((x[:n] ^ y[:n]).view(np.uint8)).sum() / (32 * n)
        best = max(best, 1 - bits)
    return best


def fpcalc_raw(pcm: np.ndarray) -> list[int]:
    with tempfile.TemporaryDirectory() as d:
        sf.write(f"{d}/a.wav", pcm, 16000, subtype="PCM_16")
        # exit 3 with a partial (or no) print on some short clips: what was printed is the fingerprint
        out = subprocess.run(["fpcalc", "-raw", "-plain", f"{d}/a.wav"], capture_output=True, text=True)
        return [int(x) for x in out.stdout.strip().split(",") if x.strip().isdigit()]


def score(ids: list[str], recording: dict[str, int], found: set[tuple[str, str]]) -> dict[str, float]:
    truth = {(a, b) for a, b in itertools.combinations(sorted(ids), 2) if recording[a] == recording[b]}
    tp = len(truth & found)
    readers_grouped = sum(1 for a, b in found if "reader" in a or "reader" in b)
    return {"true_pairs": len(truth), "found": len(found), "precision": tp / len(found) if found else 1.0,
            "recall": tp / len(truth) if truth else 1.0, "pairs_with_another_reader": readers_grouped}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sentences", type=int, default=12)
    ap.add_argument("--threshold", type=float, default=None, help="default: dedup's own (DedupConfig)")
    args = ap.parse_args()
    from audiocurate.config import DedupConfig

    threshold = args.threshold if args.threshold is not None else DedupConfig().min_similarity
    t0 = time.time()
    ids, pcms, recording = build(args.sentences)
    print(f"dev set: {len(ids)} clips, {args.sentences} sentences x (1 + {len(COPIES)} copies + "
          f"{len(OTHER_READERS)} other readers), built in {time.time() - t0:.1f} s")
    t0 = time.time()
    fps = [fingerprint(p) for p in pcms]
    fp_s = time.time() - t0
    audio_s = sum(len(p) for p in pcms) / 16000
    pos = [similarity(fps[i], fps[j]) for i, j in itertools.combinations(range(len(ids)), 2)
           if recording[ids[i]] == recording[ids[j]]]
    neg_same_text = [similarity(fps[i], fps[j]) for i, j in itertools.combinations(range(len(ids)), 2)
                     if recording[ids[i]] != recording[ids[j]] and ids[i].split("-")[0] == ids[j].split("-")[0]]
    print(f"landmark/minhash: {fp_s / audio_s * 1000:.1f} ms of CPU per s of audio; similarity of true pairs "
          f"min {min(pos):.2f} median {np.median(pos):.2f}; same sentence, other reader: max {max(neg_same_text):.2f} "
          f"median {np.median(neg_same_text):.2f}")
    found = pairs_in_memory(ids, fps, threshold)
    print(f"  grouped at min_similarity {threshold}:", score(ids, recording, found))
    if shutil.which("fpcalc"):
        t0 = time.time()
        raws = [fpcalc_raw(p) for p in pcms]
        cp_s = time.time() - t0
        sims = {(ids[i], ids[j]): chromaprint_similarity(raws[i], raws[j])
                for i, j in itertools.combinations(range(len(ids)), 2)}
        print(f"  items per clip: median {np.median([len(r) for r in raws]):.0f} "
              f"({np.median([len(p) for p in pcms]) / 16000:.1f} s of audio)")
        pos = [v for (a, b), v in sims.items() if recording[a] == recording[b]]
        neg = [v for (a, b), v in sims.items() if recording[a] != recording[b] and a.split("-")[0] == b.split("-")[0]]
        print(f"chromaprint (fpcalc, incl. process start): {cp_s / audio_s * 1000:.1f} ms per s of audio; "
              f"true pairs min {min(pos):.2f} median {np.median(pos):.2f}; other reader max {max(neg):.2f} "
              f"median {np.median(neg):.2f}")
        for cut_at in (0.6, 0.7, 0.8):
            found = {tuple(sorted(k)) for k, v in sims.items() if v >= cut_at}
            print(f"  pairs at bit agreement >= {cut_at}:", score(ids, recording, found))
    else:
        print("chromaprint: fpcalc not installed (apt-get install libchromaprint-tools)")


if __name__ == "__main__":
    main()
