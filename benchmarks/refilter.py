"""What `audiocurate refilter` costs against the run that made its OUTPUT.

    python benchmarks/refilter.py [--copies 20]

1. The shipped demo set (37 clips) run with the embedded models (`audiocurate demo`: faster-whisper
   tiny.en, llama.cpp SmolLM2-135M), then refiltered to `--min-score 4`: the wall time of each,
   as the command line runs them (one process each, so each starts its own Ray).
2. Throughput at more rows: the demo set `--copies` times under new ids, run with no model
   (transcripts from `sentence`, no judge: the run is decoding alone), then refiltered to a
   stricter minimum duration (`filters.duration.min_s` at the curated clips' median). Rows/s
   of each, from the wall time of the command.

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
    subprocess.run([*CLI, *args, "--no-progress"], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--copies", type=int, default=20)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="refilter-bench-"))
    try:
        result: dict = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
                        "note": "shared 2-core machine, contended: wall times are upper bounds"}
        run_s = timed(["demo", str(work / "models")])
        refilter_s = timed(["refilter", str(work / "models"), str(work / "models_4"), "--min-score", "4"])
        rows = rows_of(work / "models")
        result["with_models"] = {"rows": rows, "run_s": round(run_s, 1), "refilter_s": round(refilter_s, 1),
                                 "refilter_rows_per_s": round(rows / refilter_s, 1),
                                 "refilter_over_run": round(refilter_s / run_s, 3)}
        src = copies_of_demo(args.copies, work)
        run_s = timed(["run", str(src), str(work / "plain"), *NO_MODEL])
        durations = sorted(pq.read_table(work / "plain" / "curated", columns=["duration_s"])["duration_s"].to_pylist())
        gate = f"filters.duration.min_s={round(durations[len(durations) // 2], 2)}"
        refilter_s = timed(["refilter", str(work / "plain"), str(work / "plain_strict"), "--set", gate])
        rows = rows_of(work / "plain")
        result["no_model"] = {"rows": rows, "gate": gate, "run_s": round(run_s, 1),
                              "run_rows_per_s": round(rows / run_s, 1),
                              "refilter_s": round(refilter_s, 1), "refilter_rows_per_s": round(rows / refilter_s, 1)}
        print(json.dumps(result, indent=2))
        RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
