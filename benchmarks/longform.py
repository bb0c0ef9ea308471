"""Long recordings into segments: where the cuts fall, how much speech they cover, what the
segments' transcripts are worth, how fast, how much memory; and DNSMOS on clean vs noisy speech.

    python benchmarks/longform.py [--recordings 8] [--hour] [--hours-from-file 1 2] [--long-only] [--set K=V]

Dev set: `--recordings` recordings of English Wikipedia sentences (benchmarks/corpora.py, in
order, never picked) read by espeak-ng, voices rotating, separated by pauses drawn uniformly
from 0.4-1.6 s (seeded), 16 kHz FLAC; where each sentence's speech lies is known (its samples
above -40 dBFS, trimmed). Both profiles run on it through `pipeline.run` (local Ray, this
machine's cores):
* `--profile longform`: cuts inside a sentence (a sentence not wholly inside one segment),
  coverage (share of sentence speech inside segments), segment lengths, WER of each
  recording's segment transcripts joined in order (curated and rejected segments alike) against
  its sentences;
* the default profile: WER of the whole-recording transcripts;
* audio-seconds per wall-second of each (Ray start and model loading included).
DNSMOS: 24 of the sentences alone, clean and with white noise at 0 dB SNR (seeded).
`--hour`: benchmarks/long_clip.py's one-hour recording (a Parquet cell) through `audiocurate
run --profile longform` in a subprocess, peak resident memory of every process sampled;
`--hours-from-file H [H ...]`: the same for H-hour recordings as a FLAC file in a folder
(benchmarks/segment_memory.py's); `--long-only`: just these, the dev set's figures kept.
Writes benchmarks/results/longform.json.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import soundfile as sf

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "src"))

from corpora import VOICES, speak, wikipedia_sentences  # noqa: E402

from audiocurate.audio import encode_flac  # noqa: E402
from audiocurate.config import PipelineConfig  # noqa: E402
from audiocurate.filters import corpus_wer  # noqa: E402
from audiocurate.filters.dnsmos import dnsmos  # noqa: E402
from audiocurate.pipeline import run  # noqa: E402

RATE = 16000


def dev_set(n: int, per: int, path: Path) -> tuple[Path, dict[str, list[tuple[float, float]]], dict[str, str]]:
    sentences = [s for s in wikipedia_sentences() if 40 <= len(s) <= 200]
    rng = np.random.default_rng(0)
    rows, spans, refs = [], {}, {}
    for r in range(n):
        voice = VOICES[r % len(VOICES)]
        parts, t, rec_spans = [np.zeros(int(0.5 * RATE), np.int16)], 0.5, []
        texts = sentences[r * per:(r + 1) * per]
        for text in texts:
            pcm, _ = sf.read(io.BytesIO(speak(text, voice, RATE)), dtype="int16")
            loud = np.flatnonzero(np.abs(pcm.astype(np.int32)) > 330)  # -40 dBFS
            pcm = pcm[loud[0]:loud[-1] + 1]
            pause = float(rng.uniform(0.4, 1.6))
            rec_spans.append((t, t + len(pcm) / RATE))
            parts += [pcm, np.zeros(int(pause * RATE), np.int16)]
            t += len(pcm) / RATE + pause
        rid = f"rec{r:02d}"
        rows.append({"id": rid, "audio_bytes": encode_flac(np.concatenate(parts)), "sentence": " ".join(texts)})
        spans[rid], refs[rid] = rec_spans, " ".join(texts)
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path, spans, refs


def all_rows(out: Path) -> list[dict]:
    rows = []
    for split in ("curated", "rejected", "errors"):
        if (out / split).exists():
            rows += [{**r, "_split": split} for r in pq.read_table(out / split).to_pylist()]
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--recordings", type=int, default=8)
    ap.add_argument("--sentences", type=int, default=14, help="per recording")
    ap.add_argument("--hour", action="store_true", help="a one-hour recording in a Parquet cell")
    ap.add_argument("--hours-from-file", type=float, nargs="+", default=[],
                    help="recordings of these many hours as FLAC files in a folder (streamed as they are decoded)")
    ap.add_argument("--long-only", action="store_true",
                    help="only the long recordings (figures not measured in a run stay in results/longform.json)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="a setting for the long runs (e.g. segment.block_mb=128); their results are kept "
                    "under keys that name the settings")
    args = ap.parse_args()
    tag = "".join(f" [{kv}]" for kv in args.set)
    saved = HERE / "results" / "longform.json"
    # Figures not measured in this run stay as they were.
    result: dict = {**(json.loads(saved.read_text()) if saved.exists() else {}), "machine": f"{os.cpu_count()} cores"}
    if not args.long_only:
        dev_set_figures(args, result)
    if args.hour:
        from long_clip import CACHE, SENTENCES, espeak, flac

        CACHE.mkdir(exist_ok=True)
        path = CACHE / "hour_60.parquet"
        if not path.exists():
            base = espeak(" ".join(SENTENCES), 48000)
            reps = int(np.ceil(60 * 60 * 48000 / len(base)))
            pq.write_table(pa.table({"id": ["hour"], "audio_bytes": [flac(np.concatenate([base] * reps), 48000)],
                                     "sentence": [""]}), path)
        result["one_hour_longform" + tag] = long_run(path, args.set)
        print(json.dumps(result["one_hour_longform" + tag]), flush=True)
    for hours in args.hours_from_file:
        from segment_memory import recording

        key = f"{hours:g}_hours_from_a_file_longform{tag}"
        result[key] = long_run(recording(hours)[1], args.set)
        print(json.dumps({key: result[key]}), flush=True)
    (HERE / "results" / "longform.json").write_text(json.dumps(result, indent=2))


def dev_set_figures(args: argparse.Namespace, result: dict) -> None:
    """The dev set through `longform` and the default profile, and DNSMOS clean vs 0 dB."""
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data, spans, refs = dev_set(args.recordings, args.sentences, tmp / "dev.parquet")
        audio_s = sum(sf.info(io.BytesIO(b)).duration for b in pq.read_table(data)["audio_bytes"].to_pylist())
        result["dev_set"] = {"recordings": args.recordings, "minutes": round(audio_s / 60, 2),
                             "sentences": sum(len(v) for v in spans.values())}
        runs = {}
        for name, profile in (("longform", "longform"), ("default", "default")):
            t0 = time.time()
            report = run(PipelineConfig.load(profile=profile, overrides=["ray.progress=false"]), str(data),
                         str(tmp / name), echo=lambda s: None)
            wall = time.time() - t0
            runs[name] = {"wall_s": round(wall, 1), "audio_s_per_s": round(audio_s / wall, 2),
                          "accounting_ok": report["accounting"]["ok"], "curated": report["accounting"]["curated"],
                          "rejected": report["accounting"]["rejected"], "drop_reasons": report["drop_reasons"]}
        result["runs"] = runs
        segs = [r for r in all_rows(tmp / "longform") if r.get("start_s") is not None and r.get("segments", 1) >= 1
                and r["id"] != r["parent_id"]]
        cuts_inside, covered, speech = 0, 0.0, 0.0
        for rid, rec_spans in spans.items():
            mine = [(r["start_s"], r["end_s"]) for r in segs if r["parent_id"] == rid]
            for a, b in rec_spans:
                speech += b - a
                covered += sum(max(0.0, min(b, e) - max(a, s)) for s, e in mine)
                if sum(1 for s, e in mine if s <= a + 0.05 and b - 0.05 <= e) != 1:
                    cuts_inside += 1
        lengths = np.array([r["end_s"] - r["start_s"] for r in segs])
        joined = {rid: " ".join(r["transcript"] or "" for r in sorted((r for r in segs if r["parent_id"] == rid),
                                                                       key=lambda r: r["start_s"])) for rid in spans}
        whole = {r["id"]: r.get("transcript") or "" for r in all_rows(tmp / "default")}
        ids = sorted(spans)
        result["segments"] = {
            "count": len(segs), "sentences_cut_inside": cuts_inside, "coverage": round(covered / speech, 4),
            "length_s_p10_p50_p90": [round(float(x), 2) for x in np.percentile(lengths, [10, 50, 90])],
            "length_hist": {"edges": [0, 2, 5, 10, 15, 20, 25, 30, 60],
                            "counts": np.histogram(lengths, bins=[0, 2, 5, 10, 15, 20, 25, 30, 60])[0].tolist()},
            "wer_joined_segments": {n: round(corpus_wer([refs[i] for i in ids], [joined[i] for i in ids], n), 4)
                                    for n in ("whisper_english", "basic")},
            "wer_whole_recordings": {n: round(corpus_wer([refs[i] for i in ids], [whole.get(i, "") for i in ids], n), 4)
                                     for n in ("whisper_english", "basic")},
        }
        print(json.dumps(result, indent=1), flush=True)
    # DNSMOS: the same sentences clean and at 0 dB SNR
    rng = np.random.default_rng(1)
    clean, noisy = [], []
    for text in [s for s in wikipedia_sentences() if 40 <= len(s) <= 200][:24]:
        pcm, _ = sf.read(io.BytesIO(speak(text, "en-us", RATE)), dtype="int16")
        x = pcm.astype(np.float64)
        n = rng.standard_normal(len(x)) * np.sqrt(np.mean(x ** 2))
        clean.append(dnsmos(pcm)[2])
        noisy.append(dnsmos(np.clip(x + n, -32768, 32767).astype(np.int16))[2])
    result["dnsmos_ovrl"] = {"clean_mean": round(float(np.mean(clean)), 3), "noisy_0db_mean": round(float(np.mean(noisy)), 3),
                             "clean_min": round(float(np.min(clean)), 3), "noisy_max": round(float(np.max(noisy)), 3),
                             "clips": len(clean)}
    print(json.dumps(result["dnsmos_ovrl"]), flush=True)


def long_run(path: Path, settings: list[str] = ()) -> dict:
    """`audiocurate run --profile longform` on one long recording in a subprocess, with the
    peak resident memory of every process sampled."""
    from procmon import run_and_measure

    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "audiocurate.cli", "run", str(path), f"{tmp}/out", "--no-progress",
               "--profile", "longform", *(a for kv in settings for a in ("--set", kv))]
        code, peaks, wall = run_and_measure(cmd, env={**os.environ, "RAY_ADDRESS": ""}, with_private=True)
        report = json.loads(Path(f"{tmp}/out/report.json").read_text())
    return {
        "exit_code": code, "wall_s": round(wall, 1), "segments": report["accounting"]["accounted"],
        "accounting_ok": report["accounting"]["ok"], "peak_rss_whole_run_mb": round(peaks.tree_peak_mb),
        "peak_rss_driver_mb": round(peaks.driver_peak_mb),
        "peak_pss_whole_run_mb": round(peaks.tree_peak_pss_mb),  # object-store pages counted once
        "processes_at_pss_peak": peaks.processes_at_pss_peak,
        "pss_by_process_name_at_peak_mb": dict(sorted(((k, round(v)) for k, v in peaks.pss_by_name_at_peak_mb.items()),
                                                      key=lambda kv: -kv[1])),
        "peak_uss_by_process_mb": dict(sorted(((k, round(v)) for k, v in peaks.by_name_peak_uss_mb.items()),
                                              key=lambda kv: -kv[1])[:6]),
        "peak_rss_by_process_mb": dict(sorted(((k, round(v)) for k, v in peaks.by_name_peak_mb.items()),
                                              key=lambda kv: -kv[1])[:6])}


if __name__ == "__main__":
    main()
