"""Export speed and size for each format, and report.html's size on a large output.

    python benchmarks/exports.py [--clips 2000] [--report-rows 20000]

Exports: a curated output of `--clips` clips is built from the demo's real curated rows
(its 16 kHz FLAC audio, transcripts and scores), each repeated under new ids with its own
+-1 LSB dither (distinct audio, as in a real corpus), in shards of 64 rows as a run writes them; then `audiocurate.exports.run.export` writes every format (local
Ray, this machine's cores) and we report clips/s (wall, Ray start excluded: it is started
first) and bytes on disk against the curated Parquet's. Report: a run over
`benchmarks/plumbing.py`'s `--report-rows` silent clips, and the size of its report.html.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import soundfile as sf

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from audiocurate.audio import encode_flac  # noqa: E402
from audiocurate.config import PipelineConfig, RayConfig  # noqa: E402
from audiocurate.exports import ExportOptions  # noqa: E402
from audiocurate.exports.run import export  # noqa: E402
from audiocurate.pipeline import run  # noqa: E402
from audiocurate.runtime import init_ray  # noqa: E402


def du(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def build_curated(work: Path, clips: int) -> Path:
    demo = work / "demo-out"
    run(PipelineConfig.load(overrides=["ray.progress=false"]), str(Path(__file__).resolve().parents[1] /
        "src/audiocurate/demo/demo.parquet"), str(demo), echo=lambda s: None)
    base = pq.read_table(demo / "curated").to_pylist()
    out = work / "big"
    (out / "curated").mkdir(parents=True)
    # Each copy gets its own +-1 LSB dither, re-encoded: distinct audio, as a real corpus has (identical
    # bytes would let Parquet's dictionary encoding store one copy and flatter its size).
    rng = np.random.default_rng(0)
    pcm = [sf.read(io.BytesIO(r["audio"]["bytes"]), dtype="int16")[0] for r in base]
    rows = []
    for i in range(clips):
        j = i % len(base)
        noisy = (pcm[j] + rng.integers(-1, 2, len(pcm[j]))).astype(np.int16)
        rows.append({**base[j], "id": f"clip-{i:06d}.mp3", "audio": {"bytes": encode_flac(noisy), "path": f"clip-{i:06d}.flac"}})
    schema = pq.read_schema(next((demo / "curated").glob("*.parquet")))
    for k in range(0, clips, 64):
        pq.write_table(pa.Table.from_pylist(rows[k:k + 64], schema=schema), out / "curated" / f"part-{k // 64:05d}.parquet")
    shutil.copytree(demo / "_state", out / "_state")
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clips", type=int, default=2000)
    ap.add_argument("--report-rows", type=int, default=20000, help="rows of the run whose report.html is measured "
                    "(benchmarks/plumbing.py's silent clips); 0 skips it")
    ap.add_argument("--out", default="benchmarks/results/exports.json")
    args = ap.parse_args()
    init_ray(RayConfig(progress=False))
    results: dict = {"machine": f"{os.cpu_count()} cores", "clips": args.clips, "formats": {}}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        curated = build_curated(work, args.clips)
        base_bytes = du(curated / "curated")
        results["curated_parquet_bytes"] = base_bytes
        for fmt, opts in (("webdataset", ExportOptions()), ("nemo", ExportOptions()),
                          ("nemo", ExportOptions(shard_size=1000, tarred=True)), ("lhotse", ExportOptions()),
                          ("hf", ExportOptions())):
            name = fmt + ("-tarred" if opts.tarred else "")
            dest = work / name
            t0 = time.time()
            summary = export(str(curated), fmt, str(dest), options=opts, echo=lambda s: None)
            wall = time.time() - t0
            size = du(dest)
            results["formats"][name] = {"clips": summary["clips"], "wall_s": round(wall, 2),
                                        "clips_per_s": round(summary["clips"] / wall, 1), "bytes": size,
                                        "size_vs_parquet": round(size / base_bytes, 3)}
            print(name, results["formats"][name], flush=True)
            shutil.rmtree(dest)
    if args.report_rows:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from plumbing import dataset

        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "out"
            t0 = time.time()
            report = run(PipelineConfig.load(overrides=["ray.progress=false"]), str(dataset(args.report_rows)),
                         str(out), echo=lambda s: None)
            html = out / "report.html"
            results["report"] = {"rows": report["accounting"]["input"], "html_bytes": html.stat().st_size,
                                 "json_bytes": (out / "report.json").stat().st_size, "run_wall_s": round(time.time() - t0, 1),
                                 "outcomes": list(report["samples"]),
                                 "players": html.read_text().count("<audio")}
            print("report", results["report"], flush=True)
    Path(args.out).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
