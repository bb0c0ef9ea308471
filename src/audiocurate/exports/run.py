"""Running an export: one Ray task per Parquet shard of an output, each writing that shard's
files in the format (`Exporter.write_part`), then the format's `finish`. Kept out of the
registry package (`exports`), which `config` imports: this module starts Ray and reads outputs."""

from __future__ import annotations

import time
from typing import Any, Callable, Optional

import pyarrow as pa
import pyarrow.parquet as pq
import ray
import yaml

from ..config import RayConfig
from ..runtime import configure_dataset, init_ray
from ..run_state import REJECTED
from ..sinks import OutputDir
from ..sources.audio_by_id import SourceAudio
from ..storage import StorageConfig
from . import EXPORT_FORMATS, ExportOptions, Exporter, Part


def run_id_column(out: OutputDir) -> str:
    """The id column of the run that wrote `out` (`source.id_column`, as recorded in
    `_state/config.yaml`; the run's identity where that is missing; else `id`)."""
    raw = out.state.recorded_config()
    recorded = yaml.safe_load(raw) if raw else None
    source = (recorded or {}).get("source") or ((out.state.identity() or {}).get("config") or {}).get("source") or {}
    return str(source.get("id_column") or "id")


class _ExportParts:
    """The Ray task: each input row names one shard; it is exported and a summary returned."""

    def __init__(self, exporter: Exporter, source: OutputDir, audio_from: Optional[Callable[[pa.Table], pa.Table]]):
        self.exporter = exporter
        self.source = source
        self.audio_from = audio_from

    def __call__(self, batch: pa.Table) -> pa.Table:
        done = []
        for name, path, rows in zip(*(batch[c].to_pylist() for c in ("name", "path", "rows"))):
            part = Part(name, path, rows)
            with self.source.fs.open_input_file(path) as f:
                table = pq.read_table(f)
            if self.audio_from is not None:
                table = self.audio_from(table)
            t0 = time.perf_counter()
            self.exporter.write_part(part, table)
            done.append({"name": name, "rows": table.num_rows, "seconds": time.perf_counter() - t0})
        return pa.Table.from_pylist(done, schema=pa.schema([("name", pa.string()), ("rows", pa.int64()),
                                                            ("seconds", pa.float64())]))


def export(output_uri: str, fmt: str, dest_uri: str, *, split: str = "curated",
           options: Optional[ExportOptions] = None, storage: Optional[StorageConfig] = None,
           input_uri: Optional[str] = None, echo: Callable[[str], None] = print,
           ray_config: Optional[RayConfig] = None) -> dict[str, Any]:
    """Export `split` of the output at `output_uri` to `dest_uri` in format `fmt`; resumable.

    `rejected/` keeps no audio: with `split="rejected"` the clips are read back from the run's
    input (`input_uri`, default: the input the output records) and encoded as 16 kHz FLAC."""
    t0 = time.time()
    out = OutputDir(output_uri, storage)
    dest = OutputDir(dest_uri, storage)
    exporter = EXPORT_FORMATS.get(fmt)(dest, options or ExportOptions(), id_column=run_id_column(out))
    exporter.run = out
    parts = []
    for path in out.part_files(split):
        with out.fs.open_input_file(path) as f:
            rows = pq.ParquetFile(f).metadata.num_rows
        parts.append(Part(path.rsplit("/", 1)[-1].rsplit(".", 1)[0], path, rows))
    todo = [p for p in parts if not exporter.done(p)]
    audio_from = None
    if split == REJECTED:
        identity = out.state.identity() or {}
        audio_from = SourceAudio(input_uri or identity.get("input"), storage, identity.get("config", {}))
    echo(f"audiocurate: export {fmt} of {split}/ ({sum(p.rows for p in parts)} clips in {len(parts)} shards, "
         f"{len(parts) - len(todo)} already exported) to {dest_uri}")
    seconds = 0.0
    if todo:
        init_ray(RayConfig(progress=False))
        items = ray.data.from_items([{"name": p.name, "path": p.path, "rows": p.rows} for p in todo],
                                    override_num_blocks=len(todo))
        items = configure_dataset(items, RayConfig())
        results = items.map_batches(_ExportParts(exporter, out, audio_from), batch_size=1, batch_format="pyarrow",
                                    num_cpus=(ray_config or RayConfig()).export_task_cpus).take_all()
        seconds = float(sum(r["seconds"] for r in results))
    facts = exporter.finish(parts)
    wall = time.time() - t0
    clips = sum(p.rows for p in parts)
    summary = {"format": fmt, "split": split, "dest": dest_uri, "clips": clips, "shards": len(parts),
               "exported_now": len(todo), "wall_s": wall, "busy_s": seconds, **facts}
    if exporter.summary_file:
        dest.write_json(exporter.summary_file, summary)
    return summary
