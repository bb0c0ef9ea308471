"""Long recordings are transcribed whole, window by window, as well as short clips are."""

from __future__ import annotations

import io
import os
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import soundfile as sf

from audiocurate.asr.windows import plan_windows
from audiocurate.filters import corpus_wer, word_error_rate
from conftest import QUICK_MODELS

TEXT = (Path(__file__).parent / "data" / "long_text.txt").read_text()
SENTENCES = [s.strip() for s in TEXT.splitlines() if s.strip()]
VOICE, SPEED = "en-us", 110


def _espeak(text: str, path: str) -> None:
    subprocess.run(["espeak-ng", "-v", VOICE, "-s", str(SPEED), "-w", path, text], check=True)


@pytest.fixture(scope="module")
def long_clip() -> bytes:
    """The whole text as one recording (>= 10 minutes), 16 kHz FLAC."""
    with tempfile.TemporaryDirectory() as tmp:
        wav = os.path.join(tmp, "long.wav")
        _espeak(TEXT, wav)
        audio, sr = sf.read(wav, dtype="int16")
        buf = io.BytesIO()
        sf.write(buf, audio, sr, format="FLAC")
    return buf.getvalue()


def test_windows_cover_the_clip_and_cut_in_pauses():
    sr = 16000
    rng = np.random.default_rng(0)
    speech = (rng.standard_normal(sr * 700) * 3000).astype(np.int16)
    for start in range(0, len(speech), sr * 7):  # a 0.5 s pause every 7 s
        speech[start:start + sr // 2] = 0
    wins = plan_windows(len(speech), sr, 300, speech)
    assert wins[0][0] == 0 and wins[-1][1] == len(speech)
    assert all(a[1] == b[0] for a, b in zip(wins, wins[1:]))
    assert all(0 < e - s <= 300 * sr for s, e in wins)
    for _, end in wins[:-1]:
        assert np.all(speech[end - 800:end + 800] == 0)  # cut inside a pause
    assert plan_windows(sr * 10, sr, 300) == [(0, sr * 10)]


@pytest.mark.slow
def test_ten_minute_clip_is_transcribed_as_well_as_short_clips(tmp_path, long_clip, ray_local):
    from audiocurate.config import PipelineConfig
    from audiocurate.pipeline import run

    duration = sf.info(io.BytesIO(long_clip)).duration
    assert duration >= 600, duration
    picks = SENTENCES[::2]  # short clips of the same speech: every other sentence
    short = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, s in enumerate(picks):
            path = os.path.join(tmp, f"{i}.wav")
            _espeak(s, path)
            short.append(Path(path).read_bytes())
    rows = [{"id": "long", "audio_bytes": long_clip, "sentence": TEXT}]
    rows += [{"id": f"short{i:02d}", "audio_bytes": b, "sentence": s} for i, (b, s) in enumerate(zip(short, picks))]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "in.parquet")
    config = PipelineConfig.load(overrides=["ray.progress=false", "judge.long_text=truncate", *QUICK_MODELS])
    report = run(config, str(tmp_path / "in.parquet"), str(tmp_path / "out"), echo=lambda s: None)
    assert report["accounting"]["ok"] and report["accounting"]["errors"] == 0
    out = [r for s in ("curated", "rejected") if (tmp_path / "out" / s).exists()
           for r in pq.read_table(tmp_path / "out" / s).to_pylist()]
    by_id = {r["id"]: r for r in out}
    long_row = by_id["long"]
    assert long_row["duration_s"] == pytest.approx(duration, abs=0.05)
    long_wer = word_error_rate(TEXT, long_row["transcript"], "whisper_english")
    short_wer = corpus_wer([by_id[f"short{i:02d}"]["sentence"] for i in range(len(picks))],
                           [by_id[f"short{i:02d}"]["transcript"] for i in range(len(picks))], "whisper_english")
    # The ending must be there: a transcript that stops early inside a window fails this.
    assert "shall not perish from the earth" in long_row["transcript"].lower()
    assert long_wer <= 1.2 * short_wer + 0.02, (long_wer, short_wer)
    assert len(long_row["transcript"].split()) > 0.85 * len(TEXT.split())
