"""End-to-end throughput against faster-whisper alone, plus the quality figures of the same run.

    python benchmarks/throughput.py [--per-class 120] [--skip-baseline]

Clips: the judge dev set of `corpora.py` (240 short espeak-ng clips, Common Voice layout).
1. Baseline: faster-whisper alone in this one plain process: the same embedded model, beam,
   compute type and thread count as the pipeline's ASR actor; decode + transcribe, no Ray, no
   judge, no writes.
2. Pipeline: `audiocurate.pipeline.run` on the same Parquet into a fresh output, timed from
   before Ray starts until the report is written (Ray start-up included).
Both in audio seconds per wall second; then WER of the pipeline's transcripts (basic and
Whisper normalization, per voice) and the judge's ROC AUC / precision / recall from the
pipeline's own output (on the held-out `eval` half the calibration was not fitted on, and on all).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent))
import corpora  # noqa: E402

from audiocurate.audio import decode_audio  # noqa: E402
from audiocurate.config import PipelineConfig  # noqa: E402
from audiocurate.filters import corpus_wer  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def baseline(path: Path, config: PipelineConfig) -> dict:
    from faster_whisper import WhisperModel

    from audiocurate.models import resolve_model

    asr = config.asr
    t = pq.read_table(path, columns=["audio_bytes"])
    model = WhisperModel(resolve_model(asr.model), device="cpu", compute_type="int8", cpu_threads=asr.threads)
    t0 = time.perf_counter()
    audio_s = 0.0
    for blob in t["audio_bytes"].to_pylist():
        clip = decode_audio(blob)
        audio_s += clip.duration_s
        segments, _ = model.transcribe(clip.as_float32(), language=asr.language, beam_size=asr.beam_size)
        list(segments)
    wall = time.perf_counter() - t0
    return {"audio_s": audio_s, "wall_s": wall, "audio_s_per_s": audio_s / wall, "clips": t.num_rows}


def pipeline(path: Path, config: PipelineConfig) -> tuple[dict, Path]:
    import ray

    from audiocurate.pipeline import run

    out = Path(tempfile.mkdtemp(prefix="audiocurate-bench-"))
    if ray.is_initialized():
        ray.shutdown()
    t0 = time.perf_counter()
    report = run(config, str(path), str(out / "out"), echo=lambda s: None)
    wall = time.perf_counter() - t0
    ray.shutdown()
    audio_s = report["audio_hours"]["total"] * 3600
    return {"audio_s": audio_s, "wall_s": wall, "audio_s_per_s": audio_s / wall,
            "ray_start_s": report["attempts"][-1].get("ray_start_s"), "accounting": report["accounting"],
            "stage_busy_s": report["timing"]["stage_busy_s"]}, out / "out"


def quality(path: Path, out: Path) -> dict:
    from sklearn.metrics import roc_auc_score

    meta = {r["id"]: r for r in pq.read_table(path, columns=["id", "label", "split", "sentence", "accent"]).to_pylist()}
    rows = []
    for split in ("curated", "rejected"):
        if (out / split).exists():
            rows += pq.read_table(out / split, columns=["id", "transcript", "edu_score", "edu_score_mean"]).to_pylist()
    rows = [r for r in rows if r["transcript"] is not None]
    res: dict = {"transcribed": len(rows)}
    refs = [meta[r["id"]]["sentence"] for r in rows]
    hyps = [r["transcript"] for r in rows]
    res["wer_basic"] = corpus_wer(refs, hyps, "basic")
    res["wer_whisper_normalizer"] = corpus_wer(refs, hyps, "whisper_english")
    by_voice = collections.defaultdict(list)
    for r in rows:
        by_voice[meta[r["id"]]["accent"]].append(r)
    res["wer_basic_by_voice"] = {v: round(corpus_wer([meta[r["id"]]["sentence"] for r in rs], [r["transcript"] for r in rs]), 3)
                                 for v, rs in sorted(by_voice.items())}
    judged = [r for r in rows if r["edu_score_mean"] is not None]
    for name, subset in (("eval_half", [r for r in judged if meta[r["id"]]["split"] == "eval"]), ("all", judged)):
        y = np.array([meta[r["id"]]["label"] for r in subset])
        m = np.array([r["edu_score_mean"] for r in subset])
        keep = np.array([r["edu_score"] >= 3 for r in subset])
        tp = int(np.sum(keep & (y == 1)))
        res[f"judge_{name}"] = {"n": len(subset), "roc_auc": float(roc_auc_score(y, m)),
                                "precision": tp / max(int(keep.sum()), 1), "recall": tp / max(int((y == 1).sum()), 1)}
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--per-class", type=int, default=120)
    ap.add_argument("--skip-baseline", action="store_true")
    args = ap.parse_args()
    path = corpora.dev_clips(args.per_class)
    config = PipelineConfig.load(overrides=["ray.progress=false"])
    result: dict = {"clips": path.name, "machine": f"{os.cpu_count()} CPUs", "config": {
        "asr": {k: getattr(config.asr, k) for k in ("model", "beam_size", "threads", "compute_type")}}}
    if not args.skip_baseline:
        result["baseline_faster_whisper"] = baseline(path, config)
        print("baseline", json.dumps(result["baseline_faster_whisper"]), flush=True)
    result["pipeline"], out = pipeline(path, config)
    print("pipeline", json.dumps(result["pipeline"]), flush=True)
    if not args.skip_baseline:
        result["ratio"] = result["pipeline"]["audio_s_per_s"] / result["baseline_faster_whisper"]["audio_s_per_s"]
    result["quality"] = quality(path, out)
    shutil.rmtree(out.parent, ignore_errors=True)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "throughput.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
