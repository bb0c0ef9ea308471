"""What `audiocurate refilter` costs against the run that made its OUTPUT.

    python benchmarks/refilter.py [--copies 20]

1. The shipped demo set (37 clips) run with the embedded models (`audiocurate demo`: faster-whisper
   tiny.en, llama.cpp SmolLM2-135M), then refiltered to `--min-score 4`: the wall time of each,
   as the command line runs them (one process each, so each starts its own Ray).
2. Throughput at more rows: the demo set `--copies` times under new ids, run with no model
   (transcripts from `sentence`, no judge: the run is decoding alone), then refiltered to a
   stricter minimum duration (`filters.duration.min_s` at the curated clips' median). Rows/s
   of each, from the wall time of the command.
3. A segmented OUTPUT (`--segmented`, on by default): the demo set's clips joined into
   `--recordings` recordings (1 s of silence between clips, in the set's order), run with
   `--profile longform` and the embedded models, then refiltered to `--min-score 4`: each
   segment decided again, DEST accounted per recording. Rows are the stored segments.

Writes benchmarks/results/refilter.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "refilter.json"
CLI = [sys.executable, "-m", "audiocurate.cli"]
NO_MODEL = ["--set", "asr.backend=none", "--set", "asr.text_column=sentence", "--set", "judge.backend=none",
            "--set", "ray.probe_engines=false"]


def timed(args: list[str]) -> float:
    t = time.time()
    done = subprocess.run([*CLI, *args, "--no-progress"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if done.returncode:
        said = [line for line in done.stderr.splitlines() if line.startswith(("audiocurate", "Traceback", "  File"))
                or "Error" in line]
        raise SystemExit(f"{' '.join(args[:3])} failed (exit {done.returncode}):\n" + "\n".join(said[-30:]))
    return time.time() - t


def rows_of(output: Path) -> int:
    """Every row OUTPUT accounts for (all three splits), from the shards' footers."""
    return sum(pq.ParquetFile(p).metadata.num_rows for p in output.glob("*/part-*.parquet"))


def copies_of_demo(n: int, dest: Path) -> Path:
    from audiocurate.cli import demo_dataset_path

    demo = pq.read_table(demo_dataset_path())
    parts = [demo.set_column(0, "id", pc.binary_join_element_wise(demo["id"], pa.scalar(f"-{k}"), ""))
             for k in range(n)]
    path = dest / "copies.parquet"
    pq.write_table(pa.concat_tables(parts), path, row_group_size=64)
    return path


def recordings_of_demo(n: int, dest: Path) -> Path:
    """The demo set's clips joined into `n` recordings of consecutive clips, 1 s of silence
    between them, as FLAC (the set's undecodable clips left out)."""
    from audiocurate.audio import AudioDecodeError, decode_audio, encode_flac
    from audiocurate.cli import demo_dataset_path

    demo = pq.read_table(demo_dataset_path(), columns=["id", "audio_bytes", "client_id"]).to_pylist()
    pcms = []
    for row in demo:
        try:
            pcms.append((decode_audio(row["audio_bytes"]).pcm, row["client_id"]))
        except AudioDecodeError:
            continue
    pause = np.zeros(16000, np.int16)
    rows = []
    for k, clips in enumerate(np.array_split(np.arange(len(pcms)), n)):
        pcm = np.concatenate([part for i in clips for part in (pcms[i][0], pause)])
        rows.append({"id": f"recording{k}", "audio_bytes": encode_flac(pcm), "client_id": pcms[clips[0]][1]})
    path = dest / "recordings.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--copies", type=int, default=20)
    parser.add_argument("--recordings", type=int, default=6)
    parser.add_argument("--only-segmented", action="store_true", help="the segmented case alone (the others' "
                        "last figures kept in the results file)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="refilter-bench-"))
    try:
        result: dict = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
                        "note": "shared 2-core machine, contended: wall times are upper bounds"}
        if args.only_segmented and RESULTS.exists():  # the other cases' last figures stay
            result = {**json.loads(RESULTS.read_text()), **result}
        else:
            result.update(unsegmented(work, args.copies))
        src = recordings_of_demo(args.recordings, work)
        run_s = timed(["run", str(src), str(work / "longform"), "--profile", "longform"])
        refilter_s = timed(["refilter", str(work / "longform"), str(work / "longform_4"), "--min-score", "4"])
        rows = rows_of(work / "longform")
        result["segmented"] = {"recordings": args.recordings, "rows": rows, "run_s": round(run_s, 1),
                               "refilter_s": round(refilter_s, 1), "refilter_rows_per_s": round(rows / refilter_s, 1),
                               "refilter_over_run": round(refilter_s / run_s, 3)}
        print(json.dumps(result, indent=2))
        RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    finally:
        shutil.rmtree(work, ignore_errors=True)


def unsegmented(work: Path, copies: int) -> dict:
    """Cases 1 and 2: the demo set with the models, and its copies with none."""
    result: dict = {}
    run_s = timed(["demo", str(work / "models")])
    refilter_s = timed(["refilter", str(work / "models"), str(work / "models_4"), "--min-score", "4"])
    rows = rows_of(work / "models")
    result["with_models"] = {"rows": rows, "run_s": round(run_s, 1), "refilter_s": round(refilter_s, 1),
                             "refilter_rows_per_s": round(rows / refilter_s, 1),
                             "refilter_over_run": round(refilter_s / run_s, 3)}
    src = copies_of_demo(copies, work)
    run_s = timed(["run", str(src), str(work / "plain"), *NO_MODEL])
    durations = sorted(pq.read_table(work / "plain" / "curated", columns=["duration_s"])["duration_s"].to_pylist())
    gate = f"filters.duration.min_s={round(durations[len(durations) // 2], 2)}"
    refilter_s = timed(["refilter", str(work / "plain"), str(work / "plain_strict"), "--set", gate])
    rows = rows_of(work / "plain")
    result["no_model"] = {"rows": rows, "gate": gate, "run_s": round(run_s, 1),
                          "run_rows_per_s": round(rows / run_s, 1),
                          "refilter_s": round(refilter_s, 1), "refilter_rows_per_s": round(rows / refilter_s, 1)}
    return result


if __name__ == "__main__":
    main()
