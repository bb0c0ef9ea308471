"""Rejection rate per defect class, clean retention, wall time and CPU: the default profile vs `quality`.

Both runs read the same corpus (`defect_corpus.py`: clean speech and twelve defect classes,
split dev / held-out) in the same invocation, one after the other, with `--set
judge.backend=none` so that only the filters decide (the judge's score would reject rows for
their content, not their audio). Thresholds are set on `dev`; `heldout` is the figure to
report. CPU is the user+system seconds of every process of the run (the CLI, Ray's daemons
and workers), sampled with psutil every 0.2 s and taken at each process's last sample.

    python benchmarks/defects.py [--per-class 24] [--profiles default quality]

Writes benchmarks/results/defects.json."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
import pyarrow.dataset as ds
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent))
from defect_corpus import CLASSES, corpus_path  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
CLI = str(Path(sys.executable).with_name("audiocurate"))
SIGNAL_COLUMNS = ["clip_fraction", "clip_longest_run", "bandwidth_hz", "background_snr_db", "second_voice_ratio",
                  "decay_db_100ms", "wer"]


def run_measured(cmd: list[str]) -> tuple[float, float]:
    """(wall s, CPU s of the command and every process it or Ray started meanwhile)."""
    started = time.time()
    cpu: dict[int, float] = {}
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    done = threading.Event()

    def sample() -> None:
        me = os.getpid()
        while not done.is_set():
            for p in psutil.process_iter(["pid", "create_time", "cpu_times"]):
                if p.info["pid"] == me or (p.info["create_time"] or 0) < started - 1 or not p.info["cpu_times"]:
                    continue
                t = p.info["cpu_times"]
                cpu[p.info["pid"]] = t.user + t.system + t.children_user + t.children_system
            done.wait(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    t0 = time.perf_counter()
    _, err = proc.communicate()
    wall = time.perf_counter() - t0
    done.set()
    sampler.join()
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{err[-3000:]}")
    return wall, sum(cpu.values())


def outcome(output: Path) -> dict[str, dict]:
    """id -> {kept, drop_reason, signals} over curated/ and rejected/ (errors counted apart)."""
    rows: dict[str, dict] = {}
    for kind in ("curated", "rejected", "errors"):
        folder = output / kind
        if not folder.exists() or not any(folder.rglob("*.parquet")):
            continue
        t = ds.dataset(str(folder), format="parquet").to_table()
        cols = [c for c in SIGNAL_COLUMNS if c in t.column_names]
        for r in t.select(["id", *(["drop_reason"] if "drop_reason" in t.column_names else []), *cols]).to_pylist():
            rows[r["id"]] = {"kind": kind, "drop_reason": r.get("drop_reason"), **{c: r.get(c) for c in cols}}
    return rows


def rates(rows: dict[str, dict], meta: dict[str, dict], split: str) -> dict[str, dict]:
    out = {}
    for c in CLASSES:
        ids = [i for i, m in meta.items() if m["defect"] == c and m["split"] == split]
        rejected = [i for i in ids if rows.get(i, {}).get("kind") != "curated"]
        reasons: dict[str, int] = {}
        for i in rejected:
            r = rows.get(i, {}).get("drop_reason") or rows.get(i, {}).get("kind", "missing")
            reasons[r] = reasons.get(r, 0) + 1
        out[c] = {"n": len(ids), "rejected": len(rejected) / max(len(ids), 1), "reasons": reasons}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--per-class", type=int, default=24)
    ap.add_argument("--profiles", nargs="+", default=["default", "quality"])
    ap.add_argument("--set", action="append", default=[], help="extra KEY=VALUE for every run")
    a = ap.parse_args()
    corpus = corpus_path(a.per_class)
    meta = {r["id"]: r for r in pq.read_table(corpus, columns=["id", "defect", "split"]).to_pylist()}
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for profile in a.profiles:
            out = Path(tmp) / profile
            cmd = [CLI, "run", str(corpus), str(out), "--profile", profile, "--set", "judge.backend=none",
                   "--no-progress", *(x for s in a.set for x in ("--set", s))]
            wall, cpu = run_measured(cmd)
            rows = outcome(out)
            results[profile] = {"wall_s": round(wall, 1), "cpu_s": round(cpu, 1),
                                "dev": rates(rows, meta, "dev"), "heldout": rates(rows, meta, "heldout"),
                                "errors": sum(1 for r in rows.values() if r["kind"] == "errors"),
                                "rows": {i: {**r, **meta[i]} for i, r in rows.items()}}
            shutil.rmtree(out, ignore_errors=True)
    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    model = next((line.split(":", 1)[1].strip() for line in lscpu.splitlines() if line.startswith("Model name")), "?")
    print(f"corpus {corpus.name}: {len(meta)} clips; judge.backend=none; {model}, {os.cpu_count()} CPUs")
    for split in ("dev", "heldout"):
        print(f"\n[{split}] share rejected (clean: share kept)")
        print("class".ljust(20) + "".join(p.rjust(12) for p in a.profiles) + "   quality's reasons")
        for c in CLASSES:
            vals = [results[p][split][c]["rejected"] for p in a.profiles]
            if c == "clean":
                vals = [1 - v for v in vals]
            reasons = results[a.profiles[-1]][split][c]["reasons"]
            print(c.ljust(20) + "".join(f"{v:12.2f}" for v in vals) + "   " + ", ".join(f"{k} {n}" for k, n in sorted(reasons.items())))
    print()
    for p in a.profiles:
        print(f"{p:>10}: wall {results[p]['wall_s']} s, CPU {results[p]['cpu_s']} s, error rows {results[p]['errors']}")
    if len(a.profiles) == 2:
        base, new = (results[p] for p in a.profiles)
        print(f"wall ratio {new['wall_s'] / base['wall_s']:.2f}, CPU ratio {new['cpu_s'] / base['cpu_s']:.2f}")
    target = ROOT / "benchmarks" / "results" / "defects.json"
    target.write_text(json.dumps({"date": time.strftime("%Y-%m-%d"), "cpu": model, "corpus": corpus.name,
                                  "results": results}, indent=1))
    print(f"-> {target}")


if __name__ == "__main__":
    main()
