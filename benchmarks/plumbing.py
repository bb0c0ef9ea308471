"""Per-row overhead of the pipeline: clips every one of which the silence filter rejects before
Whisper, against one plain process that decodes and measures each clip with soundfile.

    python benchmarks/plumbing.py [--rows 20000] [--runs 2] [--warm-runs 3]

Data: N distinct 0.5 s clips of near-silence (Gaussian noise at -80 dBFS, each its own random
draw), 16 kHz FLAC, in Common Voice's layout (`id`, `audio_bytes`, `sentence`), one Parquet file
with row groups of 1,000; made once in benchmarks/.cache/.
* loop: pyarrow reads the file batch by batch; soundfile decodes each clip; numpy takes its peak.
* pipeline: `audiocurate run DATA OUT --restart` on the default configuration, as a user runs it
  (a fresh local Ray each run, its start included in the wall time; the report's
  `ray_start_s` and `execute_s` are given too).
CPU: the whole machine's user+system seconds over each run (psutil.cpu_times; the machine is
otherwise idle), divided by the rows: everything Ray runs counts, the driver, its daemons and
workers.
* on a running Ray (`--warm-runs N`): the same command joined (`--address`) to a Ray started
  once with `ray start --head` on this machine (token auth, loopback, its own temp dir), as on a
  cluster: no Ray start or stop in the run. One run more than N goes first, reported apart:
  a new cluster's first job also starts Ray Data's own actors, which outlive it.
* marginal: the same run on the first `--small` rows (`--limit`); the differences in wall and
  CPU between the two, over the rows between them, are what one more row costs, without what
  a run costs whatever its size (Ray's start and stop, each worker process's imports).
* by process: one more run of the whole input, each process's CPU seconds sampled, summed by
  role (the driver, Ray's daemons, task workers, model actors, Ray Data's own actors): what the
  fixed cost is made of.
Writes benchmarks/results/plumbing.json.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil
import pyarrow.parquet as pq
import soundfile as sf

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import corpora  # noqa: E402

CACHE = HERE / ".cache"
RESULTS = HERE / "results" / "plumbing.json"


def dataset(rows: int) -> Path:
    """Near-silence: 0.5 s of noise at about -80 dBFS per clip."""
    return corpora.noise_clips(CACHE / f"plumbing-{rows}.parquet", rows, samples=8000, std=3, seed=0, id_digits=7)


def machine_cpu_s() -> float:
    t = psutil.cpu_times()
    return t.user + t.system + getattr(t, "nice", 0.0)


def plain_loop(path: Path) -> dict:
    c0, t0 = machine_cpu_s(), time.time()
    n = 0
    for batch in pq.ParquetFile(path).iter_batches(columns=["id", "audio_bytes"], batch_size=1000):
        for blob in batch.column("audio_bytes").to_pylist():
            pcm, _ = sf.read(io.BytesIO(blob), dtype="int16")
            np.abs(pcm).max()
            n += 1
    wall, cpu = time.time() - t0, machine_cpu_s() - c0
    return {"rows": n, "wall_s": wall, "rows_per_s": n / wall, "cpu_s": cpu, "cpu_ms_per_row": 1000 * cpu / n}


def pipeline(path: Path, out: Path, limit: int | None = None, address: str | None = None,
             env: dict | None = None) -> dict:
    exe = Path(sys.executable).parent / "audiocurate"
    c0, t0 = machine_cpu_s(), time.time()
    proc = subprocess.run([str(exe), "run", str(path), str(out), "--restart", "--no-progress",
                           *(["--limit", str(limit)] if limit else []), *(["--address", address] if address else [])],
                          capture_output=True, text=True, env=env)
    wall, cpu = time.time() - t0, machine_cpu_s() - c0
    if proc.returncode != 0:
        raise SystemExit(f"audiocurate failed:\n{proc.stderr[-3000:]}")
    report = json.loads((out / "report.json").read_text())
    attempt = report["attempts"][-1]
    n = report["accounting"]["input"]
    return {"rows": n, "wall_s": wall, "rows_per_s": n / wall, "cpu_s": cpu, "cpu_ms_per_row": 1000 * cpu / n,
            "ray_start_s": attempt["ray_start_s"], "execute_s": attempt["execute_s"],
            "rows_per_execute_s": n / attempt["execute_s"],
            # Where the wall time goes besides execution: the run's own phases, and what the
            # process spends outside `pipeline.run`'s attempt (imports, compaction, report).
            "phases_s": {k: round(attempt.get(k) or 0.0, 3) for k in (
                "ray_start_s", "duplicate_id_check_s", "probe_s", "bookkeeping_s", "execute_s")}
            | {"after_execution_and_outside_run": round(wall - attempt["wall_s"], 3)},
            "accounting": report["accounting"],
            "drop_reasons": report["drop_reasons"],
            "files": {s: len(list((out / s).glob("*.parquet"))) for s in ("curated", "rejected", "errors")}}


@contextlib.contextmanager
def running_ray():
    """A Ray head on loopback with every core, started with `ray start` and ended by its temp
    dir (`ray stop` would end every Ray on the machine); yields (address, environment)."""
    import secrets
    import shutil
    import signal
    import socket

    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(16)}
    env.pop("RAY_ADDRESS", None)
    temp_dir = f"/tmp/ac-plumbing-{secrets.token_hex(4)}"  # short: Ray's socket paths must fit 107 bytes
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    try:
        subprocess.run([str(Path(sys.executable).with_name("ray")), "start", "--head", f"--port={port}",
                        "--node-ip-address=127.0.0.1", f"--num-cpus={os.cpu_count()}", f"--temp-dir={temp_dir}",
                        "--include-dashboard=false", "--disable-usage-stats"], env=env, check=True, capture_output=True)
        yield f"127.0.0.1:{port}", env
    finally:
        for p in psutil.process_iter(["cmdline"]):
            try:
                if temp_dir in " ".join(p.info["cmdline"] or []):
                    p.send_signal(signal.SIGKILL)
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                pass
        shutil.rmtree(temp_dir, ignore_errors=True)


# Whose CPU a run spends, by process: Ray names its workers by what they run (`ray::...`).
ROLES = (
    ("model actors", ("ray::MapWorker",)),
    ("Ray Data's actors", ("ray::_StatsActor", "ray::_AutoscalingCoordinatorActor", "ray::ActorLocationTracker")),
    ("Ray's daemons", ("gcs_server", "raylet", "dashboard", "monitor.py", "log_monitor.py", "ray::DashboardAgent",
                       "ray::RuntimeEnvAgent")),
    ("task workers (read, decode, write)", ("ray::",)),
)


def cpu_by_process(path: Path, out: Path, interval: float = 0.1) -> dict:
    """One more run, its processes' CPU seconds sampled every `interval` (the sampling costs
    CPU of its own, so this run's wall time is not one of the medians). A process counts under
    the `ray::` title it was last seen with, else its command line; a process's last `interval`
    before it exits, and a process that lived less, are missed."""
    exe = Path(sys.executable).parent / "audiocurate"
    seen: dict[int, tuple[float, str]] = {}
    before = {p.pid for p in psutil.process_iter()}
    proc = subprocess.Popen([str(exe), "run", str(path), str(out), "--restart", "--no-progress"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while True:
        done = proc.poll() is not None
        for p in psutil.process_iter(["pid", "cmdline"]):
            if p.pid in before and p.pid != proc.pid:
                continue
            try:
                t = p.cpu_times()
                cmd = " ".join(p.info["cmdline"] or [])
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
            # a worker's `ray::` title is its role; on its way out it takes its plain command line back
            if p.pid in seen and "ray::" in seen[p.pid][1] and "ray::" not in cmd:
                cmd = seen[p.pid][1]
            seen[p.pid] = (t.user + t.system, cmd)
        if done:
            break
        time.sleep(interval)
    roles: dict[str, dict] = {}
    for pid, (cpu, cmd) in seen.items():
        role = "driver (audiocurate run)" if pid == proc.pid else next(
            (name for name, marks in ROLES if any(m in cmd for m in marks)), "other")
        r = roles.setdefault(role, {"cpu_s": 0.0, "processes": 0})
        r["cpu_s"] = round(r["cpu_s"] + cpu, 2)
        r["processes"] += 1
        if role == "other":
            r.setdefault("names", []).append(cmd[:80])
    return dict(sorted(roles.items(), key=lambda kv: -kv[1]["cpu_s"]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=20000)
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--small", type=int, default=5000, help="rows of the smaller run for the marginal cost")
    ap.add_argument("--warm-runs", type=int, default=3, help="runs joined to a running Ray (0: none)")
    args = ap.parse_args()
    path = dataset(args.rows)
    loops, runs, smalls = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.runs):
            loops.append(plain_loop(path))
            runs.append(pipeline(path, Path(tmp) / "out"))
            smalls.append(pipeline(path, Path(tmp) / "out", limit=args.small))
            print(f"run {i + 1}: loop {loops[-1]['rows_per_s']:.0f} rows/s, pipeline {runs[-1]['rows_per_s']:.0f} "
                  f"rows/s ({runs[-1]['cpu_ms_per_row']:.2f} ms CPU/row, {runs[-1]['wall_s']:.1f} s wall; "
                  f"{args.small} rows: {smalls[-1]['wall_s']:.1f} s)", flush=True)
        by_process = cpu_by_process(path, Path(tmp) / "out")
        warm_first, warm, warm_loops = None, [], []
        if args.warm_runs:
            with running_ray() as (address, env):
                warm_first = pipeline(path, Path(tmp) / "out", address=address, env=env)
                for i in range(args.warm_runs):
                    warm_loops.append(plain_loop(path))
                    warm.append(pipeline(path, Path(tmp) / "out", address=address, env=env))
                    print(f"on a running Ray, run {i + 1}: loop {warm_loops[-1]['rows_per_s']:.0f} rows/s, pipeline "
                          f"{warm[-1]['rows_per_s']:.0f} rows/s ({warm[-1]['wall_s']:.1f} s wall; the first job on "
                          f"the new cluster: {warm_first['wall_s']:.1f} s)", flush=True)
    loop_rate = float(np.median([r["rows_per_s"] for r in loops]))
    pipe_rate = float(np.median([r["rows_per_s"] for r in runs]))
    extra = args.rows - args.small
    marginal_rate = float(np.median([extra / (r["wall_s"] - s["wall_s"]) for r, s in zip(runs, smalls)]))
    marginal_cpu = float(np.median([1000 * (r["cpu_s"] - s["cpu_s"]) / extra for r, s in zip(runs, smalls)]))
    result = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "rows": args.rows,
        "loop_rows_per_s": loop_rate,
        "pipeline_rows_per_s": pipe_rate,
        "ratio": pipe_rate / loop_rate,
        "pipeline_cpu_ms_per_row": float(np.median([r["cpu_ms_per_row"] for r in runs])),
        "loop_cpu_ms_per_row": float(np.median([r["cpu_ms_per_row"] for r in loops])),
        "small_rows": args.small,
        "marginal_rows_per_s": marginal_rate,
        "marginal_ratio": marginal_rate / loop_rate,
        "marginal_cpu_ms_per_row": marginal_cpu,
        "fixed_wall_s": float(np.median([s["wall_s"] - args.small / marginal_rate for s in smalls])),
        "cpu_s_by_process": by_process,
        "on_a_running_ray": None if not warm else {
            "rows_per_s": float(np.median([r["rows_per_s"] for r in warm])),
            "loop_rows_per_s": float(np.median([r["rows_per_s"] for r in warm_loops])),
            "ratio": float(np.median([r["rows_per_s"] for r in warm]) / np.median([r["rows_per_s"] for r in warm_loops])),
            "cpu_ms_per_row": float(np.median([r["cpu_ms_per_row"] for r in warm])),
            "wall_s": [round(r["wall_s"], 2) for r in warm],
            "first_job_wall_s": round(warm_first["wall_s"], 2),
            "runs": warm, "loops": warm_loops, "first_job": warm_first},
        "loops": loops,
        "runs": runs,
        "small_runs": smalls,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    shown = {k: v for k, v in result.items() if k not in ("loops", "runs", "small_runs")}
    if shown["on_a_running_ray"]:
        shown["on_a_running_ray"] = {k: v for k, v in shown["on_a_running_ray"].items()
                                     if k not in ("runs", "loops", "first_job")}
    print(json.dumps(shown, indent=2))


if __name__ == "__main__":
    main()
