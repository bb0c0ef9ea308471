"""The two ASR backends on the same weights: faster-whisper (CTranslate2) and transformers.

    python benchmarks/asr_backends.py [--espeak N]

tiny.en's weights are converted from the embedded CTranslate2 model to a Hugging Face
checkpoint (`tests/ct2_whisper.py`), so both backends run the same network on CPU, each with
the pipeline's default decoding (beam 5) and batch size, and its own preprocessing: faster-whisper pads the
log-mel features with zeros, transformers (like OpenAI Whisper) pads the audio. Clips: the
real recordings of `real_speech_wer.py` and the first N espeak-ng clips of the judge's dev set.
Reported: corpus WER of each, share of identical transcripts, and how far apart the
confidence signals the filters use are.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "2")
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))
import corpora  # noqa: E402
import numpy as np  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
from ct2_whisper import convert_to_hf  # noqa: E402

from audiocurate.asr import make_transcriber  # noqa: E402
from audiocurate.audio import decode_audio  # noqa: E402
from audiocurate.config import FasterWhisperConfig, TransformersAsrConfig  # noqa: E402
from audiocurate.filters import corpus_wer, normalize_text  # noqa: E402
from audiocurate.models import resolve_model  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--espeak", type=int, default=60, help="espeak-ng clips from the judge's dev set")
    args = ap.parse_args()
    clips = [{"id": r["id"], "source": "real:" + r["source"], "sentence": r["sentence"], "audio_bytes": r["audio_bytes"]}
             for r in corpora.real_speech()]
    dev = pq.read_table(corpora.dev_clips()).slice(0, args.espeak).to_pylist()
    clips += [{"id": r["id"], "source": "espeak:" + r["accent"], "sentence": r["sentence"],
               "audio_bytes": r["audio_bytes"]} for r in dev]
    pcm = [decode_audio(c["audio_bytes"]).pcm for c in clips]

    with tempfile.TemporaryDirectory() as tmp:
        hf_dir = convert_to_hf(resolve_model("embedded:whisper-tiny.en"), tmp)
        backends = {"faster_whisper": FasterWhisperConfig(compute_type="float32", threads=2),
                    "transformers": TransformersAsrConfig(model=hf_dir, device="cpu",
                                              compute_type="float32")}
        out: dict[str, list] = {}
        seconds: dict[str, float] = {}
        for name, cfg in backends.items():
            asr = make_transcriber(cfg)
            t0 = time.perf_counter()
            step = cfg.resources.batch_size  # batches as the pipeline's stage gets them
            out[name] = [r for i in range(0, len(pcm), step) for r in asr.transcribe_batch(pcm[i:i + step])]
            seconds[name] = time.perf_counter() - t0
            print(name, f"{seconds[name]:.1f} s", flush=True)

    fw, hf = out["faster_whisper"], out["transformers"]
    refs = [c["sentence"] for c in clips]

    def subset(pred):
        return [i for i, c in enumerate(clips) if pred(c)]

    groups = {"all": subset(lambda c: True), "real": subset(lambda c: c["source"].startswith("real")),
              "espeak": subset(lambda c: c["source"].startswith("espeak"))}
    same = [normalize_text(a.text, "whisper_english") == normalize_text(b.text, "whisper_english") for a, b in zip(fw, hf)]
    both = [i for i in range(len(clips)) if np.isfinite(fw[i].avg_logprob) and np.isfinite(hf[i].avg_logprob)]
    audio_s = sum(len(p) for p in pcm) / 16000
    result = {
        "machine": "2-core CPU, float32, beam 5, 2 threads, batches of asr.resources.batch_size",
        "clips": len(clips), "audio_minutes": audio_s / 60,
        "wer": {g: {name: corpus_wer([refs[i] for i in idx], [out[name][i].text for i in idx], "whisper_english")
                    for name in out} for g, idx in groups.items()},
        "identical_transcripts": {g: float(np.mean([same[i] for i in idx])) for g, idx in groups.items()},
        "median_abs_diff": {
            "avg_logprob": float(np.median([abs(fw[i].avg_logprob - hf[i].avg_logprob) for i in both])),
            "no_speech_prob": float(np.median([abs(a.no_speech_prob - b.no_speech_prob) for a, b in zip(fw, hf)
                                               if np.isfinite(a.no_speech_prob) and np.isfinite(b.no_speech_prob)])),
        },
        "audio_s_per_s": {name: audio_s / s for name, s in seconds.items()},
        "rows": [{"id": c["id"], "source": c["source"], "reference": c["sentence"],
                  "faster_whisper": a.text, "transformers": b.text}
                 for c, a, b in zip(clips, fw, hf)],
    }
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results/asr_backends.json").write_text(json.dumps(result, indent=2))
    print(json.dumps({k: v for k, v in result.items() if k != "rows"}, indent=2))


if __name__ == "__main__":
    main()
