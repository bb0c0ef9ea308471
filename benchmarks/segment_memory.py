"""Memory of decoding and cutting one long recording (the segment stage, in one process, as a
Ray task runs it): peak resident memory above the process's own after imports, by recording
length (1 h, 2 h) and by where the audio lies (a Parquet cell, a local file), against the old
way of decoding the recording whole and then cutting it.

    python benchmarks/segment_memory.py [--hours 1 2]

Each case runs in a fresh process; the peak is the kernel's high-water mark (VmHWM). The
recordings are espeak-ng sentences with their pauses, repeated, 48 kHz FLAC (benchmarks/long_clip.py).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

CASE = r"""
import json, sys, time
import pyarrow as pa
from audiocurate.config import PipelineConfig
from audiocurate.sources.parquet import whole_reads
from audiocurate.segment.stage import SegmentStage
from audiocurate.sources import open_source
from audiocurate.sources.parquet import ParquetFileReader
from audiocurate.stages import DecodeStage
import faster_whisper.vad

def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) / 1024

faster_whisper.vad.get_vad_model()
uri, way = sys.argv[1], sys.argv[2]
config = PipelineConfig.load(overrides=["segment.enabled=true"])
source = open_source(uri, config.source)
base = status("VmRSS")
t0 = time.time()
if source.listing is not None:
    table = source.listing
else:
    reads = whole_reads(source.fs, source.root, source.files)
    reader = ParquetFileReader(source.fs, source.id_column, lean=True)  # as segmented runs read
    table = pa.concat_tables(list(reader(pa.Table.from_pylist(reads))))
decode = DecodeStage(config.decode, source.audio_column, source.fetcher())
if way == "streamed":
    stage = SegmentStage(config.segment, source.id_column, (), source.audio_column, decode)
    chunks = stage(table)
else:  # the old way: the recording decoded whole into the table, then cut
    chunks = SegmentStage(config.segment, source.id_column, (), source.audio_column)(decode(table))
rows = sum(c.num_rows for c in chunks)
print(json.dumps({"peak_above_start_mb": round(status("VmHWM") - base), "segments": rows,
                  "seconds": round(time.time() - t0, 1)}))
"""


def recording(hours: float) -> tuple[Path, Path]:
    """The recording as a one-row Parquet file and as a FLAC file in a folder (cached)."""
    from long_clip import CACHE, SENTENCES, espeak, flac

    CACHE.mkdir(exist_ok=True)
    tag = f"{hours:g}h"
    parquet, folder = CACHE / f"segmem_{tag}.parquet", CACHE / f"segmem_{tag}"
    if not parquet.exists() or not (folder / "talk.flac").exists():
        base = espeak(" ".join(SENTENCES), 48000)
        data = flac(np.tile(base, int(np.ceil(hours * 3600 * 48000 / len(base))))[:int(hours * 3600 * 48000)], 48000)
        pq.write_table(pa.table({"id": ["talk"], "audio_bytes": [data]}), parquet)
        folder.mkdir(exist_ok=True)
        (folder / "talk.flac").write_bytes(data)
    return parquet, folder


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--hours", type=float, nargs="+", default=[1.0, 2.0])
    args = ap.parse_args()
    results = {}
    for hours in args.hours:
        parquet, folder = recording(hours)
        cases = [("parquet_cell", parquet, "streamed"), ("local_file", folder, "streamed")]
        if hours == args.hours[0]:
            cases.append(("parquet_cell", parquet, "whole"))
        for where, uri, way in cases:
            out = subprocess.run([sys.executable, "-c", CASE, str(uri), way], capture_output=True, text=True)
            if out.returncode:
                raise SystemExit(out.stderr[-3000:])
            key = f"{hours:g}h_{where}_{way}"
            results[key] = {**json.loads(out.stdout.strip().splitlines()[-1]),
                            "encoded_mb": round((parquet.stat().st_size) / 2**20),
                            "samples_16k_mb": round(hours * 3600 * 16000 * 2 / 2**20)}
            print(key, json.dumps(results[key]), flush=True)
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "segment_memory.json").write_text(json.dumps({"machine": "2 cores", **results}, indent=2))


if __name__ == "__main__":
    main()
