"""Peak driver memory against the number of clips (goal: flat).

    python benchmarks/driver_memory.py [--sizes 2000 20000]

Each dataset is N short clips in Common Voice's layout: 0.5 s of near-silence (which the silence
filter rejects before Whisper, so 20,000 clips take minutes rather than the ~11 hours Whisper
tiny.en needs for them on 2 cores) plus 10 spoken clips that go all the way through. The
driver (`audiocurate run`, which plans the dataset, collects the sink's per-shard stats,
builds the report) is sampled every 0.25 s; the Ray workers are not the driver and are
reported apart. The driver's resident memory is also given at fractions of the wall time
(flat from the middle on means it does not grow with clips; the report at the end imports
matplotlib). Each run's resume bookkeeping (report.json `timing.bookkeeping_s`) against its
wall time, and the cost of running the same command again on the finished output.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import soundfile as sf

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import corpora  # noqa: E402
from procmon import run_and_measure  # noqa: E402


def dataset(n: int, path: Path) -> Path:
    if path.exists():
        return path
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    sf.write(buf, (rng.standard_normal(8000) * 3).astype(np.int16), 16000, format="FLAC")
    quiet = buf.getvalue()
    speech = pq.read_table(corpora.dev_clips(), columns=["audio_bytes", "sentence"]).slice(0, 10).to_pylist()
    ids, blobs, sents = [], [], []
    for i in range(n):
        if i % (n // 10) == 0 and len(ids) < n and (i // (n // 10)) < 10:
            s = speech[i // (n // 10)]
            blobs.append(s["audio_bytes"])
            sents.append(s["sentence"])
        else:
            blobs.append(quiet)
            sents.append("")
        ids.append(f"clip{i:06d}")
    table = pa.table({"id": ids, "audio_bytes": blobs, "sentence": sents})
    pq.write_table(table, path, row_group_size=1000)
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[2000, 20000])
    args = ap.parse_args()
    results = {}
    for n in args.sizes:
        src = dataset(n, corpora.CACHE / f"driver_mem_{n}.parquet")
        with tempfile.TemporaryDirectory() as tmp:
            cmd = [sys.executable, "-m", "audiocurate.cli", "run", str(src), f"{tmp}/out", "--no-progress",
                   "--set", "output.rows_per_shard=256"]
            env = {**os.environ, "RAY_ADDRESS": ""}
            code, peaks, wall = run_and_measure(cmd, env=env)
            report = json.loads(Path(tmp, "out", "report.json").read_text())
            # The same command again: a resume that finds every row done (reads all finished ids).
            _, _, again_wall = run_and_measure(cmd, env=env)
            again = json.loads(Path(tmp, "out", "report.json").read_text())
        line = peaks.driver_timeline
        at = {f"{q}%": round(next((mb for t, mb in line if t >= wall * q / 100), line[-1][1]), 1)
              for q in (10, 25, 50, 75, 90)}
        t = report["timing"]
        results[n] = {"exit": code, "wall_s": wall, "driver_peak_rss_mb": peaks.driver_peak_mb,
                      "driver_rss_mb_at_fraction_of_wall": at,
                      "whole_run_peak_rss_mb": peaks.tree_peak_mb, "accounting": report["accounting"],
                      "drop_reasons": report["drop_reasons"],
                      "bookkeeping_s": t["bookkeeping_s"], "run_wall_s": t["wall_s"],
                      "bookkeeping_fraction": t["bookkeeping_s"] / t["wall_s"],
                      "rerun_all_done_wall_s": again_wall,
                      "rerun_bookkeeping_s": again["timing"]["bookkeeping_s"] - t["bookkeeping_s"]}
        print(n, json.dumps(results[n]), flush=True)
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results/driver_memory.json").write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
