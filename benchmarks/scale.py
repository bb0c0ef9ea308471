"""Resume at corpus scale: a limited run, then the whole input resumed, on rows that only the
plumbing touches (every clip is rejected before Whisper).

    python benchmarks/scale.py [--rows 200000] [--s3]

Data: N distinct 0.1 s clips of noise (16 kHz FLAC), Common Voice layout, row groups of 1,000
rows; made once in benchmarks/.cache/.
1. `audiocurate run DATA OUT --limit N/2` (a fresh local Ray, as a user runs it).
2. `audiocurate run DATA OUT`: resumes. Peak RSS of the driver process, rows/s over the rows it
   had left (its whole wall time, Ray's start included), the time from its start to the first
   new shard (the resume's planning, Ray's start and the first block), files per output.
3. The same command on the finished output: nothing to do (its wall time), and the read plan
   alone (`resume.plan_reads`, in this process): the resume's start at N finished rows.
   With `--s3`, the output is copied to moto's S3 server on 127.0.0.1 and the plan is made
   from there too.
`--through`: every row through every stage instead (duration gate at 0.05 s, chars-per-second
bound off, `asr.backend: none` with the id as transcript, `judge.backend: none`), so all rows are
curated with their audio:
the plumbing of the model-stage path, files per million curated rows, and the files after
`audiocurate compact` (256 MB).
Writes benchmarks/results/scale.json (scale_<N>.json for other sizes, scale_through*.json).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from pathlib import Path

import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent))
import corpora  # noqa: E402
from procmon import run_and_measure  # noqa: E402

HERE = Path(__file__).resolve().parent
CACHE = HERE / ".cache"
SPLITS = ("curated", "rejected", "errors")


def dataset(rows: int) -> Path:
    """0.1 s of noise at about -40 dBFS per clip."""
    return corpora.noise_clips(CACHE / f"scale-{rows}.parquet", rows, samples=1600, std=300, seed=1, id_digits=8)


def files(out: Path) -> dict[str, int]:
    return {s: len(list((out / s).glob("*.parquet"))) for s in SPLITS}


def first_new_shard(out: Path, before: set[str], t0: float, found: dict) -> threading.Event:
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            now = {str(p) for s in SPLITS for p in (out / s).glob("*.parquet")} if out.exists() else set()
            if now - before:
                found["s"] = time.time() - t0
                return
            stop.wait(0.05)

    threading.Thread(target=watch, daemon=True).start()
    return stop


THROUGH = ["filters.duration.min_s=0.05", "filters.hallucination.max_chars_per_s=1000", "asr.backend=none",
           "asr.text_column=id", "judge.backend=none"]
OVERRIDES: list[str] = []


def audiocurate(*args: str) -> list[str]:
    sets = [a for o in OVERRIDES for a in ("--set", o)]
    return [str(Path(sys.executable).parent / "audiocurate"), "run", *args, "--no-progress", *sets]


def plan_seconds(source_uri: str, out_uri: str, storage: dict | None = None) -> dict:
    from audiocurate.config import SourceConfig, StorageConfig
    from audiocurate.resume import plan_reads
    from audiocurate.sinks import OutputDir
    from audiocurate.sources import open_source

    t0 = time.time()
    source = open_source(source_uri, SourceConfig())
    out = OutputDir(out_uri, StorageConfig(**storage) if storage else None)
    plan = plan_reads(source, out, SPLITS, resumed=True)
    return {"s": time.time() - t0, "finished_rows": plan.finished_rows, "groups": plan.groups}


def on_s3(data: Path, out: Path) -> dict:
    import boto3
    from moto.server import ThreadedMotoServer

    os.environ.update({"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"})
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    try:
        host, port = server.get_host_and_port()
        url = f"http://{host}:{port}"
        s3 = boto3.client("s3", endpoint_url=url, region_name="us-east-1")
        s3.create_bucket(Bucket="scale")
        s3.upload_file(str(data), "scale", f"in/{data.name}")  # the same name: partition keys are relative
        n = 0
        for p in out.rglob("*"):
            if p.is_file():
                s3.upload_file(str(p), "scale", f"out/{p.relative_to(out)}")
                n += 1
        storage = {"endpoint_url": url}
        from audiocurate.config import SourceConfig, StorageConfig
        from audiocurate.resume import plan_reads
        from audiocurate.sinks import OutputDir
        from audiocurate.sources import open_source

        t0 = time.time()
        source = open_source(f"s3://scale/in/{data.name}", SourceConfig(storage=StorageConfig(**storage)))
        plan = plan_reads(source, OutputDir("s3://scale/out", StorageConfig(**storage)), SPLITS, resumed=True)
        return {"s": time.time() - t0, "objects": n, "finished_rows": plan.finished_rows, "groups": plan.groups}
    finally:
        server.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--s3", action="store_true")
    ap.add_argument("--out", default=str(CACHE / "scale-out"))
    ap.add_argument("--through", action="store_true", help="every row through every stage (see above)")
    args = ap.parse_args()
    if args.through:
        OVERRIDES.extend(THROUGH)
    data = dataset(args.rows)
    out = Path(args.out)
    if out.exists():
        import shutil

        shutil.rmtree(out)
    result: dict = {"machine": f"{os.cpu_count()} cores", "rows": args.rows,
                    "input_row_groups": pq.ParquetFile(data).metadata.num_row_groups}

    rc, peaks, wall = run_and_measure(audiocurate(str(data), str(out), "--limit", str(args.rows // 2)))
    assert rc == 0, "run 1 failed"
    result["run1"] = {"rows": args.rows // 2, "wall_s": wall, "driver_peak_mb": peaks.driver_peak_mb,
                      "files": files(out)}
    print("run 1:", json.dumps(result["run1"]), flush=True)

    before = {str(p) for s in SPLITS for p in (out / s).glob("*.parquet")}
    found: dict = {}
    t0 = time.time()
    stop = first_new_shard(out, before, t0, found)
    rc, peaks, wall = run_and_measure(audiocurate(str(data), str(out)))
    stop.set()
    assert rc == 0, "run 2 failed"
    report = json.loads((out / "report.json").read_text())
    attempt = report["attempts"][-1]
    left = args.rows - attempt["finished_before"]
    result["run2"] = {"rows_left": left, "wall_s": wall, "rows_per_s": left / wall,
                      "execute_s": attempt.get("execute_s"), "rows_per_execute_s": left / attempt["execute_s"],
                      "ray_start_s": attempt.get("ray_start_s"), "first_new_shard_s": found.get("s"),
                      "row_groups": attempt.get("row_groups"), "driver_peak_mb": peaks.driver_peak_mb,
                      "all_processes_peak_mb": peaks.tree_peak_mb, "accounting": report["accounting"],
                      "files": files(out),
                      "files_per_million_rows": {s: n * 1e6 / args.rows for s, n in files(out).items()}}
    print("run 2:", json.dumps(result["run2"]), flush=True)

    rc, peaks, wall = run_and_measure(audiocurate(str(data), str(out)))
    result["run3_nothing_to_do"] = {"wall_s": wall, "driver_peak_mb": peaks.driver_peak_mb}
    result["resume_plan_local"] = plan_seconds(str(data), str(out))
    print("plan, local:", json.dumps(result["resume_plan_local"]), flush=True)
    if args.s3:
        result["resume_plan_s3"] = on_s3(data, out)
        print("plan, S3 on loopback:", json.dumps(result["resume_plan_s3"]), flush=True)
    if args.through:
        import subprocess

        t0 = time.time()
        subprocess.run([str(Path(sys.executable).parent / "audiocurate"), "compact", str(out)], check=True)
        result["compact"] = {"s": time.time() - t0, "files_after": files(out),
                             "curated_mb": sum(p.stat().st_size for p in (out / "curated").glob("*.parquet")) / 2**20}
        print("compact:", json.dumps(result["compact"]), flush=True)
    name = "scale.json" if args.rows == 200_000 else f"scale_{args.rows}.json"
    if args.through:
        name = name.replace("scale", "scale_through")
    (HERE / "results" / name).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
