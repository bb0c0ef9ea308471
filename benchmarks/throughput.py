"""The default pipeline against the engine's best setting on the same clips and machine, with
the quality of both and where the pipeline's CPU goes.

    python benchmarks/throughput.py [--per-class 120] [--set KEY=VALUE ...] [--skip-engine] [--same-work]

Clips (held out): the 18 real recordings of `corpora.real_speech` (LibriVox, LibriSpeech,
spontaneous speech, Common Voice) and the `eval` half of the judge dev set (`corpora.dev_clips`:
espeak-ng, eight voices; the judge's calibration was fitted on the other half), in Common
Voice's layout, one Parquet file.
1. Engine: faster-whisper alone in this plain process at its best setting on this machine:
   the embedded tiny.en, int8, the pipeline's beam, `cpu_threads` = all cores; decode +
   transcribe, no Ray, no judge, no writes.
   With `--same-work`, also the pipeline's own steps (`stages_in_one_process`: decode,
   transcribe with language ID where the default runs it, judge, select, package) one after
   another in this process without Ray, every engine with all cores' threads: whether the gap
   to the engine is the extra models' work or the pipeline's running of it.
2. Pipeline: `audiocurate.pipeline.run` with the default configuration (plus `--set`
   overrides) on the same file into a fresh output, timed from before Ray starts until the
   report is written (Ray's start included). CPU seconds by role while it runs
   (`procmon.CpuByRole`): Whisper actors, judge actors, task workers, Ray's daemons, driver.
Both in audio seconds per wall second; WER of both (Whisper's English normalizer), on real
and espeak-ng speech apart; the judge's ROC AUC / precision / recall on the eval half from
the pipeline's own output. Writes benchmarks/results/throughput.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent))
import corpora  # noqa: E402
from procmon import CpuByRole  # noqa: E402

from audiocurate.audio import decode_audio  # noqa: E402
from audiocurate.config import PipelineConfig  # noqa: E402
from audiocurate.filters import corpus_wer  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def clips(per_class: int) -> Path:
    path = corpora.CACHE / f"throughput_{per_class}.parquet"
    if path.exists():
        return path
    real = [{"id": r["id"], "audio_bytes": r["audio_bytes"], "sentence": r["sentence"], "label": None,
             "split": "real", "accent": "real"} for r in corpora.real_speech()]
    dev = pq.read_table(corpora.dev_clips(per_class), columns=["id", "audio_bytes", "sentence", "label", "split", "accent"])
    dev = [r for r in dev.to_pylist() if r["split"] == "eval"]
    pq.write_table(pa.Table.from_pylist(real + dev), path)
    return path


def engine_best(path: Path, config: PipelineConfig) -> dict:
    from faster_whisper import WhisperModel

    from audiocurate.models import resolve_model

    asr = config.asr
    t = pq.read_table(path, columns=["id", "audio_bytes"])
    model = WhisperModel(resolve_model(asr.model), device="cpu", compute_type="int8", cpu_threads=os.cpu_count())
    transcripts = {}
    t0 = time.perf_counter()
    audio_s = 0.0
    for row in t.to_pylist():
        clip = decode_audio(row["audio_bytes"])
        audio_s += clip.duration_s
        segments, _ = model.transcribe(clip.as_float32(), language=asr.language, beam_size=asr.beam_size)
        transcripts[row["id"]] = " ".join(s.text.strip() for s in segments)
    wall = time.perf_counter() - t0
    setting = {"compute_type": "int8", "beam_size": asr.beam_size, "cpu_threads": os.cpu_count()}
    return {"audio_s": audio_s, "wall_s": wall, "audio_s_per_s": audio_s / wall, "clips": t.num_rows,
            "setting": setting, "transcripts": transcripts}


def stages_in_one_process(path: Path, config: PipelineConfig) -> dict:
    """The pipeline's own steps, as `plan.plan_pipeline` lays them out for this input (decode,
    transcribe with its language ID and filters, judge, select, package), called one after
    another on Arrow blocks in this plain process with every core's threads per engine: the
    pipeline's model work without Ray's parallelism or its costs."""
    import pyarrow.compute as pc

    from audiocurate import contract as C
    from audiocurate.plan import ClusterShape, plan_pipeline
    from audiocurate.sources import open_source

    cores = os.cpu_count() or 1
    config = config.model_copy(update={"asr": config.asr.model_copy(update={"threads": cores}),
                                       "judge": config.judge.model_copy(update={"threads": cores})})
    source = open_source(str(path), config.source)
    plan = plan_pipeline(config, ClusterShape(cpus=cores, gpus=0), columns=source.columns,
                         id_column=source.id_column, audio_column=source.audio_column, fetcher=source.fetcher())
    table = pq.read_table(path)
    t0 = time.perf_counter()
    blocks, audio_s = [table], 0.0
    for step in plan.stages:
        if step.how == "split_blocks":
            n = step.args["rows_per_block"]
            blocks = [b.slice(i, n) for b in blocks for i in range(0, b.num_rows, n)]
        elif step.how == "map_batches":
            fn = step.fn(**step.constructor_kwargs) if isinstance(step.fn, type) else step.fn
            blocks = [fn(b) for b in blocks]
        else:
            raise ValueError(f"step {step.name} is applied by Ray ({step.how}); this reference runs CPU steps only")
        if step.name == C.DECODE:  # as the pipeline's sink does there: rows settled at decode go no further
            audio_s = sum(pc.sum(b["duration_s"]).as_py() or 0.0 for b in blocks)
            blocks = [b.filter(pa.array(C.active_mask(b), pa.bool_())) for b in blocks]
    wall = time.perf_counter() - t0
    rows = pa.concat_tables(blocks).select(["id", "transcript"]).to_pylist()
    found = {r["id"]: r["transcript"] or "" for r in rows}
    return {"audio_s": audio_s, "wall_s": wall, "audio_s_per_s": audio_s / wall, "clips": table.num_rows,
            "steps": [s.name for s in plan.stages], "threads_per_engine": cores,
            # a clip rejected before Whisper counts as an empty transcript, as in pipeline_transcripts
            "transcripts": {i: found.get(i, "") for i in table["id"].to_pylist()}}


def pipeline(path: Path, config: PipelineConfig) -> tuple[dict, Path]:
    import ray

    from audiocurate.pipeline import run

    out = Path(tempfile.mkdtemp(prefix="audiocurate-bench-"))
    if ray.is_initialized():
        ray.shutdown()
    with CpuByRole() as cpu:
        t0 = time.perf_counter()
        report = run(config, str(path), str(out / "out"), echo=lambda s: None)
        wall = time.perf_counter() - t0
    ray.shutdown()
    audio_s = report["audio_hours"]["total"] * 3600
    attempt = report["attempts"][-1]
    return {"audio_s": audio_s, "wall_s": wall, "audio_s_per_s": audio_s / wall,
            "ray_start_s": attempt.get("ray_start_s"), "execute_s": attempt.get("execute_s"),
            "pools": attempt.get("pools"), "accounting": report["accounting"],
            "stage_busy_s": report["timing"]["stage_busy_s"], "cpu_s_by_role": cpu.seconds()}, out / "out"


def wer(meta: dict, transcripts: dict) -> dict:
    out = {}
    for name, keep in (("all", lambda s: True), ("real", lambda s: s == "real"), ("espeak", lambda s: s != "real")):
        ids = [i for i in transcripts if keep(meta[i]["split"])]
        out[name] = corpus_wer([meta[i]["sentence"] for i in ids], [transcripts[i] or "" for i in ids], "whisper_english")
    return out


def pipeline_transcripts(out: Path, meta: dict) -> dict:
    """Every transcribed row's transcript; a clip the pipeline rejected before Whisper (or
    that failed) counts as an empty transcript, so both sides are scored on the same clips."""
    found = {}
    for split in ("curated", "rejected"):
        if (out / split).exists():
            for r in pq.read_table(out / split, columns=["id", "transcript"]).to_pylist():
                found[r["id"]] = r["transcript"] or ""
    return {i: found.get(i, "") for i in meta}


def judge_quality(out: Path, meta: dict) -> dict:
    from sklearn.metrics import roc_auc_score

    rows = []
    for split in ("curated", "rejected"):
        if (out / split).exists():
            rows += pq.read_table(out / split, columns=["id", "edu_score", "edu_score_mean"]).to_pylist()
    rows = [r for r in rows if r["edu_score_mean"] is not None and meta[r["id"]]["split"] == "eval"]
    y = np.array([meta[r["id"]]["label"] for r in rows])
    m = np.array([r["edu_score_mean"] for r in rows])
    keep = np.array([r["edu_score"] >= 3 for r in rows])
    tp = int(np.sum(keep & (y == 1)))
    return {"n": len(rows), "roc_auc": float(roc_auc_score(y, m)),
            "precision": tp / max(int(keep.sum()), 1), "recall": tp / max(int((y == 1).sum()), 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--per-class", type=int, default=120)
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--skip-engine", action="store_true")
    ap.add_argument("--same-work", action="store_true",
                    help="also run the pipeline's steps one after another in this process, without Ray")
    ap.add_argument("--out", default=str(RESULTS / "throughput.json"))
    args = ap.parse_args()
    path = clips(args.per_class)
    meta = {r["id"]: r for r in pq.read_table(path, columns=["id", "sentence", "label", "split"]).to_pylist()}
    config = PipelineConfig.load(overrides=["ray.progress=false", *args.overrides])
    result: dict = {"clips": len(meta), "machine": f"{os.cpu_count()} CPUs", "overrides": args.overrides}
    if not args.skip_engine:
        engine = engine_best(path, config)
        engine["wer"] = wer(meta, engine.pop("transcripts"))
        result["engine_best"] = engine
        print("engine", json.dumps(engine), flush=True)
    if args.same_work:
        same = stages_in_one_process(path, config)
        same["wer"] = wer(meta, same.pop("transcripts"))
        result["stages_in_one_process"] = same
        print("stages in one process", json.dumps(same), flush=True)
    result["pipeline"], out = pipeline(path, config)
    result["pipeline"]["wer"] = wer(meta, pipeline_transcripts(out, meta))
    result["pipeline"]["judge_eval_half"] = judge_quality(out, meta)
    print("pipeline", json.dumps(result["pipeline"]), flush=True)
    if not args.skip_engine:
        result["ratio"] = result["pipeline"]["audio_s_per_s"] / result["engine_best"]["audio_s_per_s"]
    if args.same_work:
        result["ratio_to_stages_in_one_process"] = (result["pipeline"]["audio_s_per_s"]
                                                    / result["stages_in_one_process"]["audio_s_per_s"])
    shutil.rmtree(out.parent, ignore_errors=True)
    Path(args.out).parent.mkdir(exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(json.dumps({k: v for k, v in result.items() if k != "pipeline"}, indent=2))


if __name__ == "__main__":
    main()
