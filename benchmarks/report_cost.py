"""What the report costs per output row: `build_report` over a real run's output, and over an
output whose rows carry every signal of `--profile quality` (the threshold what-ifs' work).

    python benchmarks/report_cost.py [--rows 20000] [--repeat 5]
    python benchmarks/report_cost.py --signals --rows 100000 400000 [--repeat 3]

The first output is that of `audiocurate run` on `benchmarks/plumbing.py`'s data (near-silent
0.5 s clips, every one rejected at decode), made once in benchmarks/.cache/. The report reads
every shard of every split after each attempt, so at 100 M rows each microsecond a row is 100 s.
With `--signals`, the output is written here: rows with a judge score, a WER, language and
its probability, a token log-probability, clipping, background SNR, reverberation, second-voice
and bandwidth columns, a speaker and a language, routed by the quality profile's thresholds,
in shards of 8 row groups; each size is timed, and its peak traced memory (numpy and Python
allocations, `tracemalloc`, one more build) shows that memory does not grow with the rows.
Timed in this process, after one untimed build (imports, the page cache): the best of
`--repeat` builds, and the median. Writes benchmarks/results/report_cost.json (or
report_cost_signals.json).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import plumbing  # noqa: E402

RESULTS = HERE / "results" / "report_cost.json"


def output_of_a_run(rows: int) -> Path:
    out = plumbing.CACHE / f"report-out-{rows}"
    if not (out / "report.json").exists():
        data = plumbing.dataset(rows)
        exe = Path(sys.executable).parent / "audiocurate"
        subprocess.run([str(exe), "run", str(data), str(out), "--restart", "--no-progress"], check=True,
                       capture_output=True)
    return out


def output_with_signals(rows: int) -> Path:
    """An output of `rows` rows with every stored signal, routed as the quality profile would
    (vectorized: the data, not Python, sets the cost)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    out = plumbing.CACHE / f"report-signals-{rows}"
    if (out / "_SUCCESS").exists():
        return out
    rng = np.random.default_rng(0)
    n = rows
    cols = {
        "id": pa.array([f"clip-{i:09d}" for i in range(n)]),
        "duration_s": rng.uniform(0.5, 20, n).astype(np.float32),
        "edu_score": rng.integers(1, 6, n).astype(np.int8),
        "edu_score_mean": rng.uniform(1, 5, n).astype(np.float32),
        "wer": rng.gamma(1.0, 0.3, n).astype(np.float32),
        "language": pa.array(rng.choice(["en", "en", "en", "de", "fr", "nl", "cs"], n)),
        "language_prob": rng.uniform(0.2, 1.0, n).astype(np.float32),
        "avg_logprob": (-rng.gamma(2.0, 0.25, n)).astype(np.float32),
        "clip_fraction": np.where(rng.random(n) < 0.9, 0, rng.uniform(0, 0.05, n)).astype(np.float32),
        "clip_longest_run": rng.integers(0, 8, n).astype(np.int32),
        "background_snr_db": rng.normal(35, 12, n).astype(np.float32),
        "decay_db_100ms": rng.normal(40, 15, n).astype(np.float32),
        "second_voice_ratio": rng.uniform(0.05, 0.45, n).astype(np.float32),
        "bandwidth_hz": rng.choice([3600.0, 8000.0], n).astype(np.float32),
        "client_id": pa.array([f"speaker-{i}" for i in rng.integers(0, 5000, n)]),
        "transcript": pa.array(["some words"] * n),
    }
    t = pa.table(cols)
    c = {k: np.asarray(v) for k, v in cols.items() if isinstance(v, np.ndarray)}
    rules = [("clipped", (c["clip_fraction"] > 0.01) & (c["clip_longest_run"] >= 3)),
             ("noisy_background", c["background_snr_db"] < 20), ("reverberant", c["decay_db_100ms"] < 18),
             ("overlapping_talkers", c["second_voice_ratio"] > 0.27), ("wer_above_max", c["wer"] > 0.8),
             ("low_edu_score", c["edu_score"] < 3)]
    reason = np.full(n, None, dtype=object)
    for name, hit in reversed(rules):  # the first rule that fails a row names it
        reason[hit] = name
    kept = np.array([r is None for r in reason])
    shards = 8
    for split, mask in (("curated", kept), ("rejected", ~kept)):
        part = t.filter(pa.array(mask))
        if split == "rejected":
            part = part.append_column("drop_reason", pa.array(reason[~kept].tolist(), pa.string()))
        (out / split).mkdir(parents=True, exist_ok=True)
        step = -(-part.num_rows // shards)
        for k in range(shards):
            pq.write_table(part.slice(k * step, step), out / split / f"part-{k}.parquet",
                           row_group_size=max(1, -(-step // 8)))
    (out / "_SUCCESS").write_text("")
    return out


def time_builds(build, repeat: int) -> tuple[dict, list[float]]:
    report = build()
    walls = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        build()
        walls.append(time.perf_counter() - t0)
    return report, walls


def signals(sizes: list[int], repeat: int) -> None:
    import tracemalloc

    from audiocurate.config import PipelineConfig
    from audiocurate.report import build_report
    from audiocurate.sinks import OutputDir

    config = PipelineConfig.load(profile="quality", overrides=["output.report_clips=0"])
    results = []
    for rows in sizes:
        out = OutputDir(str(output_with_signals(rows)))

        def build() -> dict:
            return build_report(out, config, input_rows=rows)

        report, walls = time_builds(build, repeat)
        tracemalloc.start()
        build()
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        results.append({"output_rows": rows, "gates": [g["column"] for g in report["whatif"]],
                        "best_us_per_row": 1e6 * min(walls) / rows, "median_us_per_row": 1e6 * float(np.median(walls)) / rows,
                        "walls_s": [round(w, 3) for w in walls], "peak_traced_mb": round(peak / 2**20, 1)})
        print(json.dumps(results[-1]), flush=True)
    result = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores", "sizes": results}
    path = RESULTS.with_name("report_cost_signals.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, nargs="+", default=[20000])
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--signals", action="store_true", help="an output with every stored signal (the what-ifs)")
    args = ap.parse_args()
    if args.signals:
        signals(args.rows, args.repeat)
        return
    import yaml

    from audiocurate.config import PipelineConfig
    from audiocurate.report import build_report
    from audiocurate.sinks import OutputDir

    rows = args.rows[0]
    out = OutputDir(str(output_of_a_run(rows)))
    config = PipelineConfig.model_validate(yaml.safe_load(out.read_bytes(out.path("_state", "config.yaml"))))

    def build() -> dict:
        return build_report(out, config, input_rows=rows, id_column=config.source.id_column, input_uri="")

    report, walls = time_builds(build, args.repeat)
    n = sum(report["accounting"][k] for k in ("curated", "rejected", "errors"))
    result = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "output_rows": n,
        "accounting": {k: report["accounting"][k] for k in ("curated", "rejected", "errors")},
        "best_us_per_row": 1e6 * min(walls) / n,
        "median_us_per_row": 1e6 * float(np.median(walls)) / n,
        "walls_s": [round(w, 4) for w in walls],
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
