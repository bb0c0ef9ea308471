"""CPU cost of decoding one 5 s clip to 16 kHz mono int16, as the decode stage does it.

    python benchmarks/decode_cost.py [--repeat 5]

Clips: the benchmarks' real recorded speech (corpora.real_speech), decoded once, resampled to
16 and 48 kHz (soxr) and cut into whole 5 s pieces, each saved as 16-bit mono FLAC. Each piece
is decoded by `audiocurate.audio.decode_audio` `--repeat` times; process CPU time per clip.
This is what a GPU node spends per clip before Whisper: Whisper's rate times it is the cores
decoding needs.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "src"))
import corpora  # noqa: E402

from audiocurate.audio import decode_audio  # noqa: E402

RESULTS = HERE / "results" / "decode_cost.json"


def pieces(rate: int, seconds: float = 5.0) -> list[bytes]:
    out = []
    for row in corpora.real_speech():
        clip = decode_audio(row["audio_bytes"])  # 16 kHz mono int16
        x = clip.pcm.astype(np.float32) / 32768.0
        if rate != 16000:
            x = soxr.resample(x, 16000, rate)
        step = int(rate * seconds)
        for lo in range(0, len(x) - step + 1, step):
            buf = io.BytesIO()
            sf.write(buf, x[lo:lo + step], rate, format="FLAC", subtype="PCM_16")
            out.append(buf.getvalue())
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    result = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"}
    for rate in (16000, 48000):
        clips = pieces(rate)
        decode_audio(clips[0])
        t0 = time.process_time()
        for _ in range(args.repeat):
            for c in clips:
                decode_audio(c)
        ms = 1000 * (time.process_time() - t0) / (args.repeat * len(clips))
        result[f"{rate // 1000}k"] = {"clips": len(clips), "cpu_ms_per_5s_clip": round(ms, 3)}
        print(rate, result[f"{rate // 1000}k"], flush=True)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
