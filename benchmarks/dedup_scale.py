"""Duplicate grouping at scale: N synthetic fingerprints grouped in Ray (`corpus.dedup`), with
wall time and the peak memory of the driver and of the largest Ray worker, for several N: the
driver holds no per-row state, a worker one partition, so both stay flat.

A worker's memory is read three ways. RSS counts the object store's pages in every worker that
maps them. USS (what no other process maps) still counts the object store's pages that only this
worker wrote or read, so it grows with the store, not with what the worker holds. A worker's own
heap is its anonymous resident memory (`RssAnon` in /proc/PID/status); the object store's pages
are shared memory (`RssShmem`), bounded by Ray's object store size and spilled to disk beyond it.

The fingerprints are made in Ray tasks: random MinHash values, except that rows with
`id % 100 < 3` form groups of three copies of one base signature, each copy with 30% of its
values replaced (similarity about 0.5 between copies). Expected: 2 of every 100 rows grouped
under another.

    .venv/bin/python benchmarks/dedup_scale.py [--sizes 100000 300000 1000000]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time

import numpy as np
import pyarrow as pa

sys.path.insert(0, os.path.dirname(__file__))


def synthetic(batch: dict) -> pa.Table:
    """A block's fingerprints, drawn at once from a generator seeded by the block's first id (one
    generator per row made drawing the data 60% of the benchmark's time); a group's base signature
    comes from a generator seeded by the group, as before."""
    from audiocurate.corpus.dedup import SEP
    from audiocurate.corpus.fingerprint import PERMUTATIONS

    ids = np.asarray(batch["id"], dtype=np.int64)
    rng = np.random.default_rng(int(ids[0]) if len(ids) else 0)
    values = rng.integers(0, 2**32 - 1, (len(ids), PERMUTATIONS), dtype=np.uint32)
    copies = np.flatnonzero(ids % 100 < 3)
    if len(copies):
        base = np.stack([np.random.default_rng(10**12 + int(i) // 100).integers(0, 2**32 - 1, PERMUTATIONS,
                                                                               dtype=np.uint32) for i in ids[copies]])
        keep = rng.random((len(copies), PERMUTATIONS)) >= 0.3
        values[copies] = np.where(keep, base, values[copies])
    fps = pa.FixedSizeBinaryArray.from_buffers(pa.binary(4 * PERMUTATIONS), len(ids),
                                               [None, pa.py_buffer(values.astype("<u4").tobytes())])
    nodes = [f"{int(i) % 5}{SEP}row{int(i):09d}" for i in ids]
    return pa.table({"node": pa.array(nodes, pa.string()), "fingerprint": fps.cast(pa.binary())})


def one(n: int, log: str) -> None:
    import ray

    from audiocurate.config import DedupConfig, RayConfig
    from audiocurate.corpus.dedup import group_duplicates, sort_shuffled
    from audiocurate.corpus.shards import partitions
    from audiocurate.runtime import init_ray

    init_ray(RayConfig(progress=False))
    t0 = time.time()
    nodes = sort_shuffled(ray.data.range(n, override_num_blocks=max(n // 20_000, 2))).map_batches(
        synthetic, batch_format="numpy")
    roots = group_duplicates(nodes, DedupConfig().min_similarity, DedupConfig().max_bucket, partitions(0), rows=n)
    grouped = roots.count()
    with open(log, "w") as f:
        json.dump({"rows": n, "grouped": grouped, "expected": 2 * (n // 100), "wall_s": round(time.time() - t0, 1)}, f)


class HeapSampler:
    """Peak `RssAnon` (own heap) and `RssShmem` (object store pages) of any Ray worker started
    after it, MB, sampled every `interval` seconds."""

    def __init__(self, interval: float = 0.5):
        self.interval, self.anon_mb, self.shmem_mb = interval, 0.0, 0.0
        self.started = time.time()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        import psutil

        while not self.stop.is_set():
            for p in psutil.process_iter(["cmdline", "create_time"]):
                if (p.info["create_time"] or 0.0) < self.started - 1 or not " ".join(p.info["cmdline"] or []).startswith("ray::"):
                    continue
                try:
                    fields = dict(line.split(":", 1) for line in open(f"/proc/{p.pid}/status"))
                except (OSError, ValueError):
                    continue
                self.anon_mb = max(self.anon_mb, int(fields.get("RssAnon", "0 kB").split()[0]) / 1024)
                self.shmem_mb = max(self.shmem_mb, int(fields.get("RssShmem", "0 kB").split()[0]) / 1024)
            self.stop.wait(self.interval)

    def __enter__(self) -> "HeapSampler":
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(5)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[100_000, 300_000, 1_000_000])
    ap.add_argument("--one", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--log", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        return one(args.one, args.log)
    from procmon import run_and_measure

    print(f"{'rows':>10} {'wall s':>8} {'driver peak MB':>15} {'worker RSS MB':>14} {'worker USS MB':>14} "
          f"{'worker heap MB':>15} {'worker shmem MB':>16} {'all processes MB':>17}")
    for n in args.sizes:
        log = f"/tmp/dedup_scale_{n}.json"
        cmd = [sys.executable, __file__, "--one", str(n), "--log", log]
        with HeapSampler() as heap:
            rc, peaks, wall = run_and_measure(cmd, interval=0.5, with_private=True)
        workers = max((v for k, v in peaks.by_name_peak_mb.items() if k.startswith("ray::")), default=0.0)
        workers_uss = max((v for k, v in peaks.by_name_peak_uss_mb.items() if k.startswith("ray::")), default=0.0)
        driver = peaks.driver_peak_mb
        result = json.loads(open(log).read() or "{}") if os.path.exists(log) else {}
        if os.path.exists(log):
            os.remove(log)
        print(f"{n:>10,} {result.get('wall_s', wall):>8} {driver:>15.0f} {workers:>14.0f} {workers_uss:>14.0f} "
              f"{heap.anon_mb:>15.0f} {heap.shmem_mb:>16.0f} {peaks.tree_peak_mb:>17.0f}"
              f"   grouped {result.get('grouped')} of expected {result.get('expected')} (rc {rc})")


if __name__ == "__main__":
    main()
